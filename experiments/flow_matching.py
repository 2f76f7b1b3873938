"""The flow-matching checkpoint against the shipped DDPM checkpoint, at equal numbers of network calls.

    python experiments/flow_matching.py                 # every entry not yet in the results file
    python experiments/flow_matching.py --flow-checkpoint runs/flow/model.safetensors --out /tmp/f.json --n 200

Both checkpoints have the same network and were trained for the same 10,646 steps of batch 64
(`train --preset flow` and `--preset shipped`), so a network call costs the same in both. Entries
(N = `--n` images, x_T seed 0, batch N: every sampler of either model starts from the same x_T):

* `flow:SOLVER:K`: the flow model with Euler or Heun at K network calls (K in CALLS), scored with the
  book's metric (`ddpm_lib.metrics.evaluate_samples`: FD and its floor, KID, precision and recall);
* `ddpm:SAMPLER:K`: the DDPM checkpoint with DPM-Solver++(2M) and the EDM sampler, its best at 20 calls in
  chapter 9, at the same budgets (at one call DPM-Solver++ is one DDIM step, and the EDM sampler one Euler
  step to sigma = 0, which returns its prediction of x_0);
* `paired:A:vs:B`: the paired bootstrap interval of FD_B / FD_A (`ddpm_lib.metrics.compare_paired`) for
  the comparisons in PAIRED, from the same x_T; `ddpm:1000` is the committed 1000-step Algorithm 2 sample
  of the shipped checkpoint (`checkpoints/eval_ddpm_mnist_samples.npy`), compared unpaired (its x_T and
  noise are not the flow's);
* `straightness:MODEL`: Liu et al. (2022)'s straightness of the model's ODE paths on the straight path
  x_t = (1 - t) x_0 + t eps, from 100 x_T, 100 Euler steps in fp32: the mean over the path of
  |dx/dt - (x(1) - x(0))|^2 per pixel. For the DDPM model the path is the probability-flow ODE moved
  to the straight path (`ddpm_lib.flow.from_diffusion`), sampled by DDIM at 100 timesteps.

Then reflow (Liu et al. 2022), in three resumable stages:

* `reflow:pairs`: REFLOW_PAIRS draws z ~ N(0, I), each carried to an image x(0) by the flow's ODE
  (Heun, PAIR_CALLS network calls), kept in `runs/flow_matching/reflow_pairs_*.npz`;
* `reflowS:student` (S = `--reflow-steps`, default REFLOW_STEPS): a student that starts as the flow
  (`train(init=...)`) and trains S steps of the flow preset's recipe on the straight lines between the
  pairs (`train(noise=...)`: each image with its own z), in `runs/flow_matching/student_*_sS/`; the
  default one is exported beside the flow's checkpoint (`checkpoints/flow_mnist_reflow.safetensors`);
* `reflowS:euler:K` (K in REFLOW_CALLS), `straightness:reflowS`, and the paired intervals of
  REFLOW_PAIRED (the student against the flow, and against the DDPM checkpoint's solvers at the same one or
  two calls); and, paired, against every other student in the results file (from its kept images).
  A student trained longer is the shorter one continued (the recipe has no cool-down), so
  `--reflow-steps 3000` and the default measure one run at two lengths.

Results go to `experiments/results/flow_matching.json`; images are kept in `runs/flow_matching/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import ResultsFile, draw_images, kept_images, load_images, save_images  # noqa: E402

from ddpm_lib._io import atomic_write_bytes  # noqa: E402
from ddpm_lib.checkpoint import CHECKPOINT_DIR, SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from ddpm_lib.flow import from_diffusion, straightness  # noqa: E402
from ddpm_lib.presets import PRESETS  # noqa: E402
from ddpm_lib.training import train  # noqa: E402
from ddpm_lib.metrics import compare_paired, evaluate_samples, features  # noqa: E402
from ddpm_lib.numerics import Numerics, choose_numerics  # noqa: E402
from ddpm_lib.sampling import ddim_timesteps, record_trajectory, sample  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "flow_matching.json"
SAMPLES = ROOT / "runs" / "flow_matching"
FLOW_CHECKPOINT = CHECKPOINT_DIR / "flow_mnist.safetensors"
CALLS = (1, 2, 4, 10, 20, 50)
FLOW_SOLVERS, DDPM_SAMPLERS = ("euler", "heun"), ("dpmpp", "edm")
REFERENCE = "ddpm:1000"
REFERENCE_SAMPLES = CHECKPOINT_DIR / "eval_ddpm_mnist_samples.npy"       # 1000-step Algorithm 2, seed 0
PAIRED = [(REFERENCE, "flow:heun:20"), (REFERENCE, "flow:euler:20"), ("ddpm:edm:20", "flow:heun:20"),
          ("ddpm:dpmpp:20", "flow:heun:20"), ("flow:euler:20", "flow:heun:20")]
STRAIGHT_N, STRAIGHT_STEPS = 100, 100
REFLOW_PAIRS, REFLOW_STEPS = 20_000, 8000
PAIR_SOLVER, PAIR_CALLS, PAIR_BATCH = "heun", 20, 1000
REFLOW_CALLS = (1, 2, 4, 10, 20)
REFLOW_PAIRED = [("flow:heun:20", "STUDENT:euler:2"), ("flow:heun:20", "STUDENT:euler:1"),
                 ("flow:euler:2", "STUDENT:euler:2"), ("flow:euler:1", "STUDENT:euler:1")] + \
                [(f"ddpm:{s}:{k}", f"STUDENT:euler:{k}") for s in DDPM_SAMPLERS for k in (1, 2)]


def plan() -> list[str]:
    """Every sampler entry, flow first."""
    return [f"flow:{s}:{k}" for s in FLOW_SOLVERS for k in CALLS if not (s == "heun" and k == 1)] + \
           [f"ddpm:{s}:{k}" for s in DDPM_SAMPLERS for k in CALLS]


def reflow_pairs(flow, numerics, n: int, stem: str, results: ResultsFile) -> tuple[torch.Tensor, torch.Tensor]:
    """(x(0), z): n noise draws (seed 1) and the flow ODE's images of them, kept on disk."""
    path = SAMPLES / f"reflow_pairs_n{n}_{stem}.npz"
    z = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    if not path.exists():
        t0 = time.perf_counter()
        x0 = sample(flow.model, flow.schedule, n, PAIR_SOLVER, PAIR_CALLS, x_T=z, batch_size=PAIR_BATCH,
                    numerics=numerics)
        save_images(path, x0.numpy())
        results.put("reflow:pairs", {"n": n, "solver": PAIR_SOLVER, "calls": PAIR_CALLS, "seed": 1,
                                     "seconds": round(time.perf_counter() - t0, 1)})
    return torch.from_numpy(load_images(path)), z


