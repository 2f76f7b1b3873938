"""Checkpoints as safetensors files with their configuration inside (never pickle).

Two kinds of file, both plain safetensors:

* a **model checkpoint** (``kind = "model"``): the weights to sample with (for
  the shipped checkpoint, the EMA weights), the :class:`~ddpm_lib.models.ModelConfig`
  and the schedule, so :func:`load_checkpoint` rebuilds model and schedule exactly;
* a **training state** (``kind = "train_state"``): model, EMA and optimizer
  tensors, the random-generator state and the step, so training resumes where
  it stopped (:func:`save_train_state`, :func:`read_train_state`; the loop that
  writes them is :func:`ddpm_lib.training.train`).

Writes are atomic (:func:`ddpm_lib._io.atomic_write_bytes`), so an interrupted
save never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as _st_save
from torch import nn

from ._io import atomic_write_bytes
from .cold import BlurDegradation
from .flow import LinearPath
from .models import ModelConfig, build_model
from .schedule import DiffusionSchedule, make_schedule

FORMAT = "ddpm_lib.checkpoint/1"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
#: The checkpoint shipped with the book (trained by ``python -m ddpm_lib train --preset shipped``).
SHIPPED_CHECKPOINT = CHECKPOINT_DIR / "ddpm_mnist.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, is not ours, or does not match the expected model."""


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
    _refuse_other_kinds(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it may be truncated or "
            "corrupt. Delete it and re-download or retrain it."
        ) from None
    check_finite(tensors, path)
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


#: how the files often given in place of a safetensors file begin: torch.save's zip archive, a bare pickle
#: (protocols 2 to 5); a safetensors file has its JSON header from byte 8 on
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _refuse_other_kinds(path: Path) -> None:
    """A folder or a PyTorch pickle given as a checkpoint: say what it is and what to pass instead."""
    if path.is_dir():
        inside = [p.name for p in (path / MODEL_FILE, path / STATE_FILE) if p.is_file()]
        hint = (f"; it holds {' and '.join(inside)}: pass {path / inside[0]}" if inside else
                "; pass the .safetensors file itself")
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return          # safe_open says what is wrong
    if head.startswith(_PICKLE_MAGIC) and head[8:9] != b"{":
        raise CheckpointError(
            f"{path} is a PyTorch pickle (torch.save), not a safetensors checkpoint; ddpm_lib never unpickles "
            "(a pickle can run code when loaded). Pass a .safetensors checkpoint that ddpm_lib wrote: "
            "`python -m ddpm_lib train --export FILE`, or `python -m ddpm_lib export` from a training state")


def check_finite(tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming the first tensor of ``tensors`` that holds a NaN or an infinity.

    Weights like that only come from a damaged file or a run that diverged, and they
    would sample black images without an error.
    """
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{source}: tensor {name!r} holds {bad} NaN or infinite value(s) of {t.numel()}; the file is "
                "damaged or was written by a run that diverged. Use an earlier checkpoint, or retrain")


def schedule_to_dict(schedule: DiffusionSchedule) -> dict:
    return {"kind": schedule.kind, "T": schedule.T}


def forward_process_from_dict(d: dict):
    """The forward process a checkpoint records: a DiffusionSchedule, a cold-diffusion blur (``kind="blur"``), or a
    flow-matching model's linear path (``kind="flow"``)."""
    if d["kind"] == BlurDegradation.kind:
        return BlurDegradation(d["T"])
    if d["kind"] == LinearPath.kind:
        return LinearPath(d["T"])
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


# --------------------------------------------------------------------------- training states

#: The file names a training run writes in its folder.
STATE_FILE = "train_state.safetensors"
MODEL_FILE = "model.safetensors"


@dataclass
class TrainState:
    """What a training-state file holds, as :func:`read_train_state` returns it."""

    model: dict[str, torch.Tensor]         # the raw weights' state_dict
    ema: dict[str, torch.Tensor]           # the EMA weights' state_dict
    optimizer: dict                        # an optimizer state_dict (state and param_groups)
    rng_generator: torch.Tensor            # the loop's seeded generator (data order, t, eps)
    rng_torch: torch.Tensor                # torch's global generator (dropout)
    meta: dict                             # model_config, schedule, train_config, step, seconds, history


def save_train_state(path: str | os.PathLike, model: nn.Module, ema_model: nn.Module,
                     optimizer: torch.optim.Optimizer, generator: torch.Generator, meta: dict) -> None:
    """Write a training state: both sets of weights, the optimizer, both random generators and ``meta``."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    save_tensors(path, tensors, {"kind": "train_state", **meta, "param_groups": opt["param_groups"]})


def read_train_state(path: str | os.PathLike) -> TrainState:
    """Read a file written by :func:`save_train_state` (a :class:`CheckpointError` if it is not one)."""
    tensors, meta = read_tensors(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state (kind={meta.get('kind')!r})")

    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt_state: dict = {}
    for k, v in part("optim.").items():
        idx, name = k.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    optimizer = {"state": opt_state, "param_groups": meta.pop("param_groups")}
    return TrainState(part("model."), part("ema."), optimizer, tensors["rng.generator"], tensors["rng.torch"], meta)


def load_train_state_model(path: str | os.PathLike, ema: bool = True) -> tuple[nn.Module, DiffusionSchedule, dict]:
    """Rebuild the EMA (or, with ``ema=False``, the raw) model stored in a training state.

    Returns ``(model, forward process, metadata)``, the model in eval mode.
    """
    state = read_train_state(path)
    model = build_model(ModelConfig.from_dict(state.meta["model_config"]))
    weights = state.ema if ema else state.model
    check_state_matches(model, weights, str(path))
    model.load_state_dict(weights)
    return model.eval(), forward_process_from_dict(state.meta["schedule"]), state.meta


def check_run_folder(out_dir: str | os.PathLike) -> None:
    """Refuse a run folder whose ``model.safetensors`` no run there wrote (no training state is beside it):
    training there would overwrite a model from elsewhere."""
    out_dir = Path(out_dir)
    if (out_dir / MODEL_FILE).is_file() and not (out_dir / STATE_FILE).exists():
        raise CheckpointError(f"{out_dir} holds a {MODEL_FILE} but no training state: no run in this folder wrote it, "
                              "and training would overwrite it. Train in another folder, or pass overwrite=True "
                              "(--force) to replace it")
