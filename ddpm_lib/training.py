"""Training with the simplified objective L_simple (Ho et al. 2020, Algorithm 1, Eq. 14).

    repeat
        x_0 ~ q(x_0);  t ~ Uniform({1..T});  eps ~ N(0, I)
        gradient step on || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    until converged

:func:`train` is that loop: it draws the batch, takes one step with :func:`ddpm_lib.optim.train_step`
on the loss of :mod:`ddpm_lib.losses`, and updates the exponential moving average of the weights
(:mod:`ddpm_lib.ema`; the paper samples with EMA weights, decay 0.9999 over 800k steps; we use 0.999
for runs of a few thousand steps). Around it, what a real run needs: learning-rate warm-up and
cool-down (:class:`ddpm_lib.presets.TrainConfig`), gradient clipping, the numerics this machine runs
fastest (:mod:`ddpm_lib.numerics`), periodic atomic checkpoints (:mod:`ddpm_lib.checkpoint`), exact
resume, a clean stop on Ctrl-C or SIGTERM, and a hard stop with a clear message on a NaN loss.

Reflow (Liu et al. 2022) trains on pairs already coupled: ``noise=`` gives each image its own eps
(drawn by a flow's ODE), used in place of a fresh draw, and ``init=`` starts from the teacher's weights.

Exact resume: every random draw of the loop (the data order, t and eps) comes from seeded generators
whose state is saved with the weights, so a run interrupted and resumed ends where one not interrupted does.
"""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import distributed
from ._io import RunLock, stale_temporaries
from .checkpoint import (MODEL_FILE, STATE_FILE, CheckpointError, check_run_folder, read_train_state,
                         save_checkpoint, save_train_state, schedule_to_dict)
from .guidance import drop_labels
from .ema import batchnorm_layers, ema_decay_at, ema_update, recalibrate_batchnorm
from .losses import make_loss
from .models import ModelConfig, build_model
from .numerics import Numerics, choose_numerics
from .optim import train_step
from .presets import TrainConfig
from .schedule import DiffusionSchedule

#: the clock the loop reads for its time budget (tests replace it with a fake one)
clock = time.perf_counter


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


# How long a run lasts, how it ends (the LR cool-down), how often it saves and how the arithmetic is
# done (numerics, gradient accumulation, the number of processes: a run may move to another machine)
# may change between resumes, so a finished run can be extended; the rest of the recipe may not.
_RUN_LENGTH_FIELDS = ("steps", "max_minutes", "cooldown_minutes", "cooldown_steps", "snapshot_minutes",
                      "snapshot_steps", "checkpoint_every", "log_every", "precision", "channels_last", "accum_steps")


def _recipe(config: TrainConfig) -> dict:
    """The fields of ``config`` that a resumed run must share, as they read back from JSON."""
    return {k: v for k, v in json.loads(json.dumps(asdict(config))).items() if k not in _RUN_LENGTH_FIELDS}


def _check_inputs(model_config: ModelConfig, schedule, config: TrainConfig, data: torch.Tensor,
                  labels: torch.Tensor | None, noise: torch.Tensor | None) -> None:
    shape = (model_config.image_channels, model_config.image_size, model_config.image_size)
    if data.dim() != 4 or data.shape[1:] != shape:
        raise ValueError(f"training data must have shape (N, {', '.join(map(str, shape))}), got {tuple(data.shape)}")
    if noise is not None and noise.shape != data.shape:
        raise ValueError(f"noise pairs one eps with each image: it must have the data's shape {tuple(data.shape)}, "
                         f"got {tuple(noise.shape)}")
    if len(data) < config.batch_size:
        raise ValueError(f"need at least batch_size={config.batch_size} images, got {len(data)}")
    k = model_config.num_classes
    if k and labels is None:
        raise ValueError(f"this model is class-conditional (num_classes={k}): pass the "
                         "training labels (labels=...), one integer per image")
    if labels is not None:
        if not k:
            raise ValueError("labels were given but the model is unconditional (num_classes=0); set num_classes "
                             "in the model config to train a class-conditional model")
        if labels.shape != (len(data),) or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integers of shape ({len(data)},), got {labels.dtype} {tuple(labels.shape)}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(f"labels must be in 0..{k - 1}, got values in [{int(labels.min())}, {int(labels.max())}]")
    if model_config.num_timesteps != schedule.T:
        raise ValueError(f"model_config.num_timesteps={model_config.num_timesteps} but the schedule has T={schedule.T}")


