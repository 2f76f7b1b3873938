"""Command line: ``python -m ddpm_lib {train,sample,evaluate,export,info,nll}``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    from .sampling import SAMPLERS

    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--n", type=int, default=64, help="number of images (with --class all: per digit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddpm",
                   help="; ".join(f"{k}: {v}" for k, v in SAMPLERS.items()) + " (default ddpm)")
    p.add_argument("--variance", choices=["beta", "beta_tilde", "none"], default="beta",
                   help="sigma_t^2 for --sampler ddpm (default beta; 'none' drops the noise term)")
    p.add_argument("--steps", type=int, default=None,
                   help="network evaluations: ddpm T (default; fewer runs a respaced schedule), ddim 50, dpmpp 20")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--clip-x0", action="store_true",
                   help="clip each step's prediction of x_0 to [-1, 1], as the paper's released code does "
                        "(every sampler; the DPM-Solvers clip their data prediction)")
    p.add_argument("--class", dest="class_label", default=None, metavar="DIGIT",
                   help="class-conditional checkpoints: draw this digit (0-9), or 'all' for one row per digit")
    p.add_argument("--guidance", type=float, default=0.0, metavar="W",
                   help="classifier-free guidance weight w >= 0 (Ho & Salimans 2022; diffusers' guidance_scale "
                        "is 1 + w); needs --class")
    p.add_argument("--batch-size", type=int, default=500)
    _add_numerics_args(p, "the network")
    p.add_argument("--device", default="cpu",
                   help="where the network runs: cpu (default), auto (CUDA, then Apple MPS, then the CPU), cuda, "
                        "cuda:1, mps")


def _add_numerics_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help=f"arithmetic of {what}: fp32, bf16 autocast, or auto (default: the faster of the two on "
                        "this machine, measured once and cached; `python -m ddpm_lib info` shows the choice)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                   help="the same as --precision bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="force the channels_last memory format on or off (default: auto, measured like --precision)")


def _device(name: str) -> torch.device:
    """The torch device called ``name`` (``auto``: the best one present), or a clear exit if this machine has none."""
    from .numerics import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise SystemExit(f"--device: {e}") from None


def _class_labels(args, model) -> list[int] | None:
    """The label of each image from --class (None: unconditional), with one-line errors for what cannot be drawn."""
    from .guidance import check_class_labels

    k = getattr(model.config, "num_classes", 0)
    if args.class_label is None:
        if args.guidance:
            raise SystemExit("--guidance needs --class: guidance pushes samples towards a class" +
                             ("" if k else "; and this checkpoint is unconditional, so it cannot be guided"))
        return None
    if not k:
        raise SystemExit("--class: this checkpoint is unconditional (trained without labels); train one with "
                         "`python -m ddpm_lib train --preset conditional` and pass it with --checkpoint")
    if args.class_label == "all":
        return [d for d in range(k) for _ in range(args.n)]
    try:
        label = int(args.class_label)
    except ValueError:
        raise SystemExit(f"--class must be a digit 0-{k - 1} or 'all', got {args.class_label!r}") from None
    try:
        check_class_labels(model, [label])
    except ValueError as e:
        raise SystemExit(f"--class: {e}") from None
    return [label] * args.n


class _Plan(NamedTuple):
    ckpt: object       # the loaded Checkpoint
    n: int             # images to draw
    steps: int
    kwargs: dict       # the rest of sampling.sample's arguments, but the seed
    desc: dict         # what fixes the samples but the seed, as the reports record it


def _plan(args) -> _Plan:
    """What the command line asks to sample: the checkpoint, the sampler's arguments, and their description
    (everything that fixes the samples but the seed), checked before anything is drawn."""
    from .checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
    from .sampling import sampling_numerics

    ckpt = load_checkpoint(args.checkpoint or SHIPPED_CHECKPOINT)
    device = _device(args.device)
    ckpt.model.to(device)
    if args.n < 1:
        raise SystemExit(f"--n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}")
    if not (args.guidance >= 0 and args.guidance != float("inf")):
        raise SystemExit(f"--guidance must be a number >= 0 (0: no guidance), got {args.guidance}")
    labels = _class_labels(args, ckpt.model)
    n = len(labels) if labels is not None else args.n
    numerics = sampling_numerics(ckpt.model, device, min(args.batch_size, n), args.precision, args.channels_last)
    fixed = {"precision": numerics.precision, "channels_last": numerics.channels_last}
    T = ckpt.schedule.T
    limit = T // 2 if args.sampler.startswith("dpmpp") else T
    if args.steps is not None and not 1 <= args.steps <= limit:
        raise SystemExit(f"--steps must be between 1 and {limit} for --sampler {args.sampler} "
                         f"(the checkpoint has T={T}), got {args.steps}")
    extra = {"variance": args.variance, "clip_x0": args.clip_x0} if args.sampler == "ddpm" else \
        {"eta": args.eta, "clip_x0": args.clip_x0} if args.sampler == "ddim" else {"clip_x0": args.clip_x0}
    steps = args.steps or {"ddpm": T, "ddim": 50}.get(args.sampler, 20)
    guide = {"class_labels": labels, "guidance": args.guidance} if labels is not None else {}
    kwargs = dict(batch_size=args.batch_size, **extra, **guide, **fixed,
                  **({"progress": sys.stderr.isatty()} if args.sampler == "ddpm" else {}))
    desc = {"sampler": args.sampler, **extra, "steps": steps}
    if labels is not None:
        desc.update({"class": args.class_label, "guidance": args.guidance})
    # the batch size fixes the order of the random draws (each batch draws its x_T, then its z), so it
    # belongs to the description of what was sampled, like the seed
    desc.update(batch_size=args.batch_size, **fixed, device=str(device),
                train_step=ckpt.info.get("step"), train_seconds=ckpt.info.get("train_seconds"))
    return _Plan(ckpt, n, steps, kwargs, desc)


def _draw(args, plan: _Plan | None = None) -> tuple[torch.Tensor, dict]:
    """Sample images as chosen on the command line; returns (x in [-1, 1], description)."""
    from .sampling import sample

    plan = plan or _plan(args)
    x = sample(plan.ckpt.model, plan.ckpt.schedule, plan.n, args.sampler, plan.steps, seed=args.seed, **plan.kwargs)
    return x, plan.desc


def _save_npy(images: torch.Tensor, path: Path) -> None:
    """Write uint8 images (N, 28, 28) to a .npy file, atomically."""
    import io

    from .checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, images.numpy())
    atomic_write_bytes(path, buf.getvalue())


def cmd_sample(args) -> int:
    from .viz import save_png

    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise SystemExit(f"--out must end in .png (an image grid) or .npy (uint8 array), got {out}")
    t0 = time.perf_counter()
    x, _ = _draw(args)
    if out.suffix == ".png":
        nrow = args.nrow or (args.n if args.class_label == "all" else max(1, int(round(args.n ** 0.5))))
        save_png(x, out, nrow=nrow)
    else:
        from .data import from_model_range

        _save_npy(from_model_range(x), out)
    print(f"wrote {len(x)} samples to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_evaluate(args) -> int:
    from .data import from_model_range
    from .metrics import evaluate_samples

    if args.samples_out and Path(args.samples_out).suffix != ".npy":
        raise SystemExit(f"--samples-out must end in .npy, got {args.samples_out}")
    seeds = args.seeds or [args.seed]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds must not repeat a seed, got {seeds}")
    if len(seeds) > 1 and args.samples_out:
        raise SystemExit("--samples-out keeps the samples of one seed: give --seed, not several --seeds")
    plan = _plan(args)
    cfg = plan.ckpt.config
    if (cfg.image_channels, cfg.image_size) != (1, 28):
        raise SystemExit(f"evaluate scores samples with an MNIST classifier; this checkpoint draws "
                         f"{cfg.image_channels}x{cfg.image_size}x{cfg.image_size} images. Use `sample` to look at them.")
    what = {"checkpoint": str(args.checkpoint or "shipped"), "n": plan.n, **plan.desc}
    before = _scored_before(args.out, what, seeds)
    reports = {}
    for seed in seeds:
        if seed in before:
            reports[seed] = before[seed]
            print(f"seed {seed}: scored before, kept from {args.out}", file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        x, desc = _draw(argparse.Namespace(**{**vars(args), "seed": seed}), plan)
        sample_seconds = time.perf_counter() - t0
        # Score the samples as 8-bit images, like the real digits they are compared with and like a
        # saved PNG: the report can then be reproduced exactly from the --samples-out file.
        images = from_model_range(x)
        if args.samples_out:
            _save_npy(images, Path(args.samples_out))
        report = evaluate_samples(images, seed=seed)
        report.update(desc)
        report["checkpoint"] = what["checkpoint"]
        report["sample_seconds"] = round(sample_seconds, 1)
        reports[seed] = report
        if len(seeds) > 1:
            print(f"seed {seed}: FD {report['fd']:.2f}, floor {report['fd_floor']:.2f}, "
                  f"ratio {report['fd_ratio']:.2f}", file=sys.stderr, flush=True)
            if args.out:  # a long evaluation keeps what it has scored: the same command resumes it
                _write_report(args.out, _seeds_report(list(reports.values()), what))
    report = _seeds_report([reports[s] for s in seeds], what)
    if args.out:
        _write_report(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


def _seeds_report(reports: list[dict], what: dict) -> dict:
    """One seed's report as it is; several seeds summarized, with what was sampled (the fields of ``what``,
    the same for every seed) and their total sampling time."""
    from .metrics import summarize_seeds

    if len(reports) == 1:
        return reports[0]
    report = summarize_seeds(reports)
    report.update({k: v for k, v in reports[0].items() if k in what})
    report["sample_seconds"] = round(sum(r["sample_seconds"] for r in reports), 1)
    return report


def _write_report(path, report: dict) -> None:
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())


def _scored_before(out, what: dict, seeds: list[int]) -> dict[int, dict]:
    """The reports of these seeds in an earlier --out file of the same evaluation, by seed: a rerun keeps
    them and scores only the others. The same evaluation means every field of ``what`` (checkpoint, N,
    sampler and its arguments, numerics, device, ...) is equal; anything else in the file is an error."""
    if not out or not Path(out).exists():
        return {}
    try:
        old = json.loads(Path(out).read_text())
        old = old.get("per_seed", [old])
        differ = {k: (r.get(k), v) for r in old for k, v in what.items() if r.get(k) != v}
        kept = {r["seed"]: r for r in old if r["seed"] in seeds}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SystemExit(f"{out} exists but is not an evaluate report ({e!r}); remove it or give another --out")
    if differ:
        raise SystemExit(f"{out} holds an evaluation of something else "
                         f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in differ.items())}); "
                         f"remove it to score every seed afresh, or give another --out")
    return kept


def _as_options(message: str, names) -> str:
    """Name the command-line options in an error about config fields: max_minutes -> --max-minutes."""
    for name in names:
        message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
    return message


def cmd_train(args) -> int:
    from . import distributed
    from .data import DATA_SOURCES, load_training_images
    from .presets import PRESETS
    from .schedule import make_schedule
    from .training import MODEL_FILE, train

    recipe = PRESETS[args.preset]
    model_cfg, tc = recipe.model, recipe.train
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "max_minutes", "ema_decay",
                                               "warmup_steps", "cooldown_minutes", "cooldown_steps",
                                               "checkpoint_every",
                                               "min_snr_gamma", "accum_steps", "p_uncond")
                 if getattr(args, k) is not None}
    overrides["precision"] = args.precision
    if args.channels_last is not None:
        overrides["channels_last"] = args.channels_last
    if args.max_minutes == 0:
        overrides["max_minutes"] = None   # 0: no time limit
    try:
        tc = replace(tc, **overrides)
    except ValueError as e:
        raise SystemExit(f"error: {_as_options(str(e), overrides)}") from None
    sched_kind, T = args.schedule or recipe.schedule, args.T or recipe.T
    model_over = {k: getattr(args, k) for k in ("arch", "base_channels", "image_size", "image_channels", "prediction",
                                                "time_embedding", "norm") if getattr(args, k) is not None}
    try:
        model_cfg = replace(model_cfg, num_timesteps=T, **model_over)
    except ValueError as e:
        halvings = len(model_cfg.channel_mults) - 1
        hint = (f"; this preset's network halves the image {halvings} times, so --image-size must be a multiple of "
                f"{2 ** halvings}" if "image_size" in str(e) else "")
        raise SystemExit(f"error: {_as_options(str(e), model_over)}{hint}") from None
    if args.data not in DATA_SOURCES[:-1] and not args.data.startswith("imagefolder:"):
        raise SystemExit(f"--data must be one of {', '.join(DATA_SOURCES)}, got {args.data!r}")
    out_dir = Path(args.out_dir or f"runs/{args.preset}")
    if args.dist_timeout <= 0:
        raise SystemExit(f"--dist-timeout must be above 0 seconds, got {args.dist_timeout}")
    ranks = distributed.from_env()
    try:
        tc.micro_batch(ranks.world_size)
    except ValueError as e:
        raise SystemExit(f"error: {_as_options(str(e), ('batch_size', 'accum_steps'))}") from None
    if ranks.is_main:
        print(f"preset {args.preset!r}: {recipe.about}\nmodel {model_cfg}\nschedule {sched_kind} T={T}\ntrain {tc}\n"
              + (f"processes {ranks.world_size} (torchrun), {tc.batch_size // ranks.world_size} images each per step\n"
                 if ranks.enabled else "") + f"writing to {out_dir}", flush=True)
    data = load_training_images(args.data, model_cfg.image_channels, model_cfg.image_size, args.data_dir)
    labels = None
    if model_cfg.num_classes:
        if args.data != "mnist":
            raise SystemExit(f"--preset {args.preset} is class-conditional and trains on MNIST's labels; "
                             f"--data {args.data} has none this command reads: use --data mnist")
        from .data import load_mnist

        labels = load_mnist("train", args.data_dir).labels
    wall0 = time.perf_counter()
    try:
        result = train(model_cfg, make_schedule(sched_kind, T), tc, data, out_dir, resume=not args.no_resume,
                       labels=labels,
                       progress=not args.no_progress, device=_device(args.device), dist_timeout_s=args.dist_timeout)
    finally:
        distributed.teardown()
    wall = time.perf_counter() - wall0
    if not ranks.is_main:
        return 130 if result.interrupted else 0
    state = "interrupted (resume with the same command)" if result.interrupted else "finished"
    print(f"{state} at step {result.step}: {result.seconds / 60:.1f} min of training in total, "
          f"{wall / 60:.1f} min wall clock this session, numerics {result.numerics.name}; "
          f"EMA model in {out_dir / MODEL_FILE}")
    if args.export and not result.interrupted:
        import shutil

        shutil.copyfile(out_dir / MODEL_FILE, args.export)
        print(f"exported to {args.export}")
    return 130 if result.interrupted else 0


def cmd_export(args) -> int:
    from .checkpoint import save_checkpoint
    from .training import load_train_state_model

    model, schedule, meta = load_train_state_model(args.state, ema=not args.raw)
    info = {"step": meta["step"], "train_seconds": round(meta["seconds"], 1), "train_config": meta["train_config"]}
    save_checkpoint(args.out, model, schedule, info)
    print(f"wrote {'raw' if args.raw else 'EMA'} weights of step {meta['step']} to {args.out}")
    return 0


def cmd_info(args) -> int:
    from . import numerics as num
    from .checkpoint import SHIPPED_CHECKPOINT, load_checkpoint

    if args.clear_numerics_cache:
        print(f"forgot {num.clear_cache()} numerics decisions ({num.cache_path()})")
        return 0
    ckpt = load_checkpoint(args.checkpoint or SHIPPED_CHECKPOINT)
    report = {"model_config": ckpt.config.to_dict(), "parameters": ckpt.model.num_parameters(),
              "schedule": {"kind": ckpt.schedule.kind, "T": ckpt.schedule.T}, "info": ckpt.info}
    if not args.no_numerics:
        device = _device(args.device)
        ckpt.model.to(device)
        train_batch = args.train_batch_size or ckpt.info.get("train_config", {}).get("batch_size", 64)
        print(f"measuring the numerics of this model on {device} (once; cached in {num.cache_path()}) ...",
              file=sys.stderr, flush=True)
        report["numerics"] = num.summary(device)
        for purpose, batch in (("train", train_batch), ("sample", args.sample_batch_size)):
            choice = num.choose_numerics(ckpt.model, device=device, purpose=purpose, batch_size=batch)
            report["numerics"][purpose] = {"batch_size": batch, "chosen": choice.name, "how": choice.source,
                                           "probe_items_per_s": choice.rates}
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- nll: the variational bound

def cmd_nll(args) -> int:
    """Score the first --n MNIST test digits with the bound of Ho et al. 2020, Eq. 5 (:mod:`ddpm_lib.likelihood`)."""
    import shlex

    from .checkpoint import SHIPPED_CHECKPOINT, atomic_write_bytes, load_checkpoint
    from .data import load_mnist
    from .likelihood import variational_bound
    from .numerics import cpu_name

    if not 1 <= args.n <= 10_000:
        raise SystemExit(f"--n must be between 1 and 10000 (the MNIST test digits), got {args.n}")
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out and Path(args.out).suffix != ".json":
        raise SystemExit(f"--out must end in .json, got {args.out}")
    ckpt = load_checkpoint(args.checkpoint or SHIPPED_CHECKPOINT)
    cfg = ckpt.config
    if (cfg.image_channels, cfg.image_size) != (1, 28):
        raise SystemExit(f"nll scores MNIST test digits (1x28x28); this checkpoint models "
                         f"{cfg.image_channels}x{cfg.image_size}x{cfg.image_size} images")
    device = _device(args.device)
    ckpt.model.to(device)
    x0 = load_mnist("test").as_model_input()[: args.n]
    t0 = time.perf_counter()
    result = variational_bound(ckpt.model, ckpt.schedule, x0, variance=args.variance, seed=args.seed,
                               batch_size=args.batch_size, device=device, progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0

    command = ["python", "-m", "ddpm_lib", "nll"] + (["--checkpoint", str(args.checkpoint)] if args.checkpoint else [])
    command += ["--n", str(args.n), "--seed", str(args.seed), "--variance", args.variance,
                "--batch-size", str(args.batch_size)]
    command += (["--device", args.device] if args.device != "cpu" else []) + (["--out", str(args.out)] if args.out else [])
    to_bpd = result.nats_to_bits_per_dim
    mean, sem = result.mean_bits_per_dim()
    report = {
        "what": "variational bound on -log p(x_0) (Ho et al. 2020, Eq. 5; discretised decoder L_0, section 3.3) of "
                f"the first {args.n} MNIST test digits as 8-bit data, in bits per dimension",
        "command": shlex.join(command),
        "checkpoint": str(args.checkpoint or "shipped"),
        "train_step": ckpt.info.get("step"),
        "n": args.n, "seed": args.seed, "variance": args.variance, "T": ckpt.schedule.T, "dims": result.dims,
        "bits_per_dim": round(mean, 6),
        "bits_per_dim_sem": round(sem, 6) if sem == sem else None,
        "prior_bits_per_dim": round(float(result.prior.mean() * to_bpd), 9),
        "l0_bits_per_dim": round(float(result.decoder_nll.mean() * to_bpd), 6),
        "kl_bits_per_dim": round(float(result.terms[:, 1:].sum(1).mean() * to_bpd), 6),
        "per_t_bits_per_dim": [float(f"{v:.8g}") for v in result.per_t_bits_per_dim().tolist()],
        "per_t_note": "mean over the images of each term in bits/dim; entry i is the term of zero-based timestep i: "
                      "entry 0 = L_0, entry i >= 1 = L_{t-1} for the paper's t = i + 1; "
                      "bits_per_dim = prior + sum of all entries",
        "per_image_bits_per_dim": [round(v, 6) for v in result.bits_per_dim.tolist()],
        "network_calls": args.n * ckpt.schedule.T,
        "numerics": result.numerics, "batch_size": args.batch_size, "device": str(device),
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "wall_seconds": round(wall, 1),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())
        print(f"bound {mean:.4f} bits/dim (standard error {sem:.4f}) over {args.n} test digits; prior "
              f"{report['prior_bits_per_dim']:.2e}, L_0 {report['l0_bits_per_dim']:.4f}, KL terms "
              f"{report['kl_bits_per_dim']:.4f}; {wall:.1f} s; wrote {args.out}")
    else:
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .models import NORMS, PREDICTIONS, TIME_EMBEDDINGS
    from .presets import PRESETS

    parser = argparse.ArgumentParser(prog="python -m ddpm_lib", description="Train, sample and evaluate DDPMs on MNIST.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="draw samples to a PNG grid or a .npy array")
    _add_sampler_args(p)
    p.add_argument("--out", required=True, help="FILE.png (image grid) or FILE.npy (uint8 array (N, H, W), or (N, 3, H, W) for RGB)")
    p.add_argument("--nrow", type=int, default=None, help="images per row of the grid")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="sample and print quality figures as JSON (FD, floor, confidence, digit histogram)")
    _add_sampler_args(p)
    p.set_defaults(n=1000)
    p.add_argument("--out", default=None,
                   help="also write the JSON report to this file; with --seeds it is rewritten after every seed, "
                        "and a rerun keeps the seeds it holds (same checkpoint and settings) and scores the rest")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="score each of these seeds (its own x_T, z and real-data floor subset) and report the "
                        "mean FD over the mean floor, the spread, and every seed's figures; overrides --seed")
    p.add_argument("--samples-out", default=None,
                   help="also keep the scored samples, as a uint8 array (N, 28, 28) in this .npy file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train a model (Algorithm 1); resumes if the output folder has a state")
    p.add_argument("--preset", choices=sorted(PRESETS), default="shipped",
                   help="; ".join(f"{k}: {v.about}" for k, v in PRESETS.items()))
    p.add_argument("--out-dir", default=None, help="run folder (default runs/PRESET)")
    p.add_argument("--export", default=None, help="copy the final EMA model checkpoint to this path")
    p.add_argument("--steps", type=int)
    p.add_argument("--max-minutes", type=float,
                   help="stop after this many minutes of training (0: no limit, the preset's steps decide)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--cooldown-minutes", type=float,
                   help="decay the LR linearly to 0 over the last minutes of --max-minutes (0: constant LR)")
    p.add_argument("--cooldown-steps", type=int,
                   help="decay the LR linearly to 0 over the last steps of --steps (0: constant LR)")
    p.add_argument("--accum-steps", type=int,
                   help="split each process's share of a batch into this many parts whose gradients add up "
                        "(the same effective batch with less memory)")
    p.add_argument("--dist-timeout", type=float, default=300.0,
                   help="under torchrun: seconds a process waits for the others before the job fails (default 300)")
    p.add_argument("--min-snr-gamma", type=float,
                   help="weight the loss at timestep t by min(SNR_t, gamma)/SNR_t (Hang et al. 2023; 0: L_simple)")
    p.add_argument("--p-uncond", type=float,
                   help="class-conditional presets: probability of training a step's image without its label "
                        "(classifier-free guidance; default 0.1)")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int)
    _add_numerics_args(p, "training")
    p.add_argument("--arch", choices=["unet", "simple"])
    p.add_argument("--base-channels", type=int)
    p.add_argument("--prediction", choices=list(PREDICTIONS), help="what the network predicts (default eps)")
    p.add_argument("--time-embedding", choices=list(TIME_EMBEDDINGS),
                   help="UNet: where the time embedding enters (default every_block)")
    p.add_argument("--norm", choices=list(NORMS), help="UNet: GroupNorm (group, default) or BatchNorm (batch)")
    p.add_argument("--schedule", choices=["linear", "cosine"])
    p.add_argument("--T", type=int)
    p.add_argument("--data", default="mnist", metavar="SOURCE",
                   help="training images: mnist (default), fashion-mnist or cifar10 (downloaded by torchvision), or "
                        "imagefolder:PATH (images in subfolders of PATH); converted to --image-channels and resized "
                        "to --image-size")
    p.add_argument("--image-size", type=int, help="image height and width of the model (default 28)")
    p.add_argument("--image-channels", type=int, choices=[1, 3], help="1: grayscale (default), 3: RGB")
    p.add_argument("--data-dir", default=None,
                   help="where datasets are kept (default $DDPM_DATA_DIR or ~/.cache/ddpm_lib/data)")
    p.add_argument("--device", default="cpu",
                   help="where the network trains: cpu (default), auto (CUDA, then MPS, then the CPU), cuda, mps")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the folder has a training state")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write the EMA model of a training state as a model checkpoint")
    p.add_argument("--state", required=True, help="runs/NAME/train_state.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="print a checkpoint's config and training info, and the numerics this "
                                    "machine runs it with")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cpu", help="the device whose numerics to show: cpu (default), auto, cuda, mps")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="batch of the training probe (default: the checkpoint's training batch)")
    p.add_argument("--sample-batch-size", type=int, default=500, help="batch of the sampling probe (default 500)")
    p.add_argument("--no-numerics", action="store_true", help="do not measure or show the numerics")
    p.add_argument("--clear-numerics-cache", action="store_true",
                   help="forget every cached numerics decision (they are measured again when next needed)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("nll", help="the variational bound (Ho et al. 2020, Eq. 5) of MNIST test digits in bits/dim, "
                                   "every term per timestep, as JSON")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--n", type=int, required=True, help="score the first N MNIST test digits (one network call "
                                                        "per digit and timestep: N*T calls)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise that draws each x_t ~ q(x_t | x_0)")
    p.add_argument("--variance", choices=["beta", "beta_tilde"], default="beta",
                   help="sigma_t^2 of the reverse process: beta_t (default, what the shipped model samples with) "
                        "or beta_tilde_t")
    p.add_argument("--batch-size", type=int, default=500, help="network calls per batch (default 500)")
    p.add_argument("--device", default="cpu", help="where the network runs: cpu (default), auto, cuda, mps")
    p.add_argument("--out", default=None, help="write the JSON report to this file (else print it)")
    p.set_defaults(func=cmd_nll)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataUnavailableError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, DataUnavailableError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
