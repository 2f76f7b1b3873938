"""Training throughput with 1 and N processes (torchrun, DistributedDataParallel), measured in one run.

    python bench/ddp_throughput.py [--nproc 2] [--preset shipped] [--steps 60] [--device cpu]

Runs the real training command, ``python -m ddpm_lib train``, once as a single
process and once under ``torchrun --nproc_per_node N``, for the same preset and
number of steps (the same global batch: each of N processes takes 1/N of it),
and prints images/s from the training time each run records (the sum of its
step times: start-up, data loading and the numerics probe are not counted).
The numerics are fixed to fp32 contiguous, so both runs do the same arithmetic.

On a CPU, N processes share the machine's cores: one process uses them all
through its threads, N processes get ``cores / N`` threads each
(``OMP_NUM_THREADS``). What the processes add there is the all-reduce of the
gradients, so expect no speed-up on one CPU; the point is that the same command
scales out on GPUs and nodes. With ``--device cuda`` each process takes its own
GPU (``--nproc`` at most the number of GPUs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import machine
from ddpm_lib.checkpoint import load_checkpoint
from ddpm_lib.presets import PRESETS


def train_rate(nproc: int, args, out: Path) -> tuple[float, int]:
    """Images/s of ``steps`` training steps with ``nproc`` processes, and the threads each used."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // nproc)
    cmd = ["-m", "ddpm_lib", "train", "--preset", args.preset, "--steps", str(args.steps), "--out-dir", str(out),
           "--no-progress", "--no-resume", "--precision", "fp32", "--no-channels-last", "--device", args.device,
           "--checkpoint-every", str(10 * args.steps)]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training with {nproc} processes failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    info = load_checkpoint(out / "model.safetensors").info
    batch = info["train_config"]["batch_size"]
    return info["step"] * batch / info["train_seconds"], threads


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="processes to compare with one (default 2)")
    p.add_argument("--preset", default="shipped", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=60, help="training steps of each run (default 60)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.nproc < 2:
        p.error(f"--nproc must be at least 2, got {args.nproc}")
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.device.startswith("cuda") and torch.cuda.device_count() < args.nproc:
        p.error(f"--nproc {args.nproc} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, args.nproc):
            rate, threads = train_rate(nproc, args, Path(tmp) / f"n{nproc}")
            rows.append((nproc, threads, rate))
            print(f"  measured {nproc} process(es)", flush=True)
    batch = PRESETS[args.preset].train.batch_size
    print(f"\nmachine: {machine(args.device)}\npreset {args.preset!r}, global batch {batch}, {args.steps} steps, "
          f"fp32 contiguous")
    print(f"{'processes':>9s} {'threads each':>12s} {'images/s':>10s} {'vs 1':>6s}")
    for nproc, threads, rate in rows:
        print(f"{nproc:9d} {threads:12d} {rate:10.1f} {rate / rows[0][2]:5.2f}x")
    if args.out:
        from ddpm_lib._io import atomic_write_bytes

        report = {"machine": machine(args.device), "device": args.device, "preset": args.preset, "steps": args.steps,
                  "global_batch": batch, "numerics": "fp32 contiguous", "command": " ".join(sys.argv),
                  "runs": [{"processes": n, "threads_each": t, "images_per_s": round(r, 1)} for n, t, r in rows]}
        atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
