"""``sample``, and the sampler options it shares with ``evaluate``, built from the sampler registry.

The choices of --sampler, what --steps defaults to and allows, which of --variance, --eta and
--clip-x0 a sampler takes and their defaults all come from :data:`ddpm_lib.sampling.SAMPLERS`;
an option the chosen sampler does not take is refused, not ignored.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from ..presets import PRESETS
from ..sampling import (PROCESSES, RUN_DEFAULTS, SAMPLERS, VARIANCES, Sampler, default_sampler, process_of, sample,
                        samplers_for)
from .._io import Output
from ._common import (MAX_COUNT, UsageError, add_device_arg, add_force_arg, add_numerics_args, check_number,
                      check_outputs, check_samples_finite, check_seed, device, save_npy)

#: the sampler options the command line offers: the samplers' name for each, and its flag
SAMPLER_FLAGS = {"variance": "--variance", "eta": "--eta", "churn": "--churn", "clip_x0": "--clip-x0"}
#: the T of the first preset (the shipped recipe), to show what --steps means in the help
_HELP_T = next(iter(PRESETS.values())).T


def _default_samplers() -> str:
    """What --sampler defaults to, per kind of checkpoint (:func:`~ddpm_lib.sampling.default_sampler`)."""
    return ", ".join(f"{default_sampler(process)} for a {process} checkpoint" for process in PROCESSES)


def _takers(option: str) -> str:
    """The samplers that take ``option``, for a help text or an error."""
    names = [s.name for s in SAMPLERS.values() if option in s.options]
    return "every sampler" if len(names) == len(SAMPLERS) else "--sampler " + " or ".join(names)


def _default(option: str):
    return next(s.defaults()[option] for s in SAMPLERS.values() if option in s.options)


def _steps_help() -> str:
    limits = "; ".join(f"{s.name} {s.default_steps(_HELP_T)} (at most {s.max_steps(_HELP_T)})"
                       for s in SAMPLERS.values())
    return (f"network evaluations, from 1 to the sampler's limit; default and limit for a checkpoint of "
            f"T={_HELP_T} steps: {limits}. ddpm with fewer than T runs a respaced schedule")


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """The options of ``sample`` and ``evaluate`` that say what to draw."""
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--n", type=int, default=64, help="number of images (with --class all: per digit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=list(SAMPLERS), default=None,
                   help="; ".join(f"{s.name}: {s.about}" for s in SAMPLERS.values()) +
                   f" (default: {_default_samplers()})")
    p.add_argument("--steps", type=int, default=None, help=_steps_help())
    p.add_argument("--variance", choices=list(VARIANCES), default=None,
                   help=f"sigma_t^2 of {_takers('variance')} (default {_default('variance')}; 'none' drops the "
                        "noise term)")
    p.add_argument("--eta", type=float, default=None,
                   help=f"eta of {_takers('eta')} (default {_default('eta')}: deterministic)")
    p.add_argument("--churn", type=float, default=None,
                   help=f"S_churn of {_takers('churn')} (Karras et al. 2022, Algorithm 2; default {_default('churn')}: "
                        "deterministic)")
    p.add_argument("--clip-x0", action="store_true", default=None,
                   help="clip each step's prediction of x_0 to [-1, 1], as the paper's released code does "
                        f"({_takers('clip_x0')}; the DPM-Solvers clip their data prediction)")
    p.add_argument("--class", dest="class_label", default=None, metavar="DIGIT",
                   help="class-conditional checkpoints: draw this digit (0-9), or 'all' for one row per digit")
    p.add_argument("--guidance", type=float, default=RUN_DEFAULTS["guidance"], metavar="W",
                   help="classifier-free guidance weight w >= 0 (Ho & Salimans 2022; diffusers' guidance_scale "
                        "is 1 + w); needs --class")
    p.add_argument("--batch-size", type=int, default=RUN_DEFAULTS["batch_size"])
    add_numerics_args(p, "the network", "auto")
    add_device_arg(p, "the network runs")


def _class_labels(args, model) -> list[int] | None:
    """The label of each image from --class (None: unconditional), with one-line errors for what cannot be drawn."""
    from ..guidance import check_class_labels

    k = getattr(model.config, "num_classes", 0)
    if args.class_label is None:
        if args.guidance:
            raise UsageError("--guidance needs --class: guidance pushes samples towards a class" +
                             ("" if k else "; and this checkpoint is unconditional, so it cannot be guided"))
        return None
    if not k:
        conditional = " or ".join(name for name, r in PRESETS.items() if r.model.num_classes)
        raise UsageError("--class: this checkpoint is unconditional (trained without labels); train one with "
                         f"`python -m ddpm_lib train --preset {conditional}` and pass it with --checkpoint")
    if args.class_label == "all":
        return [d for d in range(k) for _ in range(args.n)]
    try:
        label = int(args.class_label)
    except ValueError:
        raise UsageError(f"--class must be a digit 0-{k - 1} or 'all', got {args.class_label!r}") from None
    try:
        check_class_labels(model, [label])
    except ValueError as e:
        raise UsageError(f"--class: {e}") from None
    return [label] * args.n


def _sampler_options(args, entry: Sampler) -> dict:
    """The chosen sampler's options from the command line (their defaults where not given); an option given
    that it does not take is an error."""
    for option, flag in SAMPLER_FLAGS.items():
        if getattr(args, option) is not None and option not in entry.options:
            own = [SAMPLER_FLAGS[o] for o in entry.options if o in SAMPLER_FLAGS]
            raise UsageError(f"{flag} does not apply to --sampler {entry.name} (it is an option of "
                             f"{_takers(option)}); --sampler {entry.name} takes {', '.join(own) or 'none of them'}")
    defaults = entry.defaults()
    return {o: defaults[o] if getattr(args, o) is None else getattr(args, o)
            for o in entry.options if o in SAMPLER_FLAGS}


def _steps(args, entry: Sampler, T: int) -> int:
    """--steps, or the sampler's default for this T; out of the sampler's range is a one-line error."""
    if args.steps is None:
        return entry.default_steps(T)
    if not 1 <= args.steps <= entry.max_steps(T):
        raise UsageError(f"--steps must be between 1 and {entry.max_steps(T)} for --sampler {entry.name} "
                         f"(the checkpoint has T={T}), got {args.steps}")
    return args.steps


class Plan(NamedTuple):
    ckpt: object       # the loaded Checkpoint
    n: int             # images to draw
    steps: int
    kwargs: dict       # the rest of sampling.sample's arguments, but the seed
    desc: dict         # what fixes the samples but the seed, as the reports record it


def check_sampler_args(args, min_n: int = 1, n_hint: str = "") -> None:
    """The ranges of the sampling options, checked before anything is loaded (the steps' upper limit, which
    depends on the checkpoint's T, is checked once it is loaded)."""
    check_number("--n", args.n, min_n, MAX_COUNT, hint=n_hint)
    check_seed("--seed", args.seed)
    check_number("--steps", args.steps, 1, MAX_COUNT)
    check_number("--eta", args.eta, 0, 1, hint=" (0: deterministic, 1: as random as ddpm)")
    check_number("--churn", args.churn, 0, 1000, hint=" (0: deterministic; Karras et al. use up to about 80)")
    check_number("--guidance", args.guidance, 0, 100, hint=" (0: no guidance; useful weights are below 10)")
    check_number("--batch-size", args.batch_size, 1, MAX_COUNT)
    device(args.device)                 # a device this machine lacks is bad input too


def checkpoint_input(args) -> dict:
    """The checkpoint a sampling command reads, as :func:`ddpm_lib._io.check_output_paths` takes inputs."""
    from ..checkpoint import SHIPPED_CHECKPOINT

    return {"--checkpoint": args.checkpoint or SHIPPED_CHECKPOINT}


def plan(args) -> Plan:
    """What the command line asks to sample: the checkpoint, the sampler's arguments, and their description
    (everything that fixes the samples but the seed), checked before anything is drawn."""
    from ..checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
    from ..numerics import choose_numerics

    ckpt = load_checkpoint(args.checkpoint or SHIPPED_CHECKPOINT)
    kind = process_of(ckpt.schedule)
    if args.sampler is None:
        args.sampler = default_sampler(ckpt.schedule)
    entry = SAMPLERS[args.sampler]
    if entry.process != kind:
        fits = " or ".join(samplers_for(ckpt.schedule))
        raise UsageError(f"--sampler {args.sampler} samples a {entry.process} model, but "
                         f"{args.checkpoint or SHIPPED_CHECKPOINT} is a {kind} model: use --sampler {fits}")
    extra = _sampler_options(args, entry)
    dev = device(args.device)
    ckpt.model.to(dev)
    labels = _class_labels(args, ckpt.model)
    n = len(labels) if labels is not None else args.n
    if n > MAX_COUNT:
        raise UsageError(f"--n {args.n} with --class all draws {n} images, more than {MAX_COUNT}: lower --n")
    numerics = choose_numerics(ckpt.model, device=dev, purpose="sample", batch_size=min(args.batch_size, n),
                               precision=args.precision, channels_last=args.channels_last)
    fixed = {"precision": numerics.precision, "channels_last": numerics.channels_last}
    steps = _steps(args, entry, ckpt.schedule.T)
    guide = {"class_labels": labels, "guidance": args.guidance} if labels is not None else {}
    kwargs = dict(batch_size=args.batch_size, **extra, **guide, numerics=numerics, progress=sys.stderr.isatty())
    desc = {"sampler": args.sampler, **extra, "steps": steps}
    if labels is not None:
        desc.update({"class": args.class_label, "guidance": args.guidance})
    # the batch size fixes the order of the random draws (each batch draws its x_T, then its z), so it
    # belongs to the description of what was sampled, like the seed
    desc.update(batch_size=args.batch_size, **fixed, device=str(dev),
                train_step=ckpt.info.get("step"), train_seconds=ckpt.info.get("train_seconds"))
    return Plan(ckpt, n, steps, kwargs, desc)


def draw(args, planned: Plan | None = None) -> tuple[torch.Tensor, dict]:
    """Sample images as chosen on the command line; returns (x in [-1, 1], description)."""
    planned = planned or plan(args)
    x = sample(planned.ckpt.model, planned.ckpt.schedule, planned.n, args.sampler, planned.steps, seed=args.seed,
               **planned.kwargs)
    check_samples_finite(x, args)
    return x, planned.desc


def cmd_sample(args) -> int:
    from ..viz import save_png

    out = Path(args.out)
    if out.suffix not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png (an image grid) or .npy (uint8 array), got {out}")
    check_sampler_args(args)
    check_number("--nrow", args.nrow, 1, 10_000)
    if args.nrow is not None and out.suffix != ".png":
        raise UsageError(f"--nrow lays out a .png grid; --out {out} keeps the images as an array: drop --nrow")
    check_outputs([Output("--out", out)], checkpoint_input(args), force=args.force)
    t0 = time.perf_counter()
    x, _ = draw(args)
    if out.suffix == ".png":
        nrow = args.nrow if args.nrow is not None else (
            args.n if args.class_label == "all" else max(1, int(round(args.n ** 0.5))))
        save_png(x, out, nrow=nrow)
    else:
        from ..data import from_model_range

        save_npy(from_model_range(x), out)
    print(f"wrote {len(x)} samples to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples to a PNG grid or a .npy array")
    add_sampler_args(p)
    p.add_argument("--out", required=True,
                   help="FILE.png (image grid) or FILE.npy (uint8 array (N, H, W), or (N, 3, H, W) for RGB)")
    p.add_argument("--nrow", type=int, default=None, help="images per row of the grid (.png only)")
    add_force_arg(p)
    p.set_defaults(func=cmd_sample)