@dataclass
class _Run:
    """A run in progress: what it trains on, what it carries from step to step, and where it writes."""

    model_config: ModelConfig
    schedule: object               # the forward process
    config: TrainConfig
    data: torch.Tensor
    labels: torch.Tensor | None
    noise: torch.Tensor | None     # each image's own eps (reflow's coupled pairs), or None: fresh draws
    out_dir: Path | None
    model: nn.Module
    ema_model: nn.Module
    net: nn.Module                 # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    generator: torch.Generator     # every draw of the loop (t, eps, dropped labels), in a fixed order
    numerics: Numerics
    ranks: distributed.DistInfo
    device: torch.device
    step: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)
    loss_sum: float = 0.0          # the losses since the last history entry
    loss_count: int = 0

    @property
    def state_path(self) -> Path | None:
        return self.out_dir / STATE_FILE if self.out_dir is not None else None

    def save(self) -> None:
        """Write the training state (rank 0, with an ``out_dir``)."""
        if self.state_path is None or not self.ranks.is_main:
            return
        meta = {"model_config": self.model_config.to_dict(), "schedule": schedule_to_dict(self.schedule),
                "train_config": asdict(self.config), "step": self.step, "seconds": self.seconds,
                "history": self.history}
        save_train_state(self.state_path, self.model, self.ema_model, self.optimizer, self.generator, meta)

    def export(self, name: str) -> None:
        """Write the EMA model as a model checkpoint ``out_dir/name`` (rank 0, with an ``out_dir``)."""
        if self.out_dir is None or not self.ranks.is_main:
            return
        info = {"step": self.step, "train_seconds": round(self.seconds, 1), "train_config": asdict(self.config),
                "numerics": {"precision": self.numerics.precision, "channels_last": self.numerics.channels_last,
                             "device": self.device.type}, "processes": self.ranks.world_size}
        exported = self.ema_model
        if batchnorm_layers(exported):
            # the EMA weights carry the raw weights' BatchNorm statistics (ema_update copies them):
            # recompute them for the weights that are exported (a copy: the training state keeps its own)
            exported = copy.deepcopy(exported)
            recalibrate_batchnorm(exported, self.schedule, self.data, seed=self.config.seed)
            info["batchnorm_recalibrated"] = True
        save_checkpoint(self.out_dir / name, exported, self.schedule, info)


def _start(model_config: ModelConfig, schedule, config: TrainConfig, data: torch.Tensor, labels, noise, init,
           out_dir, device, dist_timeout_s: float) -> _Run:
    """Join the other processes (if any), build the model, its EMA copy and the optimizer, choose the numerics."""
    device = torch.device(device or "cpu")
    ranks = distributed.from_env()
    if device.type == "cuda" and ranks.enabled:
        device = torch.device("cuda", ranks.local_rank)
    micro = config.micro_batch(ranks.world_size)
    ranks = distributed.setup(device, dist_timeout_s)
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    if init is not None:                 # a warm start (reflow's student starts as its teacher); EMA too
        model.load_state_dict(init.state_dict() if isinstance(init, nn.Module) else init)
    model = model.to(device)
    ema_model = copy.deepcopy(model).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    numerics = None
    if ranks.is_main:   # one probe, on rank 0, for every rank: ranks probing side by side would disturb each other
        numerics = choose_numerics(model, device=device, purpose="train", batch_size=micro,
                                   precision=config.precision, channels_last=config.channels_last)
    numerics = distributed.broadcast(numerics, ranks)
    model = model.to(memory_format=numerics.memory_format)
    net = model
    if ranks.enabled:   # averages the replicas' gradients during backward; identical initial weights by the seed
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    out_dir = Path(out_dir) if out_dir is not None else None
    if ranks.is_main and out_dir is not None:   # left by a run killed mid-save; the checkpoints are intact
        for stale in stale_temporaries(out_dir, ".*.safetensors.*.tmp"):
            stale.unlink(missing_ok=True)
    return _Run(model_config, schedule, config, data, labels, noise, out_dir, model, ema_model, net, optimizer,
                torch.Generator().manual_seed(config.seed), numerics, ranks, device)


