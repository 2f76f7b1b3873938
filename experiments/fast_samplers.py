"""FD and time of the fast samplers on the shipped checkpoint, against 1000-step Algorithm 2.

    python experiments/fast_samplers.py                # every entry not yet in the results file
    python experiments/fast_samplers.py --only dpmpp:20 ddim:50 --seeds 0 1 2

Each entry draws N = 1000 images (batch 1000: the same x_T per seed for every sampler, and the
same as the committed 1000-step evaluation `checkpoints/eval_ddpm_mnist_seeds.json`, which is
the reference), scores them with the book's metric (`ddpm_lib.metrics.evaluate_samples`, FD
against the MNIST test set, with the real-data floor of the same seed) and appends the result
to `experiments/results/fast_samplers.json`. Rerun the command to resume; one entry takes
(network evaluations x 1000) / (evaluations per second of the CPU) seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import ResultsFile  # noqa: E402

from ddpm_lib.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from ddpm_lib.data import from_model_range  # noqa: E402
from ddpm_lib.metrics import evaluate_samples  # noqa: E402
from ddpm_lib.numerics import choose_numerics  # noqa: E402
from ddpm_lib.sampling import sample  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "fast_samplers.json"
# In the order they are run: the goal points (20 and 50 evaluations) first.
PLAN = [f"{s}:{k}" for k in (20, 50) for s in ("dpmpp", "dpmpp-sde", "ddim")] + \
       [f"{s}:{k}" for k in (10, 100) for s in ("dpmpp", "ddim", "dpmpp-sde")] + \
       ["dpmpp:200", "ddpm:50", "ddpm:100"]
N, BATCH = 1000, 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=None, metavar="SAMPLER:STEPS", help="run these entries (default: the plan)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    results = ResultsFile(args.out, "fast samplers on the shipped checkpoint: N=1000, batch 1000, book's FD; "
                                    "written by experiments/fast_samplers.py")
    ckpt = load_checkpoint(args.checkpoint)
    numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=BATCH)
    for entry in args.only or PLAN:
        sampler, steps = entry.split(":")
        for seed in args.seeds:
            key = f"{sampler}:{steps}:seed{seed}"
            if results.has(key):
                continue
            t0 = time.perf_counter()
            x = sample(ckpt.model, ckpt.schedule, N, sampler, int(steps), seed=seed, batch_size=BATCH, numerics=numerics)
            seconds = time.perf_counter() - t0
            report = evaluate_samples(from_model_range(x), seed=seed)
            report.update(sampler=sampler, steps=int(steps), seed=seed, sample_seconds=round(seconds, 1),
                          seconds_per_sample=round(seconds / N, 4))
            results.put(key, report)
            print(f"{key}: FD {report['fd']:.2f} (floor {report['fd_floor']:.2f}) in {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
