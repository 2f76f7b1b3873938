"""Training with the simplified objective L_simple (Ho et al. 2020, Algorithm 1, Eq. 14).

    repeat
        x_0 ~ q(x_0);  t ~ Uniform({1..T});  eps ~ N(0, I)
        gradient step on || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    until converged

:func:`train` wraps that loop with what a real run needs: an exponential moving
average (EMA) of the weights (the paper samples with EMA weights, decay 0.9999
over 800k steps; we use 0.999 for runs of a few thousand steps), learning-rate
warm-up (and an optional cool-down at the end of a timed run), gradient
clipping, the numerics this machine runs fastest (fp32 or bf16 autocast,
contiguous or channels_last: :mod:`ddpm_lib.numerics`), periodic atomic
checkpoints, exact resume, a
clean stop on Ctrl-C or SIGTERM, and a hard stop with a clear message when the
loss becomes NaN or infinite.

Exact resume: every random draw of the loop (the data order, t and eps) comes
from seeded generators whose state is saved with the weights, so a run that is
interrupted and resumed produces the same model as one that was not.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .checkpoint import (CheckpointError, forward_process_from_dict, read_tensors, save_checkpoint, save_tensors,
                         schedule_to_dict)
from .cold import BlurDegradation, cold_loss
from .models import ModelConfig, build_model
from .numerics import PRECISIONS, Numerics, choose_numerics
from .schedule import DiffusionSchedule

STATE_FILE = "train_state.safetensors"
MODEL_FILE = "model.safetensors"


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in every training state)."""

    steps: int = 20_000              # optimizer steps to run (the run also stops at max_minutes)
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 500          # linear LR warm-up, then constant
    ema_decay: float = 0.999          # reached after a warm-up, see ema_decay_at
    grad_clip: float = 1.0
    seed: int = 0
    precision: str = "auto"          # "auto" (measured, see ddpm_lib.numerics), "fp32" or "bf16" autocast
    channels_last: bool | None = None  # None: auto (measured); True/False: forced
    checkpoint_every: int = 500      # steps between training-state checkpoints
    log_every: int = 50              # steps between entries of the loss history
    max_minutes: float | None = None  # stop after this much cumulative training time
    snapshot_minutes: tuple = ()     # export the EMA model when cumulative time passes these marks
    snapshot_steps: tuple = ()       # ... and after these optimizer steps (the same on every machine)
    cooldown_minutes: float = 0.0    # LR falls linearly to 0 over the last minutes of max_minutes
    cooldown_steps: int = 0          # ... or over the last steps of ``steps`` (a run defined in steps)
    min_snr_gamma: float = 0.0       # 0: L_simple; > 0: Min-SNR-gamma weights, see diffusion_loss
    accum_steps: int = 1             # split each process's share of a batch into this many accumulated parts
    p_uncond: float = 0.1            # class-conditional models only: probability that a label is replaced by
                                     # the null label (classifier-free guidance, Ho & Salimans 2022)

    def __post_init__(self):
        self.snapshot_minutes = tuple(float(m) for m in self.snapshot_minutes)
        self.snapshot_steps = tuple(int(s) for s in self.snapshot_steps)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a number above 0 (e.g. 1e-3), got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be at least 0 (0 turns clipping off), got {self.grad_clip}")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise ValueError(f"max_minutes must be above 0 (or unset: no time limit), got {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be at least 0 (0 turns the weighting off), got {self.min_snr_gamma}")
        if self.cooldown_minutes < 0:
            raise ValueError(f"cooldown_minutes must be at least 0, got {self.cooldown_minutes}")
        if not 0 <= self.cooldown_steps <= self.steps:
            raise ValueError(f"cooldown_steps must be between 0 and steps ({self.steps}), got {self.cooldown_steps}")
        if self.cooldown_steps and self.cooldown_minutes:
            raise ValueError("set cooldown_steps or cooldown_minutes, not both: the LR ends at 0 once")
        if self.cooldown_minutes and (self.max_minutes is None or self.cooldown_minutes > self.max_minutes):
            raise ValueError(
                f"cooldown_minutes={self.cooldown_minutes} needs a time budget at least as long: set max_minutes "
                f"(now {self.max_minutes}) to the length of the run, or cooldown_minutes to 0"
            )

    def micro_batch(self, world_size: int = 1) -> int:
        """Images one process takes per accumulated part of a step: the batch over processes x ``accum_steps``."""
        parts = world_size * self.accum_steps
        if self.batch_size % parts:
            raise ValueError(f"batch_size {self.batch_size} must divide into {world_size} processes x accum_steps "
                             f"{self.accum_steps} equal parts: use a multiple of {parts}")
        return self.batch_size // parts

    def lr_at(self, step: int, seconds: float) -> float:
        """Learning rate of optimizer step ``step`` (0-based) after ``seconds`` of training.

        Linear warm-up over ``warmup_steps``, then constant; with ``cooldown_minutes``,
        a linear decay to zero over the last ``cooldown_minutes`` of ``max_minutes``;
        with ``cooldown_steps``, over the last ``cooldown_steps`` of ``steps`` (the last
        step runs at lr / cooldown_steps). The decay is measured like the budget it ends,
        so a run stopped before the cool-down (a snapshot, or a shorter budget) is the
        same run up to there.
        """
        factor = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.cooldown_steps:
            factor *= min(1.0, (self.steps - step) / self.cooldown_steps)
        if self.cooldown_minutes:
            factor *= min(1.0, max(0.0, (60 * self.max_minutes - seconds) / (60 * self.cooldown_minutes)))
        return self.lr * factor

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        if "bf16" in d and "precision" not in d:     # written before precision was chosen by measurement
            d["precision"] = "bf16" if d["bf16"] else "fp32"
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def diffusion_loss(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    min_snr_gamma: float = 0.0,
    y: torch.Tensor | None = None,
    prediction: str = "eps",
) -> torch.Tensor:
    """L_simple (Eq. 14): mean squared error between eps and eps_theta(x_t, t).

    ``prediction``: what the network outputs (:attr:`ModelConfig.prediction`);
    ``"x0"`` or ``"v"`` regress that instead of eps, unweighted
    (:meth:`DiffusionSchedule.prediction_target`).

    ``y``: class labels for a class-conditional model, eps_theta(x_t, t, y) (the
    null label where it was dropped, see :func:`drop_labels`).

    With ``min_snr_gamma`` = gamma > 0, each sample's error is weighted by
    min(SNR_t, gamma) / SNR_t (Min-SNR-gamma, Hang et al. 2023, for the
    eps-parameterisation): timesteps with little noise (SNR_t > gamma) count
    less, the rest count as in L_simple.
    """
    x_t = schedule.q_sample(x0, t, noise)  # Eq. 4, reparameterised
    out = model(x_t, t) if y is None else model(x_t, t, y)
    target = schedule.prediction_target(x0, noise, t, prediction)   # eps for L_simple
    if not min_snr_gamma:
        return F.mse_loss(out.float(), target)
    if prediction != "eps":
        raise ValueError(f"min_snr_gamma weights are defined here for eps-prediction, not {prediction!r}")
    per_sample = (out.float() - target).pow(2).flatten(1).mean(1)
    weight = schedule.snr.clamp(max=min_snr_gamma) / schedule.snr  # float64 on the CPU, like the schedule
    return (per_sample * weight.to(device=x0.device, dtype=per_sample.dtype)[t]).mean()


def drop_labels(y: torch.Tensor, num_classes: int, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label ``num_classes`` with probability ``p_uncond``.

    Classifier-free guidance trains one network for both tasks (Ho & Salimans
    2022, Algorithm 1): with the label it learns eps(x_t, t, y), without it
    eps(x_t, t); sampling then mixes the two (:mod:`ddpm_lib.guidance`).
    """
    drop = torch.rand(y.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(y, num_classes), y)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up: min(decay, (1 + step) / (10 + step)).

    Early in training the average would otherwise be dominated by the random
    initial weights (0.999^1000 is still 37%); the warm-up makes the EMA track
    the weights closely at first and average over ~1/(1-decay) steps later.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta; buffers (BatchNorm statistics) are copied."""
    torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1.0 - decay)  # one fused update
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` (any dimension), the layers whose running statistics sampling uses."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, schedule: DiffusionSchedule, data: torch.Tensor, batches: int = 50,
                          batch_size: int = 64, seed: int = 0) -> int:
    """Recompute the running statistics of every BatchNorm layer of ``model`` for its own weights.

    :func:`ema_update` averages the weights but copies the BatchNorm statistics from the
    raw model: the EMA network then normalises with means and variances that its own
    layers do not produce ("precise BN", Wu & Johnson 2021). This runs ``batches``
    forward passes in train mode on inputs drawn as in training, x_t = q_sample(x_0, t, eps)
    with t ~ U{0..T-1} (for cold diffusion, D(x_0, t)), and sets each layer's statistics to
    their plain average over those batches (momentum ``None``). :func:`train` does this
    for every model it exports. Returns the number of BatchNorm layers (0: nothing to do,
    the model is unchanged).
    """
    norms = batchnorm_layers(model)
    if not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None                       # a cumulative average over the batches below
        model.train()
        for _ in range(batches):
            x0 = data[torch.randint(0, len(data), (batch_size,), generator=g)]
            t = torch.randint(0, schedule.T, (batch_size,), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            # DDPM: x_t = q_sample(x_0, t, eps); cold diffusion: the degraded D(x_0, t)
            x_t = schedule.degrade(x0, t) if isinstance(schedule, BlurDegradation) else schedule.q_sample(x0, t, noise)
            model(x_t.to(device), t.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module
    schedule: DiffusionSchedule
    step: int
    seconds: float                  # cumulative training wall time, over all resumes
    history: list = field(default_factory=list)  # [step, mean loss since last entry, seconds]
    interrupted: bool = False
    out_dir: Path | None = None
    numerics: Numerics | None = None  # the precision and memory format the run used (ddpm_lib.numerics)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary.

    A second Ctrl-C raises KeyboardInterrupt at once, as usual.
    """

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a checkpoint "
              "(press Ctrl-C again to abort without saving)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _save_state(path: Path, model, ema_model, optimizer, generator, step, seconds, history,
                model_config, schedule, config) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "kind": "train_state",
        "model_config": model_config.to_dict(),
        "schedule": schedule_to_dict(schedule),
        "train_config": asdict(config),
        "param_groups": opt["param_groups"],
        "step": step,
        "seconds": seconds,
        "history": history,
    }
    save_tensors(path, tensors, metadata)


# How long a run lasts, how it ends (the LR cool-down), how often it saves and how the arithmetic is
# done (numerics, gradient accumulation, the number of processes: a run may move to another machine)
# may change between resumes, so a finished run can be extended; the rest of the recipe may not.
_RUN_LENGTH_FIELDS = ("steps", "max_minutes", "cooldown_minutes", "cooldown_steps", "snapshot_minutes",
                      "snapshot_steps",
                      "checkpoint_every", "log_every", "precision", "channels_last", "accum_steps")


def _recipe(config: TrainConfig) -> dict:
    """The fields of ``config`` that a resumed run must share, as they read back from JSON."""
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k not in _RUN_LENGTH_FIELDS}


def _load_state(path: Path, model, ema_model, optimizer, generator, model_config, schedule, config):
    tensors, meta = read_tensors(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state (kind={meta.get('kind')!r})")
    same = (
        # via from_dict, so a state written before a model field existed reads as that field's default
        ModelConfig.from_dict(meta["model_config"]) == model_config
        and meta["schedule"] == schedule_to_dict(schedule)
        # via from_dict, so a state written before a recipe field existed reads as that field's default
        and _recipe(TrainConfig.from_dict(meta["train_config"])) == _recipe(config)
    )
    if not same:
        raise CheckpointError(
            f"{path} belongs to a run with a different model, schedule or recipe; resume it with the same "
            "options, or start fresh in another folder (or pass resume=False / --no-resume to overwrite it)"
        )
    def part(prefix):
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(part("model."))
    ema_model.load_state_dict(part("ema."))
    opt_state: dict = {}
    for k, v in part("optim.").items():
        idx, name = k.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return meta["step"], meta["seconds"], meta["history"]


def load_train_state_model(path: str | Path, ema: bool = True) -> tuple[nn.Module, DiffusionSchedule, dict]:
    """Rebuild the (EMA) model stored in a training state; returns ``(model, schedule, metadata)``."""
    tensors, meta = read_tensors(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state (kind={meta.get('kind')!r})")
    model = build_model(ModelConfig.from_dict(meta["model_config"]))
    prefix = "ema." if ema else "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval(), forward_process_from_dict(meta["schedule"]), meta


def train(
    model_config: ModelConfig,
    schedule: DiffusionSchedule,
    config: TrainConfig,
    data: torch.Tensor,
    out_dir: str | Path | None = None,
    resume: bool = True,
    labels: torch.Tensor | None = None,
    progress: bool = True,
    callback: Callable[[int, float, "TrainResult"], None] | None = None,
    device: torch.device | str | None = None,
    dist_timeout_s: float = distributed.DEFAULT_TIMEOUT_S,
) -> TrainResult:
    """Run Algorithm 1 on ``data`` (float images (N, C, H, W) in [-1, 1]).

    ``schedule`` is the forward process: a :class:`DiffusionSchedule` (the loss is
    :func:`diffusion_loss`, regressing what ``model_config.prediction`` names), or a
    :class:`ddpm_lib.cold.BlurDegradation` for cold diffusion (the loss is
    :func:`ddpm_lib.cold.cold_loss`; the network must predict x0).

    With ``out_dir``, a training state is saved there every
    ``config.checkpoint_every`` steps and at the end, and the EMA model is
    exported to ``out_dir/model.safetensors``; if a state is already there and
    ``resume`` is true, training continues from it. ``callback(step, loss,
    result)`` is called at every history entry (for live plots).

    ``device`` (default the CPU) is where the network runs, e.g. ``"cuda"``.
    The random draws (data order, t, eps) always come from the seeded CPU
    generator and are then moved, so a run draws the same batches, t and
    noise on every device; only the arithmetic differs (and dropout, which
    draws from the device's own generator).

    Started by torchrun with several processes, each process trains a replica
    on its slice of every batch (:mod:`ddpm_lib.distributed`); the batch of a
    step stays ``config.batch_size`` images whatever the number of processes,
    and ``config.accum_steps`` splits each slice further (gradient
    accumulation). Rank 0 alone writes files and shows progress; a stop
    (Ctrl-C, SIGTERM, the time budget) on any rank stops every rank at the same
    step; ``dist_timeout_s`` bounds how long a rank waits for a dead one.
    """
    if data.dim() != 4 or data.shape[1:] != (model_config.image_channels, model_config.image_size, model_config.image_size):
        raise ValueError(
            f"training data must have shape (N, {model_config.image_channels}, {model_config.image_size}, "
            f"{model_config.image_size}), got {tuple(data.shape)}"
        )
    if len(data) < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} images, got {len(data)}")
    if model_config.num_classes and labels is None:
        raise ValueError(f"this model is class-conditional (num_classes={model_config.num_classes}): pass the "
                         "training labels (labels=...), one integer per image")
    if labels is not None:
        if not model_config.num_classes:
            raise ValueError("labels were given but the model is unconditional (num_classes=0); set num_classes "
                             "in the model config to train a class-conditional model")
        if labels.shape != (len(data),) or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integers of shape ({len(data)},), got {labels.dtype} {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= model_config.num_classes):
            raise ValueError(f"labels must be in 0..{model_config.num_classes - 1}, got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
    if model_config.num_timesteps != schedule.T:
        raise ValueError(f"model_config.num_timesteps={model_config.num_timesteps} but the schedule has T={schedule.T}")
    # the forward process decides the objective: L_simple for a DiffusionSchedule, restoration for cold diffusion
    objective = cold_loss if isinstance(schedule, BlurDegradation) else diffusion_loss
    if objective is cold_loss and model_config.prediction != "x0":
        raise ValueError(f"cold diffusion trains a restoration network: build it with prediction='x0', "
                         f"not {model_config.prediction!r}")
    out_dir = Path(out_dir) if out_dir is not None else None
    device = torch.device(device or "cpu")
    ranks = distributed.from_env()
    if device.type == "cuda" and ranks.enabled:
        device = torch.device("cuda", ranks.local_rank)
    micro = config.micro_batch(ranks.world_size)
    ranks = distributed.setup(device, dist_timeout_s)
    progress = progress and ranks.is_main
    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    ema_model = copy.deepcopy(model).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    numerics = None
    if ranks.is_main:   # one probe, on rank 0, for every rank: ranks probing side by side would disturb each other
        numerics = choose_numerics(model, device=device, purpose="train", batch_size=micro,
                                   precision=config.precision, channels_last=config.channels_last)
    numerics = distributed.broadcast(numerics, ranks)
    if progress:
        print(f"numerics: {numerics.describe()}", flush=True)
    memory_format = numerics.memory_format
    model = model.to(memory_format=memory_format)
    net = model
    if ranks.enabled:   # averages the replicas' gradients during backward; identical initial weights by the seed
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)

    step, seconds, history = 0, 0.0, []
    state_path = out_dir / STATE_FILE if out_dir is not None else None
    if ranks.is_main and out_dir is not None and out_dir.is_dir():
        # A run killed outright (SIGKILL, power loss) mid-save leaves its temporary file behind;
        # the checkpoint itself is intact (atomic_write_bytes only renames complete files).
        for stale in out_dir.glob(".*.safetensors.*.tmp"):
            stale.unlink(missing_ok=True)
    if state_path is not None and state_path.exists() and resume:
        step, seconds, history = _load_state(state_path, model, ema_model, optimizer, generator,
                                             model_config, schedule, config)
        if ranks.is_main:
            print(f"resuming from step {step} ({seconds / 60:.1f} min of training so far)", flush=True)

    def save():
        if state_path is not None and ranks.is_main:
            _save_state(state_path, model, ema_model, optimizer, generator, step, seconds, history,
                        model_config, schedule, config)

    def export(path):
        if not ranks.is_main:
            return
        info = {"step": step, "train_seconds": round(seconds, 1), "train_config": asdict(config),
                "numerics": {"precision": numerics.precision, "channels_last": numerics.channels_last,
                             "device": device.type}, "processes": ranks.world_size}
        exported = ema_model
        if batchnorm_layers(ema_model):
            # the EMA weights carry the raw weights' BatchNorm statistics (ema_update copies them):
            # recompute them for the weights that are exported (a copy: the training state keeps its own)
            exported = copy.deepcopy(ema_model)
            recalibrate_batchnorm(exported, schedule, data, seed=config.seed)
            info["batchnorm_recalibrated"] = True
        save_checkpoint(path, exported, schedule, info)

    n = len(data)
    per_epoch = n // config.batch_size
    epoch, perm = None, None
    done_snapshots = {m for m in config.snapshot_minutes if seconds >= 60 * m}
    result = TrainResult(model, ema_model, schedule, step, seconds, history, False, out_dir, numerics)
    bar = None
    if progress:
        from tqdm import tqdm  # plain tqdm: works in terminals and headless notebook runs

        bar = tqdm(total=config.steps, initial=min(step, config.steps), desc="training", mininterval=2)

    def out_of_time():
        return config.max_minutes is not None and seconds >= 60 * config.max_minutes

    running, count, stopping = 0.0, 0, False
    model.train()
    with _StopFlag() as stop:
        while step < config.steps and not out_of_time() and not stopping:
            t0 = time.perf_counter()
            if epoch != step // per_epoch:
                epoch = step // per_epoch
                perm = _epoch_permutation(n, config.seed, epoch)
            i = step % per_epoch
            # every process draws the whole batch, as one process would, and keeps its slice
            idx = perm[i * config.batch_size:(i + 1) * config.batch_size]
            x0 = data[idx]
            t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator)   # t ~ Uniform
            noise = torch.randn(x0.shape, generator=generator)                      # eps ~ N(0, I)
            # class-conditional: the labels, each dropped to the null label with probability p_uncond
            # (drawn after t and eps, so unconditional runs draw exactly what they always drew)
            y = (drop_labels(labels[idx], model_config.num_classes, config.p_uncond, generator)
                 if labels is not None else None)
            x0, t, noise = (distributed.shard(v, ranks).to(device, non_blocking=True) for v in (x0, t, noise))
            if y is not None:
                y = distributed.shard(y, ranks).to(device, non_blocking=True)
            # x_0 and eps in the model's memory format: mixing formats in q_sample and the loss costs more
            # than channels_last saves
            x0, noise = x0.contiguous(memory_format=memory_format), noise.contiguous(memory_format=memory_format)
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step, seconds)
            optimizer.zero_grad(set_to_none=True)
            local_loss = 0.0
            for k in range(config.accum_steps):
                part = slice(k * micro, (k + 1) * micro)
                # gradients are all-reduced once, with the last part's backward
                sync = contextlib.nullcontext() if not ranks.enabled or k == config.accum_steps - 1 else net.no_sync()
                with sync:
                    with numerics.autocast(device):
                        loss = objective(net, schedule, x0[part], t[part], noise[part], config.min_snr_gamma,
                                         None if y is None else y[part], model_config.prediction)
                    (loss / config.accum_steps).backward()
                local_loss += loss.item() / config.accum_steps
            step_loss = distributed.all_reduce([local_loss], ranks)[0] / ranks.world_size   # the mean over the batch
            if not math.isfinite(step_loss):   # the same value on every rank: all stop here, nothing updated
                raise FloatingPointError(
                    f"the loss became {step_loss} at step {step + 1}; training stopped. The last good "
                    f"training state (if any) is left untouched in {out_dir}. Lower the learning rate "
                    f"(now {config.lr}), keep gradient clipping on, or train in fp32 (--precision fp32), then resume."
                )
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            ema_update(ema_model, model, ema_decay_at(step, config.ema_decay))
            step += 1
            # one clock and one stop decision for all ranks: the slowest rank's step time, any rank's request
            step_seconds, stop_requested = distributed.all_reduce([time.perf_counter() - t0, float(stop.requested)],
                                                                 ranks, op="max")
            seconds += step_seconds
            stopping = bool(stop_requested)
            running += step_loss
            count += 1
            if step % config.log_every == 0 or step == config.steps:
                history.append([step, running / count, round(seconds, 2)])
                running, count = 0.0, 0
                result.step, result.seconds = step, seconds
                if bar is not None:
                    bar.set_postfix(loss=f"{history[-1][1]:.4f}")
                if callback is not None:
                    callback(step, history[-1][1], result)
            if bar is not None:
                bar.update(1)
            for m in config.snapshot_minutes:
                if m not in done_snapshots and seconds >= 60 * m and out_dir is not None:
                    export(out_dir / f"model_{m:g}min.safetensors")
                    done_snapshots.add(m)
            if step in config.snapshot_steps and out_dir is not None:
                export(out_dir / f"model_step{step}.safetensors")
            if step % config.checkpoint_every == 0:
                save()
        if count:
            history.append([step, running / count, round(seconds, 2)])
        save()
        if out_dir is not None:
            export(out_dir / MODEL_FILE)
        result.interrupted = stopping or (stop.requested and not ranks.enabled)
    if bar is not None:
        bar.close()
    distributed.barrier(ranks)   # no rank leaves before rank 0 has written the final state
    result.step, result.seconds, result.history = step, seconds, history
    return result
