"""``train`` (Algorithm 1 from a preset, with overrides) and ``export`` (a training state's model as a checkpoint)."""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import replace
from pathlib import Path

from .._io import Output
from ..checkpoint import MODEL_FILE, STATE_FILE
from ..data import DATA_SOURCES
from ..distributed import DEFAULT_TIMEOUT_S
from ..models import ARCHITECTURES, NORMS, PREDICTIONS, TIME_EMBEDDINGS
from ..presets import PRESETS
from ..schedule import SCHEDULE_KINDS
from ._common import (MAX_COUNT, UsageError, add_device_arg, add_force_arg, add_numerics_args, check_number,
                      check_outputs, check_seed, device)

#: the first preset, the shipped recipe, is what `train` runs by default
DEFAULT_PRESET = next(iter(PRESETS))
_TRAIN_FIELDS = ("steps", "batch_size", "lr", "seed", "max_minutes", "ema_decay", "warmup_steps", "cooldown_minutes",
                 "cooldown_steps", "checkpoint_every", "min_snr_gamma", "accum_steps", "p_uncond", "precision",
                 "channels_last")
_MODEL_FIELDS = ("arch", "base_channels", "image_size", "image_channels", "prediction", "time_embedding", "norm")
#: bounds of the options that set a run's size, far above any real use: a typo fails at once, not after hours
MAX_STEPS, MAX_T, MAX_IMAGE_SIZE, MAX_BASE_CHANNELS, MAX_DIST_TIMEOUT_S = 10**9, 100_000, 512, 1024, 7 * 24 * 3600


def _as_options(message: str, names) -> str:
    """Name the command-line options in an error about config fields: max_minutes -> --max-minutes."""
    for name in names:
        message = re.sub(rf"\b{name}\b", "--" + name.replace("_", "-"), message)
    return message


def _check_ranges(args) -> None:
    """Every numeric option within its range, before anything is built (the library's configs check again)."""
    for name, low in (("steps", 1), ("warmup_steps", 0), ("cooldown_steps", 0), ("checkpoint_every", 1)):
        check_number(_as_options(name, [name]), getattr(args, name), low, MAX_STEPS)
    check_number("--batch-size", args.batch_size, 1, MAX_COUNT)
    check_number("--accum-steps", args.accum_steps, 1, MAX_COUNT)
    check_number("--lr", args.lr, 0, 1, above=True, hint=" (e.g. 1e-3)")
    check_number("--max-minutes", args.max_minutes, 0, hint=" (0: no time limit)")
    check_number("--cooldown-minutes", args.cooldown_minutes, 0, hint=" (0: constant LR)")
    check_number("--dist-timeout", args.dist_timeout, 0, MAX_DIST_TIMEOUT_S, above=True, hint=" seconds")
    check_number("--min-snr-gamma", args.min_snr_gamma, 0, hint=" (0: L_simple)")
    check_number("--p-uncond", args.p_uncond, 0, 1)
    check_number("--ema-decay", args.ema_decay, 0, 1, below=True)
    check_seed("--seed", args.seed)
    check_number("--base-channels", args.base_channels, 2, MAX_BASE_CHANNELS)
    check_number("--T", args.T, 2, MAX_T)
    check_number("--image-size", args.image_size, 4, MAX_IMAGE_SIZE)


def _configs(args, recipe):
    """The preset's model and training configs with the command line's overrides, or a one-line error."""
    overrides = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    if args.max_minutes == 0:
        overrides["max_minutes"] = None   # 0: no time limit
    try:
        tc = replace(recipe.train, **overrides)
    except ValueError as e:
        raise UsageError(_as_options(str(e), overrides)) from None
    model_over = {k: getattr(args, k) for k in _MODEL_FIELDS if getattr(args, k) is not None}
    try:
        model_cfg = replace(recipe.model, num_timesteps=args.T if args.T is not None else recipe.T, **model_over)
    except ValueError as e:
        halvings = len(recipe.model.channel_mults) - 1
        hint = (f"; this preset's network halves the image {halvings} times, so --image-size must be a multiple of "
                f"{2 ** halvings}" if "image_size" in str(e) else "")
        raise UsageError(f"{_as_options(str(e), model_over)}{hint}") from None
    model_cfg = _objective(args, recipe, model_cfg)
    _check_architecture(model_cfg)
    return model_cfg, tc