def reflow_student(flow, flow_path: Path, x0: torch.Tensor, z: torch.Tensor, steps: int, results: ResultsFile):
    """The student: the flow preset's recipe for ``steps`` steps, starting from the flow, on the pairs; with the
    default steps exported beside the flow's checkpoint as ``<its name>_reflow.safetensors``."""
    recipe, run_dir = PRESETS["flow"], SAMPLES / f"student_n{len(x0)}_{flow_path.stem}_s{steps}"
    exported = (flow_path.with_name(f"{flow_path.stem}_reflow.safetensors") if steps == REFLOW_STEPS
                else run_dir / "model.safetensors")
    key = f"reflow{steps}:student"
    if results.has(key) and exported.exists():                 # trained and recorded on an earlier run
        return load_checkpoint(exported)
    config = dataclasses.replace(recipe.train, steps=steps, snapshot_steps=(), seed=2)
    result = train(flow.model.config, flow.schedule, config, x0, out_dir=run_dir, progress=False,
                   noise=z, init=flow.model)
    if exported.parent != run_dir:
        atomic_write_bytes(exported, (run_dir / "model.safetensors").read_bytes())
    if not results.has(key):
        results.put(key, {"pairs": len(x0), "steps": result.step, "batch_size": config.batch_size, "lr": config.lr,
                          "train_seconds": round(result.seconds, 1), "checkpoint": os.path.relpath(exported, ROOT)})
    return load_checkpoint(exported)


