"""Checkpoints as safetensors files with their configuration inside (never pickle).

Two kinds of file, both plain safetensors:

* a **model checkpoint** (``kind = "model"``): the weights to sample with (for
  the shipped checkpoint, the EMA weights), the :class:`~ddpm_lib.models.ModelConfig`
  and the schedule, so :func:`load_checkpoint` rebuilds model and schedule exactly;
* a **training state** (``kind = "train_state"``): model, EMA and optimizer
  tensors, the random-generator state and the step, so training resumes where
  it stopped (see :mod:`ddpm_lib.training`).

Writes are atomic: the file is written next to its destination under a
temporary name, flushed, and moved into place with ``os.replace``, so an
interrupted save never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as _st_save
from torch import nn

from .cold import BlurDegradation
from .models import ModelConfig, build_model
from .schedule import DiffusionSchedule, make_schedule

FORMAT = "ddpm_lib.checkpoint/1"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: The checkpoint shipped with the book (trained by ``python -m ddpm_lib train --preset shipped``).
SHIPPED_CHECKPOINT = CHECKPOINT_DIR / "ddpm_mnist.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, is not ours, or does not match the expected model."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Save ``tensors`` with ``metadata`` (JSON-encoded values) as safetensors, atomically."""
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, _st_save(tensors, metadata=meta))


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`save_tensors`; returns ``(tensors, metadata)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it may be truncated or "
            "corrupt. Delete it and re-download or retrain it."
        ) from None
    if raw_meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a ddpm_lib checkpoint (metadata format is "
            f"{raw_meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has unreadable metadata ({e}); the file is corrupt") from None
    return tensors, meta


def schedule_to_dict(schedule: DiffusionSchedule) -> dict:
    return {"kind": schedule.kind, "T": schedule.T}


def forward_process_from_dict(d: dict):
    """The forward process a checkpoint records: a DiffusionSchedule, or a cold-diffusion blur (``kind="blur"``)."""
    if d["kind"] == BlurDegradation.kind:
        return BlurDegradation(d["T"])
    return make_schedule(d["kind"], d["T"])


def check_state_matches(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the tensors that differ between ``model`` and ``state``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"wrong shapes {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
        raise CheckpointError(
            f"{source} does not match the model config it declares: {'; '.join(parts)}. "
            "The file was written for a different architecture or is damaged."
        )


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    schedule: DiffusionSchedule,
    info: dict | None = None,
) -> None:
    """Save a model checkpoint: weights + model config + schedule (+ free-form ``info``)."""
    metadata = {
        "kind": "model",
        "model_config": model.config.to_dict(),
        "schedule": schedule_to_dict(schedule),
        "info": info or {},
    }
    save_tensors(path, model.state_dict(), metadata)


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns."""

    model: nn.Module
    schedule: DiffusionSchedule
    config: ModelConfig
    info: dict

    def __iter__(self):  # allows ``model, schedule, config, info = load_checkpoint(...)``
        return iter((self.model, self.schedule, self.config, self.info))


def load_checkpoint(
    path: str | os.PathLike = SHIPPED_CHECKPOINT,
    device: str | torch.device = "cpu",
    expected_config: ModelConfig | dict | None = None,
) -> LoadedCheckpoint:
    """Load a model checkpoint and rebuild its model (in eval mode) and schedule.

    Raises :class:`CheckpointError` if the file is corrupt, is not a ddpm_lib
    model checkpoint, its tensors do not fit its own config, or its config
    differs from ``expected_config``.
    """
    tensors, meta = read_tensors(path)
    if meta.get("kind") != "model":
        hint = " (a training state: export a model with `python -m ddpm_lib export`)" if meta.get("kind") == "train_state" else ""
        raise CheckpointError(f"{path} is a {meta.get('kind')!r} file, not a model checkpoint{hint}")
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        schedule = forward_process_from_dict(meta["schedule"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model config or schedule: {e}") from None
    if expected_config is not None:
        expected = expected_config if isinstance(expected_config, ModelConfig) else ModelConfig.from_dict(expected_config)
        if expected != config:
            diff = {
                k: (v, getattr(config, k)) for k, v in expected.to_dict().items() if v != config.to_dict()[k]
            }
            raise CheckpointError(
                f"{path} holds a model with a different config; differences (expected, found): {diff}"
            )
    model = build_model(config)
    check_state_matches(model, tensors, str(path))
    model.load_state_dict(tensors)
    return LoadedCheckpoint(model.to(device).eval(), schedule, config, meta.get("info", {}))