def _objective(args, recipe, model_cfg):
    """The model config for --objective: a flow-matching network predicts the velocity (and trains on the linear
    path, :func:`_forward_process_kind`); a DDPM one anything else."""
    if _flow(args, recipe):
        for flag, given in (("--schedule", args.schedule), ("--min-snr-gamma", args.min_snr_gamma)):
            if given:
                raise UsageError(f"{flag} belongs to a DDPM noise schedule; --objective flow trains on the linear "
                                 "path x_t = (1 - t) x_0 + t eps: drop it")
        if args.prediction not in (None, "velocity"):
            raise UsageError(f"--objective flow trains a network that predicts the velocity eps - x_0, not "
                             f"{args.prediction}: drop --prediction")
        return replace(model_cfg, prediction="velocity")
    if args.prediction == "velocity":
        raise UsageError("--prediction velocity is a flow-matching network's: add --objective flow")
    return replace(model_cfg, prediction="eps") if model_cfg.prediction == "velocity" else model_cfg


def _flow(args, recipe) -> bool:
    """Whether the run trains flow matching: --objective, else the preset's."""
    return (args.objective or ("flow" if recipe.schedule == "flow" else "diffusion")) == "flow"


def _forward_process_kind(args, recipe) -> str:
    """The forward process a checkpoint records (:func:`ddpm_lib.checkpoint.forward_process_from_dict`)."""
    if _flow(args, recipe):
        return "flow"
    return args.schedule or (recipe.schedule if recipe.schedule != "flow" else "linear")


def _check_architecture(cfg) -> None:
    """The network can be built (on the meta device: no memory, no time), else a one-line error."""
    import torch

    from ..models import build_model

    try:                # ModelConfig has checked its fields (base_channels and the norm's groups, ...)
        with torch.device("meta"):
            build_model(cfg)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"this network cannot be built: {e}") from None


def _check_data(args) -> None:
    """--data and --data-dir name something that can hold training images."""
    if args.data not in DATA_SOURCES[:-1] and not args.data.startswith("imagefolder:"):
        raise UsageError(f"--data must be one of {', '.join(DATA_SOURCES)}, got {args.data!r}")
    if args.data.startswith("imagefolder:"):
        folder = args.data[len("imagefolder:"):]
        if not folder.strip():
            raise UsageError("--data imagefolder: names no folder: give imagefolder:PATH, the folder whose "
                             "subfolders hold the images")
        if not Path(folder).expanduser().is_dir():
            raise UsageError(f"--data imagefolder:{folder}: no such folder")
    if args.data_dir is not None and Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is a file: give the folder where the datasets are kept "
                         "(it is created if missing)")


def _check_run_outputs(args, out_dir: Path, tc) -> None:
    """The run folder and its files, and --export: writable, distinct, and no model from elsewhere overwritten."""
    from ..checkpoint import CheckpointError, check_run_folder

    own = [STATE_FILE, MODEL_FILE] + [f"model_{m:g}min.safetensors" for m in tc.snapshot_minutes] + \
        [f"model_step{s}.safetensors" for s in tc.snapshot_steps]
    outputs = [Output("--out-dir", out_dir, folder=True, updates=True)]
    outputs += [Output(f"the run's own {name} (in --out-dir)", out_dir / name, updates=True) for name in own]
    outputs += [Output("--export", args.export)] if args.export else []
    check_outputs(outputs, force=args.force)
    if not args.force:
        try:
            check_run_folder(out_dir)
        except CheckpointError as e:
            raise UsageError(str(e).replace("overwrite=True (--force)", "--force")) from None


def _labels(args, model_cfg):
    """The training labels of a class-conditional model (MNIST's), else None."""
    if not model_cfg.num_classes:
        return None
    if args.data != "mnist":
        raise UsageError(f"--preset {args.preset} is class-conditional and trains on MNIST's labels; "
                         f"--data {args.data} has none this command reads: use --data mnist")
    from ..data import load_mnist

    return load_mnist("train", args.data_dir).labels


def cmd_train(args) -> int:
    from .. import distributed
    from .._io import RunLock
    from ..data import load_training_images

    recipe = PRESETS[args.preset]
    _check_ranges(args)
    model_cfg, tc = _configs(args, recipe)
    _check_data(args)
    out_dir = Path(args.out_dir or f"runs/{args.preset}")
    ranks = distributed.from_env()
    try:
        tc.micro_batch(ranks.world_size)
    except ValueError as e:
        raise UsageError(_as_options(str(e), ('batch_size', 'accum_steps'))) from None
    dev = device(args.device)
    if ranks.is_main:
        _check_run_outputs(args, out_dir, tc)
    sched_kind, T = _forward_process_kind(args, recipe), model_cfg.num_timesteps
    # the folder is this process's from before the data is loaded to after the export (rank 0 writes, and locks)
    with RunLock(out_dir) if ranks.is_main else contextlib.nullcontext():
        if ranks.is_main:
            print(f"preset {args.preset!r}: {recipe.about}\nmodel {model_cfg}\nschedule {sched_kind} T={T}\n"
                  f"train {tc}\n" + (f"processes {ranks.world_size} (torchrun), {tc.batch_size // ranks.world_size} "
                                     "images each per step\n" if ranks.enabled else "") + f"writing to {out_dir}",
                  flush=True)
        data = load_training_images(args.data, model_cfg.image_channels, model_cfg.image_size, args.data_dir)
        if len(data) < tc.batch_size:
            raise UsageError(f"--batch-size {tc.batch_size} is more than the {len(data)} training images of "
                             f"--data {args.data}: lower it")
        return _run(args, model_cfg, tc, sched_kind, T, data, _labels(args, model_cfg), out_dir, dev, ranks)


