"""The verdict rule's false-positive rate, and the shipped model's FD at N = 10000.

    python experiments/paired_rule.py            # every entry not yet in the results file

`ddpm_lib.metrics.compare_paired` turns a bootstrap interval of an FD ratio into a verdict
("better", "worse", "unresolved"). How often it declares a difference where there is
none is measured here by comparing a generator with itself over independent draws
(`ddpm_lib.metrics.null_verdict_rate`: two disjoint sets of N = 1000 from a pool of one
generator's samples, compared with paired=False, 150 times):

* `null:real` -- the generator is MNIST itself: the pool is the 60,000 training digits;
* `null:model` -- the shipped checkpoint with DPM-Solver++(2M), 20 network calls: a pool of
  10,000 samples (x_T seeds 0-9, batch 1000). The same pool gives `fd_n10000`, the model's FD
  with N = 10000 against its real-data floor at N = 10000.

Results go to `experiments/results/paired_rule.json`. The pool's samples are kept in
`runs/paired_rule/` (not committed) so that a rerun does not draw them again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import draw_images, kept_images, open_results  # noqa: E402

from ddpm_lib.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from ddpm_lib.classifier import _mnist  # noqa: E402
from ddpm_lib.metrics import evaluate_samples, features, null_verdict_rate  # noqa: E402
from ddpm_lib.numerics import choose_numerics  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "paired_rule.json"
POOL = ROOT / "runs" / "paired_rule" / "dpmpp20_seeds0-9.npy"
N, REPEATS, N_BOOT, LEVEL = 1000, 150, 1000, 0.95
SAMPLER, STEPS, POOL_SEEDS = "dpmpp", 20, range(10)


def model_pool() -> np.ndarray:
    """10,000 uint8 samples of the shipped checkpoint (drawn once, then read from runs/)."""
    def draw():
        ckpt = load_checkpoint(SHIPPED_CHECKPOINT)
        numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=1000)
        return draw_images(ckpt, numerics, SAMPLER, STEPS, POOL_SEEDS)
    return kept_images(POOL, draw)


def main(argv=None) -> int:
    results = open_results(__doc__, RESULTS, "false-positive rate of the paired verdict rule "
                           "(ddpm_lib.metrics.compare_paired) and the shipped model's FD at N = 10000; written by "
                           "experiments/paired_rule.py", argv)
    settings = {"n": N, "repeats": REPEATS, "n_boot": N_BOOT, "level": LEVEL}
    if not results.has("null:real"):
        t0 = time.perf_counter()
        r = null_verdict_rate(features(_mnist("train").images), N, REPEATS, n_boot=N_BOOT, level=LEVEL, seed=0)
        results.put("null:real", {**r, "pool": "the 60,000 MNIST training digits", **settings,
                                  "seconds": round(time.perf_counter() - t0)})
        print("null:real", r, flush=True)
    pool = None
    if not results.has("fd_n10000"):
        pool = model_pool()
        report = evaluate_samples(pool, seed=0)
        report.update(sampler=SAMPLER, steps=STEPS, seeds=list(POOL_SEEDS))
        results.put("fd_n10000", report)
        print(f"fd_n10000: FD {report['fd']:.3f}, floor {report['fd_floor']:.3f}, ratio {report['fd_ratio']:.3f}",
              flush=True)
    if not results.has("null:model"):
        pool = model_pool() if pool is None else pool
        t0 = time.perf_counter()
        r = null_verdict_rate(features(pool), N, REPEATS, n_boot=N_BOOT, level=LEVEL, seed=1)
        results.put("null:model", {**r, "pool": f"10,000 samples of the shipped checkpoint, {SAMPLER} {STEPS} steps, "
                                                f"x_T seeds {POOL_SEEDS.start}-{POOL_SEEDS.stop - 1}", **settings,
                                   "seconds": round(time.perf_counter() - t0)})
        print("null:model", r, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
