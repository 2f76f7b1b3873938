"""Candidates for the shipped recipe against the shipped checkpoint, paired, after 10 and 55 minutes of training.

    python experiments/candidate.py            # every entry not yet in the results file (whose checkpoint exists)

Each candidate is the shipped recipe (`train --preset shipped`) with one change that won chapter
10's ten-minute ablation, trained for the shipped run's steps (or, for a cheaper network, the
steps it reaches in the same 10 and 55 minutes), exported to `checkpoints/candidates/`:

* `10min`, `55min`: half the width (preset `half_width`, 25,688 steps; EMA snapshot at 4,739);
* `cosine_10min`, `cosine_55min`: the cosine schedule (`train --preset shipped --schedule cosine`,
  10,646 steps; EMA snapshot at 1,964), sampled with each data prediction clipped to [-1, 1], as
  the ablation sampled it (`cosine_clip`).
* `lr_decay_55min`: twice the learning rate, 2e-3, falling linearly to 0 over the run
  (`train --preset shipped --lr 2e-3 --cooldown-steps 10646`; the ablation's `lr_decay_2e-3`).
  Only the 55-minute entry: the run's step-1,964 snapshot is not the ten-minute recipe (its rate
  there is still 82% of the peak), and the ablation's paired test already measured that one.

Each entry samples the shipped network and the candidate of one training time from the same x_T
(SDE-DPM-Solver++(2M), 50 network calls, the ablation's sampler; x_T seeds 0 and 1, batch 1000,
so N = 2000 pairs) and compares them with the paired bootstrap interval of their FD ratio
(`ddpm_lib.metrics.compare_paired`, candidate over shipped). One training run of each: the
interval is about these weights, not about the recipes in general. Results go to
`experiments/results/candidate.json`; the images are kept in `runs/candidate/` (not committed).
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
# entry: (the shipped checkpoint of that training time, the candidate, the candidate's sampler options, its name in
# the entry). The half-width entries keep the names they were first written with.
PAIRS = {
    "10min": ("ddpm_mnist_10min.safetensors", "candidates/ddpm_mnist_half_width_10min.safetensors", {}, "half_width"),
    "55min": ("ddpm_mnist.safetensors", "candidates/ddpm_mnist_half_width.safetensors", {}, "half_width"),
    "cosine_10min": ("ddpm_mnist_10min.safetensors", "candidates/ddpm_mnist_cosine_10min.safetensors",
                     {"clip_x0": True}, "cosine_clip"),
    "cosine_55min": ("ddpm_mnist.safetensors", "candidates/ddpm_mnist_cosine.safetensors", {"clip_x0": True},
                     "cosine_clip"),
    "lr_decay_55min": ("ddpm_mnist.safetensors", "candidates/ddpm_mnist_lr_decay.safetensors", {}, "lr_decay_2e-3"),
}


def images_of(checkpoint: str, **options) -> np.ndarray:
    """uint8 samples of a checkpoint at SEEDS (drawn once, then read from runs/candidate/)."""
    def draw():
        ckpt = load_checkpoint(CHECKPOINT_DIR / checkpoint)
        numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=N)
        return draw_images(ckpt, numerics, SAMPLER, STEPS, SEEDS, n=N, batch=N, **options)
    suffix = "".join(f"_{k}" for k, v in sorted(options.items()) if v)
    return kept_images(IMAGES / (Path(checkpoint).stem + f"_{SAMPLER}{STEPS}{suffix}.npy"), draw)


def main(argv=None) -> int:
    results = open_results(__doc__, RESULTS, "candidates for the shipped recipe against the shipped checkpoint, "
                           "paired (same x_T), SDE-DPM-Solver++ 50 calls; written by experiments/candidate.py", argv)
    for key, (book_file, cand_file, options, name) in PAIRS.items():
        if results.has(key):
            continue
        if not (CHECKPOINT_DIR / cand_file).exists():
            print(f"{key}: {cand_file} is not there yet; train and export it first (module docstring)", flush=True)
            continue
        book, cand = images_of(book_file), images_of(cand_file, **options)
        c = compare_paired(features(book), features(cand))
        results.put(key, {"a": book_file, "b": cand_file, "b_options": options, "sampler": SAMPLER, "steps": STEPS,
                          "seeds": list(SEEDS), "book": evaluate_samples(book, seed=0),
                          name: evaluate_samples(cand, seed=0), **c.as_dict()})
        print(f"{key}: {name} over the shipped checkpoint {c}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