def _run(args, model_cfg, tc, sched_kind, T, data, labels, out_dir, dev, ranks) -> int:
    """Train, report, and export: the work of ``train`` once every check has passed."""
    from .. import distributed
    from .._io import atomic_write_bytes
    from ..checkpoint import forward_process_from_dict
    from ..training import train

    wall0 = time.perf_counter()
    try:
        result = train(model_cfg, forward_process_from_dict({"kind": sched_kind, "T": T}), tc, data, out_dir, resume=not args.no_resume,
                       labels=labels, progress=not args.no_progress, device=dev, dist_timeout_s=args.dist_timeout,
                       overwrite=args.force)
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
        atomic_write_bytes(args.export, (out_dir / MODEL_FILE).read_bytes())
        print(f"exported to {args.export}")
    return 130 if result.interrupted else 0


def cmd_export(args) -> int:
    from ..checkpoint import load_train_state_model, save_checkpoint

    check_outputs([Output("--out", args.out)], {"--state": args.state}, force=args.force)
    model, schedule, meta = load_train_state_model(args.state, ema=not args.raw)
    info = {"step": meta["step"], "train_seconds": round(meta["seconds"], 1), "train_config": meta["train_config"]}
    save_checkpoint(args.out, model, schedule, info)
    print(f"wrote {'raw' if args.raw else 'EMA'} weights of step {meta['step']} to {args.out}")
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (Algorithm 1); resumes if the output folder has a state")
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help="; ".join(f"{k}: {v.about}" for k, v in PRESETS.items()) + f" (default {DEFAULT_PRESET})")
    p.add_argument("--out-dir", default=None, help="run folder (default runs/PRESET)")
    p.add_argument("--export", default=None, help="copy the final EMA model checkpoint to this path")
    add_force_arg(p)
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
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"under torchrun: seconds a process waits for the others before the job fails "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--min-snr-gamma", type=float,
                   help="weight the loss at timestep t by min(SNR_t, gamma)/SNR_t (Hang et al. 2023; 0: L_simple)")
    p.add_argument("--p-uncond", type=float,
                   help="class-conditional presets: probability of training a step's image without its label "
                        "(classifier-free guidance; default 0.1)")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--seed", type=int)
    add_numerics_args(p, "training", None)
    p.add_argument("--arch", choices=list(ARCHITECTURES))
    p.add_argument("--base-channels", type=int)
    p.add_argument("--prediction", choices=list(PREDICTIONS), help="what the network predicts (default eps)")
    p.add_argument("--time-embedding", choices=list(TIME_EMBEDDINGS),
                   help="UNet: where the time embedding enters (default every_block)")
    p.add_argument("--norm", choices=list(NORMS), help="UNet: GroupNorm (group, default) or BatchNorm (batch)")
    p.add_argument("--objective", choices=["diffusion", "flow"],
                   help="diffusion: DDPM's L_simple on --schedule; flow: flow matching on the linear path "
                        "x_t = (1 - t) x_0 + t eps, the network predicting the velocity eps - x_0 (Lipman et al. "
                        "2023; sample with --sampler euler, midpoint or heun); default the preset's (diffusion, "
                        "or flow for --preset flow)")
    p.add_argument("--schedule", choices=list(SCHEDULE_KINDS))
    p.add_argument("--T", type=int)
    p.add_argument("--data", default=DATA_SOURCES[0], metavar="SOURCE",
                   help=f"training images: one of {', '.join(DATA_SOURCES)} (default {DATA_SOURCES[0]}; torchvision "
                        "downloads the named sets; imagefolder:PATH reads images in subfolders of PATH); converted "
                        "to --image-channels and resized to --image-size")
    p.add_argument("--image-size", type=int, help="image height and width of the model (default 28)")
    p.add_argument("--image-channels", type=int, choices=[1, 3], help="1: grayscale (default), 3: RGB")
    p.add_argument("--data-dir", default=None,
                   help="where datasets are kept (default $DDPM_DATA_DIR or ~/.cache/ddpm_lib/data)")
    add_device_arg(p, "the network trains")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the folder has a training state")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write the EMA model of a training state as a model checkpoint")
    p.add_argument("--state", required=True, help="runs/NAME/train_state.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")
    add_force_arg(p)
    p.set_defaults(func=cmd_export)
