"""The half-width candidate against the book's UNet, paired, after 10 and 55 minutes of training.

    python experiments/candidate.py            # every entry not yet in the results file

Chapter 10's ablation found that a network of half the width beats the book's UNet in ten
minutes of CPU training; the candidate checkpoints in `checkpoints/candidates/` are the
shipped recipe with half the width, trained for the steps that network reaches in the
shipped run's 10 and 55 minutes. Each entry here samples both networks of one training
time from the same x_T (SDE-DPM-Solver++(2M), 50 network calls, the ablation's sampler;
x_T seeds 0 and 1, batch 1000, so N = 2000 pairs) and compares them with the paired
bootstrap interval of their FD ratio (`ddpm_lib.metrics.compare_paired`, half width over
book UNet). One training run of each: the interval is about these weights, not about the
recipes in general. Results go to `experiments/results/candidate.json`; the images are
kept in `runs/candidate/` (not committed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import draw_images, kept_images, open_results  # noqa: E402

from ddpm_lib.checkpoint import CHECKPOINT_DIR, load_checkpoint  # noqa: E402
from ddpm_lib.metrics import compare_paired, evaluate_samples, features  # noqa: E402
from ddpm_lib.numerics import choose_numerics  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "candidate.json"
IMAGES = ROOT / "runs" / "candidate"
SAMPLER, STEPS, SEEDS, N = "dpmpp-sde", 50, (0, 1), 1000
PAIRS = {
    "10min": ("ddpm_mnist_10min.safetensors", "candidates/ddpm_mnist_half_width_10min.safetensors"),
    "55min": ("ddpm_mnist.safetensors", "candidates/ddpm_mnist_half_width.safetensors"),
}


def images_of(checkpoint: str) -> np.ndarray:
    """uint8 samples of a checkpoint at SEEDS (drawn once, then read from runs/candidate/)."""
    def draw():
        ckpt = load_checkpoint(CHECKPOINT_DIR / checkpoint)
        numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=N)
        return draw_images(ckpt, numerics, SAMPLER, STEPS, SEEDS, n=N, batch=N)
    return kept_images(IMAGES / (Path(checkpoint).stem + f"_{SAMPLER}{STEPS}.npy"), draw)


def main(argv=None) -> int:
    results = open_results(__doc__, RESULTS, "the half-width candidate against the book's UNet, paired (same "
                           "x_T), SDE-DPM-Solver++ 50 calls; written by experiments/candidate.py", argv)
    for when, (book_file, half_file) in PAIRS.items():
        if results.has(when):
            continue
        book, half = images_of(book_file), images_of(half_file)
        c = compare_paired(features(book), features(half))
        results.put(when, {"a": book_file, "b": half_file, "sampler": SAMPLER, "steps": STEPS, "seeds": list(SEEDS),
                           "book": evaluate_samples(book, seed=0), "half_width": evaluate_samples(half, seed=0),
                           **c.as_dict()})
        print(f"{when}: half width over book UNet {c}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