def _path(model, schedule, kind: str, x_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ODE path of a model from x_T on the straight path: (states, times), fp32."""
    record, trajectory = record_trajectory(1)                                  # every state of the chain
    sample(model, schedule, len(x_T), "euler" if kind == "flow" else "ddim", STRAIGHT_STEPS, x_T=x_T,
           batch_size=len(x_T), numerics=Numerics("fp32"), callback=record)
    states = [x for _, x in trajectory]
    if kind == "flow":
        return torch.stack(states), torch.linspace(1, 0, STRAIGHT_STEPS + 1)
    # DDIM: x_T at t = T - 1, then 100 steps
    ts = ddim_timesteps(schedule.T, STRAIGHT_STEPS).tolist()[::-1]
    ab = schedule.alpha_bars.tolist()
    moved = [from_diffusion(x, ab[t]) for x, t in zip(states[:-1], ts)] + [(states[-1], 0.0)]
    return torch.stack([y for y, _ in moved]), torch.tensor([tau for _, tau in moved])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow-checkpoint", default=str(FLOW_CHECKPOINT))
    p.add_argument("--ddpm-checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-reflow", action="store_true", help="stop before the reflow stages")
    p.add_argument("--reflow-pairs", type=int, default=REFLOW_PAIRS, help="pairs the student trains on")
    p.add_argument("--reflow-steps", type=int, default=REFLOW_STEPS, help="the student's training steps")
    args = p.parse_args(argv)
    results = ResultsFile(args.out, "the flow-matching checkpoint against the shipped DDPM one at equal network "
                                    "calls; written by experiments/flow_matching.py")
    models = {"flow": load_checkpoint(args.flow_checkpoint), "ddpm": load_checkpoint(args.ddpm_checkpoint)}
    numerics = {k: choose_numerics(c.model, purpose="sample", batch_size=args.n) for k, c in models.items()}
    tag = f"n{args.n}_{Path(args.flow_checkpoint).stem}"

    def images(entry: str) -> np.ndarray:
        if entry == REFERENCE:
            return np.load(REFERENCE_SAMPLES)[:args.n]
        kind, sampler, k = entry.split(":")
        student = f"_pairs{args.reflow_pairs}" if kind.startswith("reflow") else ""
        return kept_images(SAMPLES / f"{entry.replace(':', '_')}_{tag}{student}.npy",
                           lambda: draw_images(models[kind], numerics[kind], sampler, int(k), [0], n=args.n,
                                               batch=args.n))

    def paired(pairs) -> None:
        for a, b in pairs:
            key = f"paired:{a}:vs:{b}"
            if not results.has(key):
                c = compare_paired(features(images(a)), features(images(b)), paired=REFERENCE not in (a, b))
                results.put(key, {"a": a, "b": b, **c.as_dict()})
                print(f"{key}: {c}", flush=True)

    def straight(kind: str) -> None:
        key = f"straightness:{kind}"
        if not results.has(key):
            ckpt = models[kind]
            x_T = torch.randn(STRAIGHT_N, 1, 28, 28, generator=torch.Generator().manual_seed(0))
            value = straightness(*_path(ckpt.model, ckpt.schedule, "ddpm" if kind == "ddpm" else "flow", x_T))
            results.put(key, {"model": kind, "n": STRAIGHT_N, "steps": STRAIGHT_STEPS, "straightness": value})
            print(f"{key}: {value:.4f}", flush=True)

    def score(entries) -> None:
        for entry in entries:
            if not results.has(entry):
                kind, sampler, k = entry.split(":")
                report = evaluate_samples(images(entry), seed=0)
                results.put(entry, {"model": kind, "sampler": sampler, "calls": int(k), **report})
                print(f"{entry}: FD {report['fd']:.2f} (floor {report['fd_floor']:.2f}), KID {report['kid']:.4f}",
                      flush=True)

    score(plan())
    paired(PAIRED)
    for kind in models:
        straight(kind)
    if args.no_reflow:
        return 0
    flow_path = Path(args.flow_checkpoint)
    x0, z = reflow_pairs(models["flow"], numerics["flow"], args.reflow_pairs, flow_path.stem, results)
    student = f"reflow{args.reflow_steps}"
    models[student] = reflow_student(models["flow"], flow_path, x0, z, args.reflow_steps, results)
    numerics[student] = numerics["flow"]
    score([f"{student}:euler:{k}" for k in REFLOW_CALLS])
    paired([(a, b.replace("STUDENT", student)) for a, b in REFLOW_PAIRED])
    # a student trained for other steps on the same pairs (kept images): the longer training against it, paired
    others = [k.split(":")[0] for k in results.data["entries"] if re.fullmatch(r"reflow\d+:student", k)]
    paired([(f"{other}:euler:{k}", f"{student}:euler:{k}") for other in others if other != student for k in (1, 2)])
    straight(student)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
