"""``evaluate``: sample, score with the MNIST classifier (FD, floor, confidence, digits), over one or several seeds;
an interrupted evaluation with --out resumes where it stopped."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .._io import Output
from ._common import (UsageError, add_force_arg, check_outputs, check_seed, save_npy, write_json)
from .sample import add_sampler_args, check_sampler_args, checkpoint_input, draw, plan


def _score(args, planned, seed: int, what: dict) -> dict:
    """Draw the samples of one seed and score them as 8-bit images."""
    from ..data import from_model_range
    from ..metrics import evaluate_samples

    t0 = time.perf_counter()
    x, desc = draw(argparse.Namespace(**{**vars(args), "seed": seed}), planned)
    sample_seconds = time.perf_counter() - t0
    # Score the samples as 8-bit images, like the real digits they are compared with and like a
    # saved PNG: the report can then be reproduced exactly from the --samples-out file.
    images = from_model_range(x)
    if args.samples_out:
        save_npy(images, Path(args.samples_out))
    report = evaluate_samples(images, seed=seed)
    report.update(desc)
    report["checkpoint"] = what["checkpoint"]
    report["sample_seconds"] = round(sample_seconds, 1)
    return report


def _check(args) -> tuple[list[int], list[dict] | None]:
    """Every refusal before any work: the options' ranges, the output paths, an --out that is no report of
    ours. Returns the seeds and the per-seed reports of an earlier --out (None: none to resume)."""
    if args.out and Path(args.out).suffix != ".json":
        raise UsageError(f"--out must end in .json (the report is JSON), got {args.out}")
    if args.samples_out and Path(args.samples_out).suffix != ".npy":
        raise UsageError(f"--samples-out must end in .npy, got {args.samples_out}")
    check_sampler_args(args, min_n=2, n_hint=" (a Fréchet distance needs 2 samples or more; the book uses 1000)")
    seeds = args.seeds or [args.seed]
    for seed in seeds:
        check_seed("--seeds" if args.seeds else "--seed", seed)
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds must not repeat a seed, got {seeds}")
    if len(seeds) > 1 and args.samples_out:
        raise UsageError("--samples-out keeps the samples of one seed: give --seed, not several --seeds")
    old = _read_report(args.out, args.force)
    # the samples of a seed that the report holds are not drawn again, so --samples-out is not rewritten
    kept = old is not None and seeds[0] in {r.get("seed") for r in old}
    outputs = [Output("--out", args.out, updates=True)] if args.out else []
    outputs += [Output("--samples-out", args.samples_out, updates=kept)] if args.samples_out else []
    check_outputs(outputs, checkpoint_input(args), force=args.force)
    return seeds, old


def cmd_evaluate(args) -> int:
    seeds, old = _check(args)
    if old and args.precision == "auto" and old[0].get("precision") in ("fp32", "bf16"):
        # resume with the numerics the report was scored with, even if their measurement was forgotten since
        args.precision = old[0]["precision"]
        if args.channels_last is None and isinstance(old[0].get("channels_last"), bool):
            args.channels_last = old[0]["channels_last"]
    planned = plan(args)
    cfg = planned.ckpt.config
    if (cfg.image_channels, cfg.image_size) != (1, 28):
        raise UsageError(f"evaluate scores samples with an MNIST classifier; this checkpoint draws "
                         f"{cfg.image_channels}x{cfg.image_size}x{cfg.image_size} images. Use `sample` to look at them.")
    what = {"checkpoint": str(args.checkpoint or "shipped"), "n": planned.n, **planned.desc}
    before = _scored_before(args.out, old, what, seeds, args.force)
    _warn_if_few(planned.n)
    reports = {}
    for seed in seeds:
        if seed in before:
            reports[seed] = before[seed]
            print(f"seed {seed}: scored before, kept from {args.out}", file=sys.stderr, flush=True)
            continue
        reports[seed] = report = _score(args, planned, seed, what)
        if len(seeds) > 1:
            print(f"seed {seed}: FD {report['fd']:.2f}, floor {report['fd_floor']:.2f}, "
                  f"ratio {report['fd_ratio']:.2f}", file=sys.stderr, flush=True)
            if args.out:  # a long evaluation keeps what it has scored: the same command resumes it
                write_json(args.out, _seeds_report(list(reports.values()), what))
    report = _seeds_report([reports[s] for s in seeds], what)
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


def _warn_if_few(n: int) -> None:
    """The covariance of n samples' features has rank n - 1 at most: below the features' dimension the FD
    (and its floor, at the same n) is a rough figure."""
    from ..classifier import ClassifierConfig

    dim = ClassifierConfig().feature_dim
    if n <= dim:
        print(f"warning: the covariance of {n} samples has rank {n - 1} at most, below the {dim} dimensions of the "
              f"classifier's features: FD and floor are rough at this N (compare them only at the same N; the "
              f"book uses 1000)", file=sys.stderr, flush=True)


def _seeds_report(reports: list[dict], what: dict) -> dict:
    """One seed's report as it is; several seeds summarized, with what was sampled (the fields of ``what``,
    the same for every seed) and their total sampling time."""
    from ..metrics import summarize_seeds

    if len(reports) == 1:
        return reports[0]
    report = summarize_seeds(reports)
    report.update({k: v for k, v in reports[0].items() if k in what})
    report["sample_seconds"] = round(sum(r["sample_seconds"] for r in reports), 1)
    return report


def _read_report(out, force: bool) -> list[dict] | None:
    """The per-seed reports of an evaluate report at ``out``; None if there is none (or ``force`` replaces a file
    that is not one)."""
    if not out or not Path(out).is_file():
        return None
    try:
        old = json.loads(Path(out).read_text())
        old = old.get("per_seed", [old])
        if not all(isinstance(r, dict) and isinstance(r["seed"], int) for r in old):
            raise TypeError("a report without seeds")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        if force:
            return None
        raise UsageError(f"{out} exists but is not an evaluate report ({e!r}); remove it, give another --out, or "
                         "pass --force to replace it") from None
    return old


def _scored_before(out, old: list[dict] | None, what: dict, seeds: list[int], force: bool) -> dict[int, dict]:
    """The reports of these seeds in an earlier --out file of the same evaluation, by seed: a rerun keeps
    them and scores only the others. The same evaluation means every field of ``what`` (checkpoint, N,
    sampler and its arguments, numerics, device, ...) is equal; anything else is an error (``force``: it
    is replaced)."""
    if not old:
        return {}
    differ = {k: (r.get(k), v) for r in old for k, v in what.items() if r.get(k) != v}
    if differ and force:
        return {}
    if differ:
        raise UsageError(f"{out} holds an evaluation of something else "
                         f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in differ.items())}); "
                         f"remove it or pass --force to score every seed afresh, or give another --out")
    return {r["seed"]: r for r in old if r["seed"] in seeds}


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="sample and print quality figures as JSON (FD, floor, confidence, digit "
                                        "histogram)")
    add_sampler_args(p)
    p.set_defaults(n=1000)
    p.add_argument("--out", default=None,
                   help="also write the JSON report to this .json file; with --seeds it is rewritten after every "
                        "seed, and a rerun keeps the seeds it holds (same checkpoint and settings) and scores the "
                        "rest")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="score each of these seeds (its own x_T, z and real-data floor subset) and report the "
                        "mean FD over the mean floor, the spread, and every seed's figures; overrides --seed")
    p.add_argument("--samples-out", default=None,
                   help="also keep the scored samples, as a uint8 array (N, 28, 28) in this .npy file")
    add_force_arg(p)
    p.set_defaults(func=cmd_evaluate)