def _resume(run: _Run) -> None:
    """Continue from the run folder's training state, if there is one of the same run (else a clear error)."""
    if run.state_path is None or not run.state_path.exists():
        return
    state = read_train_state(run.state_path)
    meta = state.meta
    # via from_dict, so a state written before a field existed reads as that field's default
    ours = run.model_config.to_dict()
    differ = [k for k, v in ModelConfig.from_dict(meta["model_config"]).to_dict().items() if v != ours[k]]
    differ += ["schedule"] if meta["schedule"] != schedule_to_dict(run.schedule) else []
    theirs, ours = _recipe(TrainConfig.from_dict(meta["train_config"])), _recipe(run.config)
    differ += [k for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise CheckpointError(
            f"{run.state_path} belongs to a run with another {', '.join(differ)}; resume it with the same options, "
            "or start fresh in another folder (or pass resume=False / --no-resume to overwrite it)")
    run.model.load_state_dict(state.model)
    run.ema_model.load_state_dict(state.ema)
    run.optimizer.load_state_dict(state.optimizer)
    run.generator.set_state(state.rng_generator)
    torch.set_rng_state(state.rng_torch)
    run.step, run.seconds, run.history = meta["step"], meta["seconds"], meta["history"]
    if run.ranks.is_main:
        print(f"resuming from step {run.step} ({run.seconds / 60:.1f} min of training so far)", flush=True)
        if run.step >= run.config.steps:
            print(f"note: the run is already at step {run.step}, and steps is {run.config.steps}: nothing to train; "
                  "raise steps (--steps) to train on", flush=True)


def _draw_batch(run: _Run, perm: torch.Tensor, loss_fn):
    """Lines 2-4 of Algorithm 1 for this step: x_0 in the epoch's order, t ~ Uniform (drawn as the loss says:
    integer steps for DDPM, real times for flow matching), eps ~ N(0, I) (or each image's own, for reflow).

    Every process draws the whole batch, as one process would, and keeps its slice.
    """
    b = run.config.batch_size
    i = run.step % (len(run.data) // b)
    idx = perm[i * b:(i + 1) * b]
    x0 = run.data[idx]
    t = loss_fn.sample_t(b, run.generator)                                  # t ~ Uniform
    # eps ~ N(0, I), or for reflow the eps coupled with each x_0
    noise = torch.randn(x0.shape, generator=run.generator) if run.noise is None else run.noise[idx]
    # class-conditional: each label dropped to the null label with probability p_uncond (drawn after
    # t and eps, so unconditional runs draw exactly what they always drew)
    y = None
    if run.labels is not None:
        y = drop_labels(run.labels[idx], run.model_config.num_classes, run.config.p_uncond, run.generator)
    fmt = run.numerics.memory_format   # x_0 and eps in the model's format: mixing formats costs more than it saves
    x0, noise = (distributed.shard(v, run.ranks).to(run.device).contiguous(memory_format=fmt) for v in (x0, noise))
    t = distributed.shard(t, run.ranks).to(run.device)
    y = distributed.shard(y, run.ranks).to(run.device) if y is not None else None
    return x0, t, noise, y


def _after_step(run: _Run, loss: float, result: TrainResult, bar, callback, snapshots_due: list) -> None:
    """The history (the mean loss of every ``log_every`` steps), the callback, snapshots and checkpoints."""
    config = run.config
    run.loss_sum, run.loss_count = run.loss_sum + loss, run.loss_count + 1
    if run.step % config.log_every == 0 or run.step == config.steps:
        run.history.append([run.step, run.loss_sum / run.loss_count, round(run.seconds, 2)])
        run.loss_sum, run.loss_count = 0.0, 0
        result.step, result.seconds = run.step, run.seconds
        if bar is not None:
            bar.set_postfix(loss=f"{run.history[-1][1]:.4f}")
        if callback is not None:
            callback(run.step, run.history[-1][1], result)
    if bar is not None:
        bar.update(1)
    for m in [m for m in snapshots_due if run.seconds >= 60 * m]:
        run.export(f"model_{m:g}min.safetensors")
        snapshots_due.remove(m)
    if run.step in config.snapshot_steps:
        run.export(f"model_step{run.step}.safetensors")
    if run.step % config.checkpoint_every == 0:
        run.save()


def train(model_config: ModelConfig, schedule: DiffusionSchedule, config: TrainConfig, data: torch.Tensor,
          out_dir: str | Path | None = None, resume: bool = True, labels: torch.Tensor | None = None,
          progress: bool = True, callback: Callable[[int, float, "TrainResult"], None] | None = None,
          device: torch.device | str | None = None, dist_timeout_s: float = distributed.DEFAULT_TIMEOUT_S,
          overwrite: bool = False, noise: torch.Tensor | None = None,
          init: nn.Module | dict | None = None) -> TrainResult:
    """Run Algorithm 1 on ``data`` (float images (N, C, H, W) in [-1, 1]) for ``config.steps`` steps.

    ``schedule`` is the forward process; the loss follows from it (:func:`ddpm_lib.losses.make_loss`).
    Each step is :func:`ddpm_lib.optim.train_step`, then the EMA update. With ``out_dir``, a
    training state is saved there every ``config.checkpoint_every`` steps and at the end, and the
    EMA model is exported to ``out_dir/model.safetensors``; with ``resume``, a state already there
    is continued. ``callback(step, loss, result)`` is called at every history entry (live plots).
    The run holds ``out_dir``'s lock (:class:`ddpm_lib._io.RunLock`): a second process training
    there is refused; so is a folder with a model but no training state, unless ``overwrite``.

    ``device`` (default the CPU) is where the network runs; the random draws (data order, t, eps)
    come from the seeded CPU generator on every device, so only the arithmetic differs. Under
    torchrun each process trains a replica on its slice of every batch (:mod:`ddpm_lib.distributed`;
    the batch stays ``config.batch_size`` images, ``config.accum_steps`` splits each slice further);
    rank 0 alone writes; a stop (Ctrl-C, SIGTERM, the time budget) on any rank stops all at the same
    step; ``dist_timeout_s`` bounds how long a rank waits for the others.

    ``noise`` (the data's shape): each image's own eps, used in place of a fresh draw (reflow's pairs);
    ``init`` (a model or its state dict): the weights to start from instead of a fresh initialisation.
    Neither is part of the recipe a resume checks: resume a run with the same pairs and start.
    """
    _check_inputs(model_config, schedule, config, data, labels, noise)
    loss_fn = make_loss(schedule, model_config.prediction, config.min_snr_gamma)
    writer = out_dir is not None and distributed.from_env().is_main     # rank 0 alone writes, and locks
    with RunLock(out_dir) if writer else contextlib.nullcontext():
        if writer and not overwrite:
            check_run_folder(out_dir)
        run = _start(model_config, schedule, config, data, labels, noise, init, out_dir, device, dist_timeout_s)
        progress = progress and run.ranks.is_main
        if progress:
            print(f"numerics: {run.numerics.describe()}", flush=True)
        if resume:
            _resume(run)
        result = TrainResult(run.model, run.ema_model, schedule, run.step, run.seconds, run.history, False,
                             run.out_dir, run.numerics)
        bar = _progress_bar(config, run.step) if progress else None
        run.model.train()
        with _StopFlag() as stop:
            stopping = _loop(run, loss_fn, result, bar, callback, stop)
            if run.loss_count:
                run.history.append([run.step, run.loss_sum / run.loss_count, round(run.seconds, 2)])
            run.save()
            run.export(MODEL_FILE)
            result.interrupted = stopping or (stop.requested and not run.ranks.enabled)
        if bar is not None:
            bar.close()
        distributed.barrier(run.ranks)   # no rank leaves before rank 0 has written the final state
    result.step, result.seconds, result.history = run.step, run.seconds, run.history
    return result


def _loop(run: _Run, loss_fn, result: TrainResult, bar, callback, stop: _StopFlag) -> bool:
    """The steps of :func:`train`, until ``config.steps``, the time budget or a stop; returns whether it was a stop."""
    config = run.config
    snapshots_due = [m for m in config.snapshot_minutes if run.seconds < 60 * m]
    per_epoch, epoch, perm, stopping = len(run.data) // config.batch_size, None, None, False
    while run.step < config.steps and not config.out_of_time(run.seconds) and not stopping:
        t0 = clock()
        if epoch != run.step // per_epoch:
            epoch = run.step // per_epoch
            perm = _epoch_permutation(len(run.data), config.seed, epoch)
        x0, t, noise, y = _draw_batch(run, perm, loss_fn)
        for group in run.optimizer.param_groups:
            group["lr"] = config.lr_at(run.step, run.seconds)
        try:
            loss = train_step(run.net, loss_fn, run.optimizer, x0, t, noise, y, numerics=run.numerics,
                              accum_steps=config.accum_steps, grad_clip=config.grad_clip, ranks=run.ranks)
        except FloatingPointError as e:
            raise FloatingPointError(
                f"{e} at step {run.step + 1}; training stopped. The last good training state (if any) is left "
                f"untouched in {run.out_dir}. Lower the learning rate (now {config.lr}), keep gradient "
                "clipping on, or train in fp32 (--precision fp32), then resume.") from None
        ema_update(run.ema_model, run.model, ema_decay_at(run.step, config.ema_decay))
        run.step += 1
        # one clock and one stop decision for all ranks: the slowest rank's step time, any rank's request
        step_seconds, stop_requested = distributed.all_reduce([clock() - t0, float(stop.requested)],
                                                             run.ranks, op="max")
        run.seconds += step_seconds
        stopping = bool(stop_requested)
        _after_step(run, loss, result, bar, callback, snapshots_due)
    return stopping


def _progress_bar(config: TrainConfig, step: int):
    from tqdm import tqdm  # plain tqdm: works in terminals and headless notebook runs

    return tqdm(total=config.steps, initial=min(step, config.steps), desc="training", mininterval=2)
