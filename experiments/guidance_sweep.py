"""Classifier-free guidance: accuracy, FD and diversity of the conditional checkpoint as w grows.

    python experiments/guidance_sweep.py                       # every w not yet in the results file
    python experiments/guidance_sweep.py --weights 0 2 --sampler dpmpp --steps 20

For each guidance weight w, 100 images are asked for each digit (N = 1000, batch 500, seed 0)
and the book's classifier judges them: the fraction classified as the digit asked for
(per digit and overall), the mean confidence, the FD of all 1000 against the MNIST test set
(with its real-data floor), and the diversity within each digit: the mean over digits of the
total variance (trace of the covariance) of the classifier's features, relative to the same
figure for real test digits. Results go to `experiments/results/guidance_sweep.json`; rerun
to resume.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import ResultsFile  # noqa: E402

from ddpm_lib.checkpoint import load_checkpoint  # noqa: E402
from ddpm_lib.classifier import load_classifier  # noqa: E402
from ddpm_lib.data import from_model_range, load_mnist  # noqa: E402
from ddpm_lib.metrics import class_probabilities, evaluate_samples, features  # noqa: E402
from ddpm_lib.numerics import choose_numerics  # noqa: E402
from ddpm_lib.sampling import sample  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "guidance_sweep.json"
CONDITIONAL_CHECKPOINT = ROOT / "checkpoints" / "ddpm_mnist_conditional.safetensors"
WEIGHTS = (0.0, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
PER_DIGIT = 100


def within_class_variance(feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the trace of the features' covariance within the class."""
    per_class = [feats[labels == k].double().var(dim=0).sum() for k in labels.unique()]
    return float(torch.stack(per_class).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    p.add_argument("--sampler", default="dpmpp-sde")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=str(CONDITIONAL_CHECKPOINT))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = ResultsFile(args.out, "classifier-free guidance sweep of the conditional checkpoint: 100 images per "
                                    "digit, written by experiments/guidance_sweep.py")
    ckpt = load_checkpoint(args.checkpoint)
    classifier = load_classifier()
    asked = torch.arange(10).repeat_interleave(PER_DIGIT)
    if not results.has("real"):
        test = load_mnist("test")
        results.put("real", {"within_class_variance": within_class_variance(
            features(test.images[:10_000], classifier), test.labels[:10_000])})
    real_var = results.get("real")["within_class_variance"]
    numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=500)
    for w in args.weights:
        key = f"{args.sampler}:{args.steps}:w{w:g}:seed{args.seed}"
        if results.has(key):
            continue
        t0 = time.perf_counter()
        x = sample(ckpt.model, ckpt.schedule, len(asked), args.sampler, args.steps, seed=args.seed, batch_size=500,
                   class_labels=asked, guidance=w, numerics=numerics)
        seconds = time.perf_counter() - t0
        images = from_model_range(x)
        probs = class_probabilities(images, classifier)
        predicted = probs.argmax(1)
        correct = predicted == asked
        report = evaluate_samples(images, seed=args.seed, classifier=classifier)
        report.update(
            w=w, guidance_scale_diffusers=1 + w, sampler=args.sampler, steps=args.steps, seed=args.seed,
            accuracy=float(correct.float().mean()),
            accuracy_per_digit=[float(correct[asked == k].float().mean()) for k in range(10)],
            confidence_in_asked=float(probs[torch.arange(len(asked)), asked].mean()),
            within_class_variance=within_class_variance(features(images, classifier), asked),
            sample_seconds=round(seconds, 1),
        )
        report["diversity_vs_real"] = report["within_class_variance"] / real_var
        results.put(key, report)
        print(f"{key}: accuracy {report['accuracy']:.3f}, FD {report['fd']:.2f} (floor {report['fd_floor']:.2f}), "
              f"diversity {report['diversity_vs_real']:.2f} of real, {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
