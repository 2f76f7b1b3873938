"""How the shipped recipe was chosen: train candidate recipes for a CPU budget, then score them.

    python bench/recipe_sweep.py --device cuda --out runs/sweep [--only NAME ...]

The shipped checkpoint must be trained in under an hour on 2 CPU cores, so
recipes are compared at equal *CPU time*, not equal steps: each candidate runs
the number of optimizer steps that the shipped preset completes in its
``max_minutes`` on the reference machine, given the measured training
throughput at that batch size (``CPU_STEPS_PER_SECOND`` below). Training the
candidates on a GPU draws exactly the same batches, t and noise (the random
draws come from the seeded CPU generator), so a GPU sweep answers "which
recipe is best for an hour of CPU" without spending the hours (see Cost).

Each candidate is trained with ``python -m ddpm_lib train`` and scored with
``python -m ddpm_lib evaluate`` (N samples from 1000-step Algorithm 2, FD
against the real-data floor at the same N; see chapter "Measuring samples").
Results are printed as a table and written to ``OUT/sweep.json``.

Cost: this small UNet does not fill a GPU; its training step is bound by kernel
launches (on an H200, measured: 29 ms per step at batch 128; at batch 32,
18,480 steps took more than 290 s), and candidates run side by side on one GPU
time-slice it rather than overlap. A full sweep therefore needs several
GPU-minutes per 55-minute candidate. Measured so far (H200, N=1000, seed 0): the batch-128
recipe trained on the GPU scored FD 9.29 (ratio 2.41), against 8.14 (ratio
2.12) when trained on the CPU, so a GPU sweep ranks recipes only to within
about 15%; the batch-32 recipe at its 10-minute budget (3,360 steps) scored
FD 30.5 (ratio 7.9; 5.5 with evaluation seed 1). The other candidates did not
finish within the GPU time that session had.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Steps per second of the full training loop (bf16, 2-core AMD EPYC Zen 4) by batch size. Batch 128 and 64
# are the 55-minute runs of the shipped preset (5,405 and 10,646 steps in 3,300 s); batch 32 is an estimate
# from bench/train_throughput.py's step rate (6.29/s) plus the loop's own ~18 ms per step.
CPU_STEPS_PER_SECOND = {32: 5.6, 64: 3.22, 128: 1.64}

# name: (batch_size, lr, ema_decay, minutes of CPU training)
CANDIDATES = {
    "b128_lr1e-3": (128, 1e-3, 0.999, 55),     # the first shipped recipe: calibrates GPU vs CPU training
    "b64_lr1e-3": (64, 1e-3, 0.999, 55),       # the shipped recipe since the second checkpoint
    "b32_lr1e-3": (32, 1e-3, 0.999, 55),
    "b32_lr2e-3": (32, 2e-3, 0.999, 55),
    "b32_lr1e-3_10min": (32, 1e-3, 0.999, 10),
}


def run(name: str, spec: tuple, args) -> dict:
    bs, lr, ema, minutes = spec
    steps = int(CPU_STEPS_PER_SECOND[bs] * 60 * minutes)
    out = Path(args.out)
    ckpt = out / f"{name}.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / f"{name}.log", "w") as log:
        def cli(*argv):
            subprocess.run([sys.executable, "-m", "ddpm_lib", *argv, "--device", args.device],
                           check=True, stdout=log, stderr=log, env=env)

        t0 = time.perf_counter()
        cli("train", "--preset", "shipped", "--out-dir", str(out / name), "--no-resume", "--no-progress",
            "--max-minutes", "0", "--steps", str(steps), "--batch-size", str(bs), "--lr", str(lr),
            "--ema-decay", str(ema), "--checkpoint-every", str(steps), "--export", str(ckpt),
            "--force")      # a rerun of the sweep replaces its own earlier candidates
        train_s = time.perf_counter() - t0
        reports = {}
        for seed in args.seeds:
            reports[seed] = out / f"{name}_seed{seed}.json"
            cli("evaluate", "--checkpoint", str(ckpt), "--n", str(args.n), "--seed", str(seed),
                "--batch-size", str(args.n), "--out", str(reports[seed]))
    row = {"name": name, "batch_size": bs, "lr": lr, "ema_decay": ema, "cpu_minutes": minutes, "steps": steps,
           "train_seconds_here": round(train_s, 1)}
    for seed, report in reports.items():
        r = json.loads(report.read_text())
        row[f"seed{seed}"] = {k: r[k] for k in ("fd", "fd_floor", "fd_ratio", "min_fraction", "max_fraction",
                                                "mean_confidence")}
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--parallel", type=int, default=1, help="candidates trained at once (one GPU runs several)")
    p.add_argument("--n", type=int, default=1000, help="samples per evaluation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", nargs="+", default=None, help="candidate names to run (default all)")
    p.add_argument("--out", default="runs/sweep")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    names = args.only or list(CANDIDATES)
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda n: run(n, CANDIDATES[n], args), names))
    print(f"\n{'candidate':20s} {'steps':>6s} " + " ".join(f"{'ratio s' + str(s):>10s}" for s in args.seeds)
          + f" {'min %':>6s} {'max %':>6s}")
    for r in rows:
        s0 = r[f"seed{args.seeds[0]}"]
        print(f"{r['name']:20s} {r['steps']:6d} " + " ".join(f"{r[f'seed{s}']['fd_ratio']:10.2f}" for s in args.seeds)
              + f" {100 * s0['min_fraction']:6.1f} {100 * s0['max_fraction']:6.1f}")
    (Path(args.out) / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
