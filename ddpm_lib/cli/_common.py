"""What the commands share: the device and numerics options, the checks every command makes before it
starts work (the ranges of numeric options, the output paths), and writing their outputs."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .._io import OutputPathError, check_output_paths
from ..machine import DEVICES
from ..numerics import PRECISIONS

#: the most images (or steps, or a batch) one command may ask for: a bound on the work, far above any real use
MAX_COUNT = 1_000_000
#: seeds are integers in numpy's range; training derives the data order's seed from it (seed * 1,000,003 + epoch)
MAX_SEED = 2**32 - 1


class UsageError(SystemExit):
    """Bad input on the command line: one line, exit status 2, before any work (argparse's own convention).

    Called in-process, it is a :class:`SystemExit` whose text is that line; ``python -m ddpm_lib`` prints
    it as ``error: ...``.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2


def check_number(option: str, value, low=None, high=None, *, above: bool = False, below: bool = False,
                 hint: str = "") -> None:
    """Refuse ``value`` of ``option`` unless it is finite and within [low, high] (``above``/``below``: the bound
    itself excluded), with one line that gives the valid range: ``--eta must be a number between 0 and 1, got nan``."""
    if value is None:
        return
    ok = math.isfinite(value) and (low is None or (value > low if above else value >= low)) and \
        (high is None or (value < high if below else value <= high))
    if ok:
        return
    if low is not None and high is not None and not (above or below):
        bounds = f"between {low} and {high}"
    else:
        bounds = " and ".join([f"{'>' if above else '>='} {low}"] * (low is not None) +
                              [f"{'<' if below else '<='} {high}"] * (high is not None))
    kind = "a number " if isinstance(value, float) else ""
    raise UsageError(f"{option} must be {kind}{bounds}{hint}, got {value}")


def check_seed(option: str, value) -> None:
    check_number(option, value, 0, MAX_SEED)


def check_outputs(outputs, inputs=None, force: bool = False) -> None:
    """:func:`ddpm_lib._io.check_output_paths`, its refusal as a one-line usage error."""
    try:
        check_output_paths(outputs, inputs, force=force)
    except OutputPathError as e:
        raise UsageError(str(e)) from None


def add_force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace output files that exist (without it, a file this command did not write is kept "
                        "and the command refuses to start)")


def check_samples_finite(x: torch.Tensor, args) -> None:
    """Refuse to write samples that hold NaN or infinities (they would be saved as black pixels), naming the
    option that most likely caused them."""
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    if not bool(bad.any()):
        return
    causes = []
    if getattr(args, "guidance", 0):
        causes.append(f"--guidance {args.guidance} (try a weight of at most 10)")
    if getattr(args, "eta", None):
        causes.append(f"--eta {args.eta}")
    if getattr(args, "precision", None) == "bf16":
        causes.append("--precision bf16 (try fp32)")
    cause = f"likely cause: {' or '.join(causes)}" if causes else \
        "the checkpoint's weights are finite, so the network overflows: try --precision fp32 or another checkpoint"
    raise FloatingPointError(f"{int(bad.sum())} of {len(x)} samples hold NaN or infinite values; nothing was "
                             f"written ({cause})")


@contextmanager
def signals_seen():
    """Yield a function that returns the signals (numbers) that arrived so far, whichever handler took them
    (the training loop installs its own): read from :func:`signal.set_wakeup_fd`. Outside the main thread it
    sees none."""
    seen: set[int] = set()
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:          # not the main thread
        old = None

    def read() -> set[int]:
        try:
            seen.update(os.read(r, 512))
        except BlockingIOError:
            pass
        return seen

    try:
        yield read
    finally:
        if old is not None:
            signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)


def add_device_arg(p: argparse.ArgumentParser, what: str) -> None:
    """--device: where ``what`` happens (a name of :data:`ddpm_lib.machine.DEVICES`, or cuda:N)."""
    p.add_argument("--device", default="cpu",
                   help=f"where {what}: {', '.join(DEVICES)}, or cuda:N (default cpu; auto: CUDA, then Apple MPS, "
                        "then the CPU)")


def add_numerics_args(p: argparse.ArgumentParser, what: str, default: str | None) -> None:
    """--precision (:data:`ddpm_lib.numerics.PRECISIONS`; ``default`` None: the preset's), its alias --bf16, and
    --channels-last."""
    given = default if default is not None else "the preset's"
    p.add_argument("--precision", choices=list(PRECISIONS), default=default,
                   help=f"arithmetic of {what}: {', '.join(PRECISIONS)} (default {given}; auto: the faster of fp32 "
                        "and bf16 autocast on this machine, measured once and cached; `python -m ddpm_lib info` "
                        "shows the choice)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                   help="the same as --precision bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="force the channels_last memory format on or off (default: auto, measured like --precision)")


def device(name: str) -> torch.device:
    """The torch device called ``name`` (``auto``: the best one present), or a clear exit if this machine has none."""
    from ..machine import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(f"--device: {e}") from None


def save_npy(images: torch.Tensor, path: Path) -> None:
    """Write uint8 images (N, 28, 28) to a .npy file, atomically."""
    from .._io import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, images.numpy())
    atomic_write_bytes(path, buf.getvalue())


def write_json(path, report: dict) -> None:
    """Write ``report`` as indented JSON, atomically."""
    from .._io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())
