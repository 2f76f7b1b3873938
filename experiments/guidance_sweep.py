"""Classifier-free guidance: accuracy, FD and diversity of the conditional checkpoint as w grows.

    python experiments/guidance_sweep.py                       # every w not yet in the results file
    python experiments/guidance_sweep.py --weights 0 2 --sampler dpmpp --steps 20
    python experiments/guidance_sweep.py --checkpoint checkpoints/flow_mnist_conditional.safetensors \
        --unconditional checkpoints/flow_mnist.safetensors --sampler euler --out experiments/results/guidance_flow.json

For each guidance weight w, 100 images are asked for each digit (N = 1000, batch 500, seed 0)
and the book's classifier judges them: the fraction classified as the digit asked for
(per digit and overall), the mean confidence, the FD of all 1000 against the MNIST test set
(with its real-data floor), and the diversity within each digit: the mean over digits of the
total variance (trace of the covariance) of the classifier's features, relative to the same
figure for real test digits. Each entry also holds the KID and precision/recall of
`evaluate_samples`, a 95% interval of the accuracy (Wilson's score interval) and of the worst
digit's, and the paired comparison of its FD with w = 0 (`compare_paired`: every w starts from
the same x_T and labels, so the comparison is paired). Results go to
`experiments/results/guidance_sweep.json`; rerun to resume. The images are kept in
`runs/guidance_sweep/` (not committed) for the comparisons, named after the checkpoint's file unless it is
the default one.

`balanced:SAMPLER:STEPS` asks whether the label helps by itself, or only because the sweep asks
for exactly 100 of each digit: it draws 3000 samples from the *unconditional* checkpoint
(`--unconditional`: the shipped DDPM one, or the flow for the conditional flow; same
sampler and steps, x_T seeds 0-2), keeps the first 100 the classifier assigns to each digit
(class-balanced resampling), and compares the FD of those 1000, and of the plain first 1000,
with the conditional model at w = 0 (unpaired: other noises); `vs_plain` compares every weight
with the plain 1000.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import ResultsFile, draw_images, kept_images, load_images  # noqa: E402

import numpy as np  # noqa: E402

from ddpm_lib.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from ddpm_lib.classifier import load_classifier  # noqa: E402
from ddpm_lib.data import load_mnist  # noqa: E402
from ddpm_lib.metrics import class_probabilities, compare_paired, evaluate_samples, features  # noqa: E402
from ddpm_lib.numerics import choose_numerics  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "guidance_sweep.json"
CONDITIONAL_CHECKPOINT = ROOT / "checkpoints" / "ddpm_mnist_conditional.safetensors"
WEIGHTS = (0.0, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
PER_DIGIT = 100
IMAGES = ROOT / "runs" / "guidance_sweep"
BALANCED_POOL_SEEDS = (0, 1, 2)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson's score interval of a binomial proportion (95% for z = 1.96)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [centre - half, centre + half]


def _path(name: str, checkpoint: str | Path = CONDITIONAL_CHECKPOINT) -> Path:
    """Where a run's images are kept: the default checkpoint's under ``name``, another's under its file's stem too."""
    same = Path(checkpoint).resolve() in (CONDITIONAL_CHECKPOINT.resolve(), SHIPPED_CHECKPOINT.resolve())
    return IMAGES / (f"{name}.npy" if same else f"{Path(checkpoint).stem}_{name}.npy")


def balanced_entry(args, classifier, w0_images) -> dict:
    """The unconditional checkpoint's samples, class-balanced by the classifier, against w = 0."""
    ckpt = load_checkpoint(args.unconditional)
    numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=1000)
    parts = []
    for seed in BALANCED_POOL_SEEDS:
        x = kept_images(_path(f"unconditional_{args.sampler}_{args.steps}_seed{seed}", args.unconditional),
                        lambda: draw_images(ckpt, numerics, args.sampler, args.steps, [seed], batch=500))
        parts.append(torch.from_numpy(x))
    pool = torch.cat(parts)
    predicted = class_probabilities(pool, classifier).argmax(1)
    chosen = torch.cat([torch.nonzero(predicted == k).flatten()[:PER_DIGIT] for k in range(10)])
    if len(chosen) < 10 * PER_DIGIT:
        raise RuntimeError(f"the pool of {len(pool)} holds fewer than {PER_DIGIT} of some digit; draw more seeds")
    balanced, plain = pool[chosen], pool[:10 * PER_DIGIT]
    w0, plain_feats = features(w0_images, classifier), features(plain, classifier)
    return {
        "pool": len(pool), "pool_seeds": list(BALANCED_POOL_SEEDS), "sampler": args.sampler, "steps": args.steps,
        "balanced": evaluate_samples(balanced, seed=args.seed, classifier=classifier),
        "plain": evaluate_samples(plain, seed=args.seed, classifier=classifier),
        "w0_vs_balanced": compare_paired(features(balanced, classifier), w0, paired=False).as_dict(),
        "w0_vs_plain": compare_paired(plain_feats, w0, paired=False).as_dict(),
        # every weight against the unconditional checkpoint as drawn (the model card's FD goal)
        "vs_plain": {f"{w:g}": compare_paired(plain_feats, features(load_images(path), classifier),
                                             paired=False).as_dict()
                     for w in args.weights
                     if (path := _path(f"{args.sampler}_{args.steps}_w{w:g}_seed{args.seed}",
                                       args.checkpoint)).exists()},
    }


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
    p.add_argument("--checkpoint", default=str(CONDITIONAL_CHECKPOINT), help="the class-conditional checkpoint")
    p.add_argument("--unconditional", default=str(SHIPPED_CHECKPOINT),
                   help="the unconditional checkpoint the balanced entry resamples (the same objective and recipe)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = ResultsFile(args.out, f"classifier-free guidance sweep of {Path(args.checkpoint).name}: 100 images per "
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
    w0_path = _path(f"{args.sampler}_{args.steps}_w0_seed{args.seed}", args.checkpoint)
    w0_feats = None  # the unguided samples' features, computed once, for every weight's paired comparison
    for w in args.weights:
        key = f"{args.sampler}:{args.steps}:w{w:g}:seed{args.seed}"
        if results.has(key):
            continue
        t0 = time.perf_counter()
        images = torch.from_numpy(kept_images(
            _path(f"{args.sampler}_{args.steps}_w{w:g}_seed{args.seed}", args.checkpoint),
            lambda: draw_images(ckpt, numerics, args.sampler, args.steps, [args.seed], n=len(asked), batch=500,
                                class_labels=asked, guidance=w)))
        seconds = time.perf_counter() - t0
        probs = class_probabilities(images, classifier)
        predicted = probs.argmax(1)
        correct = predicted == asked
        per_digit = [int(correct[asked == k].sum()) for k in range(10)]
        worst = int(np.argmin(per_digit))
        feats = features(images, classifier)
        report = evaluate_samples(images, seed=args.seed, classifier=classifier)
        report.update(
            w=w, guidance_scale_diffusers=1 + w, sampler=args.sampler, steps=args.steps, seed=args.seed,
            checkpoint=os.path.relpath(Path(args.checkpoint).resolve(), ROOT),
            accuracy=float(correct.float().mean()),
            accuracy_interval=wilson_interval(int(correct.sum()), len(asked)),
            accuracy_per_digit=[c / PER_DIGIT for c in per_digit],
            worst_digit=worst, worst_digit_interval=wilson_interval(per_digit[worst], PER_DIGIT),
            confidence_in_asked=float(probs[torch.arange(len(asked)), asked].mean()),
            within_class_variance=within_class_variance(feats, asked),
            sample_seconds=round(seconds, 1),
        )
        if w0_path.exists() and w != 0:
            if w0_feats is None:
                w0_feats = features(load_images(w0_path), classifier)
            report["vs_w0"] = compare_paired(w0_feats, feats).as_dict()
        report["diversity_vs_real"] = report["within_class_variance"] / real_var
        results.put(key, report)
        print(f"{key}: accuracy {report['accuracy']:.3f}, FD {report['fd']:.2f} (floor {report['fd_floor']:.2f}), "
              f"diversity {report['diversity_vs_real']:.2f} of real, {seconds:.0f} s", flush=True)
    key = f"balanced:{args.sampler}:{args.steps}"
    if not results.has(key) and w0_path.exists():
        entry = balanced_entry(args, classifier, load_images(w0_path))
        results.put(key, entry)
        print(f"{key}: FD {entry['balanced']['fd']:.2f} balanced, {entry['plain']['fd']:.2f} plain; "
              f"w = 0 vs balanced: {entry['w0_vs_balanced']['ratio']:.2f} "
              f"[{entry['w0_vs_balanced']['low']:.2f}, {entry['w0_vs_balanced']['high']:.2f}]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
