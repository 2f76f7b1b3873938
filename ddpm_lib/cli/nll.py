"""``nll``: the variational bound (Ho et al. 2020, Eq. 5) of MNIST test digits in bits/dim, every term per timestep."""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

import torch

from ..likelihood import VLB_VARIANCES, variational_bound
from .._io import Output
from ._common import MAX_COUNT, UsageError, add_device_arg, add_force_arg, check_number, check_outputs, check_seed
from ._common import device as _device

_BOUND_DEFAULTS = {k: p.default for k, p in inspect.signature(variational_bound).parameters.items()}


def cmd_nll(args) -> int:
    """Score the first --n MNIST test digits with the bound of Ho et al. 2020, Eq. 5 (:mod:`ddpm_lib.likelihood`)."""
    import shlex

    from .._io import atomic_write_bytes
    from ..checkpoint import SHIPPED_CHECKPOINT, load_checkpoint
    from ..data import load_mnist
    from ..machine import cpu_name
    from ..numerics import choose_numerics

    check_number("--n", args.n, 1, 10_000, hint=" (the MNIST test digits)")
    check_seed("--seed", args.seed)
    check_number("--batch-size", args.batch_size, 1, MAX_COUNT)
    if args.out and Path(args.out).suffix != ".json":
        raise UsageError(f"--out must end in .json, got {args.out}")
    _device(args.device)
    if args.out:
        check_outputs([Output("--out", args.out)], {"--checkpoint": args.checkpoint or SHIPPED_CHECKPOINT},
                      force=args.force)
    ckpt = load_checkpoint(args.checkpoint or SHIPPED_CHECKPOINT)
    cfg = ckpt.config
    if (cfg.image_channels, cfg.image_size) != (1, 28):
        raise UsageError(f"nll scores MNIST test digits (1x28x28); this checkpoint models "
                         f"{cfg.image_channels}x{cfg.image_size}x{cfg.image_size} images")
    device = _device(args.device)
    ckpt.model.to(device)
    x0 = load_mnist("test").as_model_input()[: args.n]
    t0 = time.perf_counter()
    numerics = choose_numerics(ckpt.model, device=device, purpose="sample", batch_size=min(args.batch_size, args.n * ckpt.schedule.T),
                               precision="fp32")        # the bound is computed in float32; only the memory format is measured
    result = variational_bound(ckpt.model, ckpt.schedule, x0, variance=args.variance, seed=args.seed,
                               batch_size=args.batch_size, device=device, numerics=numerics,
                               progress=sys.stderr.isatty())
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


def add_parser(sub) -> None:
    p = sub.add_parser("nll", help="the variational bound (Ho et al. 2020, Eq. 5) of MNIST test digits in bits/dim, "
                                   "every term per timestep, as JSON")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--n", type=int, required=True, help="score the first N MNIST test digits (one network call "
                                                        "per digit and timestep: N*T calls)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise that draws each x_t ~ q(x_t | x_0)")
    p.add_argument("--variance", choices=list(VLB_VARIANCES), default=_BOUND_DEFAULTS["variance"],
                   help="sigma_t^2 of the reverse process: beta_t (default, what the shipped model samples with) "
                        "or beta_tilde_t")
    p.add_argument("--batch-size", type=int, default=_BOUND_DEFAULTS["batch_size"],
                   help=f"network calls per batch (default {_BOUND_DEFAULTS['batch_size']})")
    add_device_arg(p, "the network runs")
    p.add_argument("--out", default=None, help="write the JSON report to this .json file (else print it)")
    add_force_arg(p)
    p.set_defaults(func=cmd_nll)
