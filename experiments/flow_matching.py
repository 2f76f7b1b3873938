"""The flow-matching checkpoint against the shipped DDPM checkpoint, at equal numbers of network calls.

    python experiments/flow_matching.py                 # every entry not yet in the results file
    python experiments/flow_matching.py --flow-checkpoint runs/flow/model.safetensors --out /tmp/f.json --n 200

Both checkpoints have the same network and were trained for the same 10,646 steps of batch 64
(`train --preset flow` and `--preset shipped`), so a network call costs the same in both. Entries
(N = `--n` images, x_T seed 0, batch N: every sampler of either model starts from the same x_T):

* `flow:SOLVER:K`: the flow model with Euler or Heun at K network calls (K in CALLS), scored with the
  book's metric (`ddpm_lib.metrics.evaluate_samples`: FD and its floor, KID, precision and recall);
* `ddpm:SAMPLER:K`: the DDPM checkpoint with DPM-Solver++(2M) and its SDE variant at the same budgets
  (from 10 calls: `dpmpp` needs one call per timestep, and the book measured 10 as its useful least);
* `paired:A:vs:B`: the paired bootstrap interval of FD_B / FD_A (`ddpm_lib.metrics.compare_paired`) for
  the comparisons in PAIRED, from the same x_T;
* `straightness:MODEL`: Liu et al. (2022)'s straightness of the model's ODE paths on the straight path
  x_t = (1 - t) x_0 + t eps, from 100 x_T, 100 Euler steps in fp32: the mean over the path of
  |dx/dt - (x(1) - x(0))|^2 per pixel. For the DDPM model the path is the probability-flow ODE moved
  to the straight path (`ddpm_lib.flow.from_diffusion`), sampled by DDIM at 100 timesteps.

Results go to `experiments/results/flow_matching.json`; images are kept in `runs/flow_matching/`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import ResultsFile, draw_images, kept_images  # noqa: E402

from ddpm_lib.checkpoint import CHECKPOINT_DIR, SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from ddpm_lib.flow import from_diffusion  # noqa: E402
from ddpm_lib.metrics import compare_paired, evaluate_samples, features  # noqa: E402
from ddpm_lib.numerics import Numerics, choose_numerics  # noqa: E402
from ddpm_lib.sampling import ddim_timesteps, sample  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "flow_matching.json"
SAMPLES = ROOT / "runs" / "flow_matching"
FLOW_CHECKPOINT = CHECKPOINT_DIR / "flow_mnist.safetensors"
CALLS = (1, 2, 4, 10, 20, 50)
FLOW_SOLVERS, DDPM_SAMPLERS = ("euler", "heun"), ("dpmpp", "dpmpp-sde")
PAIRED = [("ddpm:dpmpp-sde:20", "flow:heun:20"), ("ddpm:dpmpp:20", "flow:heun:20"), ("flow:euler:20", "flow:heun:20")]
STRAIGHT_N, STRAIGHT_STEPS = 100, 100


def plan() -> list[str]:
    """Every sampler entry, flow first."""
    return [f"flow:{s}:{k}" for s in FLOW_SOLVERS for k in CALLS if not (s == "heun" and k == 1)] + \
           [f"ddpm:{s}:{k}" for s in DDPM_SAMPLERS for k in CALLS if k >= 10]


def straightness(states: torch.Tensor, times: torch.Tensor) -> float:
    """Liu et al.'s straightness of paths given as states (K + 1, n, ...) at decreasing times (K + 1,) from 1 to 0:
    the time-weighted mean of |v - (x(1) - x(0))|^2 over the K intervals, per coordinate."""
    dt = (times[:-1] - times[1:]).reshape(-1, *[1] * (states.dim() - 1))       # > 0: time runs down
    velocity = (states[:-1] - states[1:]) / dt                                  # dx/dt on each interval
    chord = states[0] - states[-1]                                              # x(1) - x(0)
    per_interval = ((velocity - chord) ** 2).flatten(2).mean(2).mean(1)         # (K,)
    return float((per_interval * dt.flatten()).sum() / dt.sum())


def _path(model, schedule, kind: str, x_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ODE path of a model from x_T on the straight path: (states, times), fp32."""
    states = []
    opts = dict(x_T=x_T, batch_size=len(x_T), numerics=Numerics("fp32"), callback=lambda i, x: states.append(x.clone()))
    if kind == "flow":
        sample(model, schedule, len(x_T), "euler", STRAIGHT_STEPS, **opts)
        return torch.stack(states), torch.linspace(1, 0, STRAIGHT_STEPS + 1)
    sample(model, schedule, len(x_T), "ddim", STRAIGHT_STEPS, **opts)          # x_T at t = T - 1, then 100 steps
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
    args = p.parse_args(argv)
    results = ResultsFile(args.out, "the flow-matching checkpoint against the shipped DDPM one at equal network "
                                    "calls; written by experiments/flow_matching.py")
    models = {"flow": load_checkpoint(args.flow_checkpoint), "ddpm": load_checkpoint(args.ddpm_checkpoint)}
    numerics = {k: choose_numerics(c.model, purpose="sample", batch_size=args.n) for k, c in models.items()}
    tag = f"n{args.n}_{Path(args.flow_checkpoint).stem}"

    def images(entry: str) -> np.ndarray:
        kind, sampler, k = entry.split(":")
        ckpt = models[kind]
        return kept_images(SAMPLES / f"{entry.replace(':', '_')}_{tag}.npy",
                           lambda: draw_images(ckpt, numerics[kind], sampler, int(k), [0], n=args.n, batch=args.n))

    for entry in plan():
        if not results.has(entry):
            kind, sampler, k = entry.split(":")
            report = evaluate_samples(images(entry), seed=0)
            results.put(entry, {"model": kind, "sampler": sampler, "calls": int(k), **report})
            print(f"{entry}: FD {report['fd']:.2f} (floor {report['fd_floor']:.2f}), KID {report['kid']:.4f}",
                  flush=True)
    for a, b in PAIRED:
        key = f"paired:{a}:vs:{b}"
        if not results.has(key):
            c = compare_paired(features(images(a)), features(images(b)))
            results.put(key, {"a": a, "b": b, **c.as_dict()})
            print(f"{key}: {c}", flush=True)
    x_T = torch.randn(STRAIGHT_N, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for kind, ckpt in models.items():
        key = f"straightness:{kind}"
        if not results.has(key):
            value = straightness(*_path(ckpt.model, ckpt.schedule, kind, x_T))
            results.put(key, {"model": kind, "n": STRAIGHT_N, "steps": STRAIGHT_STEPS, "straightness": value})
            print(f"{key}: {value:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
