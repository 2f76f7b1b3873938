"""FD and time of the fast samplers on the shipped checkpoint, against 1000-step Algorithm 2.

    python experiments/fast_samplers.py                # every entry not yet in the results file
    python experiments/fast_samplers.py --only dpmpp:20 ddim:50 --seeds 0 1 2

Each entry draws N = 1000 images (batch 1000: the same x_T per seed for every sampler, and the
same as the committed eight-seed 1000-step evaluation `checkpoints/eval_ddpm_mnist_seeds.json`,
which is the reference), scores them with the book's metric (`ddpm_lib.metrics.evaluate_samples`, FD
against the MNIST test set, with the real-data floor of the same seed) and appends the result
to `experiments/results/fast_samplers.json`. Rerun the command to resume; one entry takes
(network evaluations x 1000) / (evaluations per second of the CPU) seconds.

    python experiments/fast_samplers.py --paired       # the paired comparisons and the ODE distances

`--paired` adds two kinds of entry. `paired:SAMPLER:STEPS` draws seed 0 again, keeps the images
in `runs/fast_samplers/` (not committed), and compares them with the committed 1000-step samples
(`checkpoints/eval_ddpm_mnist_samples.npy`) by the bootstrap interval of the FD ratio
(`ddpm_lib.metrics.compare_paired`). Those were drawn in batches of 500, which orders the random
draws differently (their x_T and every z differ from a batch-1000 draw of seed 0), so this
comparison is unpaired (`paired=False`). `paired:dpmpp-sde:20:vs:50` compares the two budgets of
the stochastic solver from the same x_T, paired; `paired:dpmpp:K:vs:edm:K` the two deterministic
second-order solvers (DPM-Solver++(2M) and the EDM sampler, Heun) at K calls. `--spacing` writes
`spacing:dpmpp:K:SPACING`: DPM-Solver++ at K = 10 and 20 calls with its timesteps spread linspace (the
default), trailing, or uniform in log-SNR, each scored, compared paired with linspace, and measured
against the ODE's end point. `ode:SAMPLER:STEPS` measures how far a deterministic
solver's images lie from the end point of the probability-flow ODE itself: the root-mean-square
pixel difference (model range [-1, 1]) from DDIM with all 1000 steps, on 100 x_T (seed 0), all
in fp32 (bf16's rounding would otherwise set a floor); `ode:dpmpp:500` says how close two fine
solutions are to each other.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from _results import ResultsFile, draw_images, kept_images  # noqa: E402

import numpy as np  # noqa: E402

from ddpm_lib.checkpoint import SHIPPED_CHECKPOINT, load_checkpoint  # noqa: E402
from ddpm_lib.data import from_model_range  # noqa: E402
from ddpm_lib.metrics import compare_paired, evaluate_samples, features  # noqa: E402
from ddpm_lib.numerics import Numerics, choose_numerics  # noqa: E402
from ddpm_lib.sampling import sample  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "fast_samplers.json"
# In the order they are run: the goal points (20 and 50 evaluations) first.
PLAN = [f"{s}:{k}" for k in (20, 50) for s in ("dpmpp", "dpmpp-sde", "ddim", "edm")] + \
       [f"{s}:{k}" for k in (10, 100) for s in ("dpmpp", "ddim", "dpmpp-sde")] + \
       ["dpmpp:200", "ddpm:50", "ddpm:100"]
N, BATCH = 1000, 1000
REFERENCE_SAMPLES = ROOT / "checkpoints" / "eval_ddpm_mnist_samples.npy"   # 1000-step Algorithm 2, seed 0
SAMPLES = ROOT / "runs" / "fast_samplers"
PAIRED = [(s, k) for k in (20, 50) for s in ("dpmpp-sde", "dpmpp", "ddim", "edm")]
LARGE_N_SEEDS = range(10)
SPACING_STEPS, SPACINGS_MEASURED = (10, 20), ("linspace", "trailing", "logsnr")
ODE_N, ODE_REFERENCE, ODE_PLAN = 100, ("ddim", 1000), [(s, k) for s in ("ddim", "dpmpp", "edm") for k in (10, 20, 50, 100)]


def _images(ckpt, numerics, sampler: str, steps: int, n: int = N, batch: int = BATCH, seed: int = 0,
            **options) -> np.ndarray:
    """uint8 images of one seed, drawn once and kept in runs/fast_samplers/."""
    suffix = "".join(f"_{v}" for _, v in sorted(options.items()))
    return kept_images(SAMPLES / f"{sampler}_{steps}{suffix}_n{n}_seed{seed}_{numerics.precision}.npy",
                       lambda: draw_images(ckpt, numerics, sampler, steps, [seed], n=n, batch=batch, **options))


def paired_plan(results, ckpt, numerics) -> None:
    reference = features(np.load(REFERENCE_SAMPLES))
    feats = {}  # (sampler, steps) -> features, each set featurised once

    def features_of(sampler, steps):
        if (sampler, steps) not in feats:
            feats[sampler, steps] = features(_images(ckpt, numerics, sampler, steps))
        return feats[sampler, steps]
    for sampler, steps in PAIRED:
        key = f"paired:{sampler}:{steps}"
        if not results.has(key):
            c = compare_paired(reference, features_of(sampler, steps), paired=False)
            results.put(key, {"a": "ddpm:1000 (batch 500)", "b": f"{sampler}:{steps}", "seed": 0, **c.as_dict()})
            print(f"{key} vs Algorithm 2, 1000 steps: {c}", flush=True)
    key = "paired:dpmpp-sde:20:vs:50"
    if not results.has(key):
        c = compare_paired(features_of("dpmpp-sde", 50), features_of("dpmpp-sde", 20))
        results.put(key, {"a": "dpmpp-sde:50", "b": "dpmpp-sde:20", "seed": 0, **c.as_dict()})
        print(f"{key}: {c}", flush=True)
    for steps in (20, 50):       # the two deterministic second-order solvers, from the same x_T
        key = f"paired:dpmpp:{steps}:vs:edm:{steps}"
        if not results.has(key):
            c = compare_paired(features_of("dpmpp", steps), features_of("edm", steps))
            results.put(key, {"a": f"dpmpp:{steps}", "b": f"edm:{steps}", "seed": 0, **c.as_dict()})
            print(f"{key}: {c}", flush=True)


def large_n_plan(results, ckpt, numerics) -> None:
    """The ODE and the SDE solver at 20 calls, N = 10,000 pairs (x_T seeds 0-9, batch 1000)."""
    key = "paired:dpmpp:20:vs:dpmpp-sde:20:n10000"
    if results.has(key):
        return
    sets = {}
    for sampler in ("dpmpp", "dpmpp-sde"):
        sets[sampler] = np.concatenate([_images(ckpt, numerics, sampler, 20, seed=seed) for seed in LARGE_N_SEEDS])
    c = compare_paired(features(sets["dpmpp"]), features(sets["dpmpp-sde"]))
    results.put(key, {"a": "dpmpp:20", "b": "dpmpp-sde:20", "seeds": list(LARGE_N_SEEDS), **c.as_dict(),
                      "reports": {s: evaluate_samples(x, seed=0) for s, x in sets.items()}})
    print(f"{key}: {c}", flush=True)


def ode_plan(results, ckpt, numerics) -> None:
    numerics = Numerics("fp32", channels_last=numerics.channels_last)
    end = _images(ckpt, numerics, *ODE_REFERENCE, n=ODE_N, batch=ODE_N).astype(np.float64) / 127.5 - 1
    for sampler, steps in ODE_PLAN + [("dpmpp", 500)]:
        key = f"ode:{sampler}:{steps}"
        if results.has(key):
            continue
        x = _images(ckpt, numerics, sampler, steps, n=ODE_N, batch=ODE_N).astype(np.float64) / 127.5 - 1
        rms = np.sqrt(((x - end) ** 2).mean(axis=(1, 2)))
        results.put(key, {"sampler": sampler, "steps": steps, "n": ODE_N, "seed": 0,
                          "reference": f"{ODE_REFERENCE[0]}:{ODE_REFERENCE[1]}", "rms_mean": float(rms.mean()),
                          "rms_sem": float(rms.std(ddof=1) / np.sqrt(ODE_N))})
        print(f"{key}: RMS distance to the ODE end point {rms.mean():.4f} +- {rms.std(ddof=1) / np.sqrt(ODE_N):.4f}",
              flush=True)


def spacing_plan(results, ckpt, numerics) -> None:
    """DPM-Solver++(2M) with other timestep spacings (trailing, uniform log-SNR) against the default linspace, at
    10 and 20 calls: FD (N = 1000, seed 0), paired against linspace from the same x_T, and the distance to the
    ODE's end point (100 x_T, fp32, as ode_plan)."""
    fp32 = Numerics("fp32", channels_last=numerics.channels_last)
    end = _images(ckpt, fp32, *ODE_REFERENCE, n=ODE_N, batch=ODE_N).astype(np.float64) / 127.5 - 1
    for steps in SPACING_STEPS:
        base = None
        for spacing in SPACINGS_MEASURED:
            key = f"spacing:dpmpp:{steps}:{spacing}"
            if results.has(key):
                continue
            options = {} if spacing == "linspace" else {"spacing": spacing}
            x = _images(ckpt, numerics, "dpmpp", steps, **options)
            if base is None:
                base = features(_images(ckpt, numerics, "dpmpp", steps))
            entry = {"sampler": "dpmpp", "steps": steps, "spacing": spacing, "seed": 0,
                     "report": evaluate_samples(x, seed=0)}
            if spacing != "linspace":
                entry["vs_linspace"] = compare_paired(base, features(x)).as_dict()
            ode = _images(ckpt, fp32, "dpmpp", steps, n=ODE_N, batch=ODE_N, **options).astype(np.float64) / 127.5 - 1
            rms = np.sqrt(((ode - end) ** 2).mean(axis=(1, 2)))
            entry.update(ode_rms_mean=float(rms.mean()), ode_rms_sem=float(rms.std(ddof=1) / np.sqrt(ODE_N)))
            results.put(key, entry)
            print(f"{key}: FD {entry['report']['fd']:.2f}, ODE distance {rms.mean():.4f}"
                  + (f", vs linspace {entry['vs_linspace']['ratio']:.3f} [{entry['vs_linspace']['low']:.3f}, "
                     f"{entry['vs_linspace']['high']:.3f}]" if "vs_linspace" in entry else ""), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=None, metavar="SAMPLER:STEPS", help="run these entries (default: the plan)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--paired", action="store_true", help="the paired comparisons and ODE distances instead")
    p.add_argument("--large-n", action="store_true", help="DPM-Solver++ against its SDE variant at 20 calls, N = 10,000")
    p.add_argument("--spacing", action="store_true", help="DPM-Solver++ with other timestep spacings")
    args = p.parse_args(argv)
    results = ResultsFile(args.out, "fast samplers on the shipped checkpoint: N=1000, batch 1000, book's FD; "
                                    "written by experiments/fast_samplers.py")
    ckpt = load_checkpoint(args.checkpoint)
    numerics = choose_numerics(ckpt.model, purpose="sample", batch_size=BATCH)
    if args.large_n:
        large_n_plan(results, ckpt, numerics)
        return 0
    if args.spacing:
        spacing_plan(results, ckpt, numerics)
        return 0
    if args.paired:
        paired_plan(results, ckpt, numerics)
        ode_plan(results, ckpt, numerics)
        return 0
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
