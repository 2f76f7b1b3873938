"""The part every sampler shares: batches, the seeded generator, eval mode, numerics, class labels.

A sampler is a function ``body(ctx, x_T) -> x_0`` for one batch; :func:`run_batches`
draws x_T for each batch (or takes the caller's), builds the network the body
calls (the model itself or, with class labels, a
:class:`~ddpm_lib.guidance.ClassifierFreeGuidance` wrapper of it), runs the body
under the given numerics and concatenates the results on the CPU. Its keyword
arguments, the *run options* (:data:`RUN_OPTIONS`), are documented there once;
every sampler takes them as ``**run`` and passes them through.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import torch
from torch import nn

from ..guidance import ClassifierFreeGuidance, check_class_labels
from ..numerics import Numerics
from ..schedule import DiffusionSchedule


class EpsFromPrediction(nn.Module):
    """A network that predicts x0 or v, seen as one that predicts eps (what every sampler here calls).

    ``forward(x_t, t[, y])`` returns :meth:`DiffusionSchedule.eps_from_prediction` of
    the wrapped network's output; ``config`` is the wrapped network's with
    ``prediction="eps"``, so wrapping twice is a no-op (:func:`as_eps_model`).
    """

    def __init__(self, model: nn.Module, schedule: DiffusionSchedule):
        super().__init__()
        self.model, self.schedule = model, schedule
        self.config = replace(model.config, prediction="eps")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self.model(x, t) if y is None else self.model(x, t, y)
        return self.schedule.eps_from_prediction(out.float(), x.float(), t, self.model.config.prediction).to(out.dtype)


def as_eps_model(model: nn.Module, schedule) -> nn.Module:
    """``model`` itself if it predicts eps (or declares nothing), else an :class:`EpsFromPrediction` view of it."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "prediction", "eps") == "eps" or not isinstance(schedule, DiffusionSchedule):
        return model
    return EpsFromPrediction(model, schedule)


@dataclass
class BatchContext:
    """What a sampler's body needs for one batch."""

    net: nn.Module                    # called as net(x, t): the model (seen as an eps-predictor, as_eps_model), or
                                      # the model guided towards this batch's labels
    numerics: Numerics
    device: torch.device
    generator: torch.Generator        # every random draw of the body comes from here, in a fixed order
    shape: tuple                      # (B, C, H, W) of this batch
    start: int                        # index of the batch's first image among the n
    n: int = 0                        # images in the whole draw (for the progress bar)
    progress: bool = False
    callback: Callable[[int, torch.Tensor], None] | None = None

    def output(self, x: torch.Tensor, t: int | float) -> torch.Tensor:
        """The network's output in float32 for the whole batch at timestep ``t``: an integer step, or a Python
        float for a point between steps (the network's time, in [0, T - 1])."""
        if isinstance(t, float):
            tt = torch.full((x.shape[0],), t, dtype=torch.float32, device=self.device)
        else:
            tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=self.device)
        with self.numerics.autocast(self.device):
            return self.net(x, tt).float()

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """eps_theta(x, t) in float32 (``net`` is the model seen as an eps-predictor)."""
        return self.output(x, t)

    def randn(self) -> torch.Tensor:
        """A fresh N(0, I) draw shaped like the batch, from the seeded CPU generator, on the device."""
        return torch.randn(self.shape, generator=self.generator).to(self.device)

    def report(self, i: int, x: torch.Tensor) -> None:
        """Hand the chain's state i to the run's ``callback`` (see :func:`run_batches`), if there is one."""
        if self.callback is not None:
            self.callback(i, x)

    def countdown(self, k: int, x_T: torch.Tensor) -> Iterable[int]:
        """The loop of a k-step sampler: i = k - 1, ..., 0, one step each from the chain's state i + 1 to state i.

        Reports x_T as state k first; the body reports each new state (``report(i, x)``). With ``progress``,
        a progress bar.
        """
        self.report(k, x_T)
        steps: Iterable[int] = range(k - 1, -1, -1)
        if self.progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc=f"sampling {self.start + self.shape[0]}/{self.n}", leave=False)
        return steps


def image_shape_of(model: nn.Module, schedule: DiffusionSchedule, image_shape: tuple | None) -> tuple:
    cfg = getattr(model, "config", None)
    if image_shape is None:
        if cfg is None:
            raise ValueError("pass image_shape=(C, H, W): the model has no config to read it from")
        image_shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    if cfg is not None and cfg.num_timesteps != schedule.T:
        raise ValueError(
            f"the model was built for T={cfg.num_timesteps} timesteps but the schedule has T={schedule.T}; "
            "sample with the schedule the model was trained with (load_checkpoint returns it)"
        )
    return tuple(image_shape)


def class_labels_for(model: nn.Module, n: int, class_labels, guidance: float) -> torch.Tensor | None:
    """The n labels to draw (one class for all, or one per image), or None for an unconditional draw."""
    if class_labels is None:
        if guidance:
            raise ValueError(f"a guidance weight ({guidance}) needs class labels to guide towards: pass class_labels")
        return None
    labels = check_class_labels(model, [class_labels] if isinstance(class_labels, int) else class_labels)
    if len(labels) == 1 and n > 1:
        labels = labels.expand(n)
    if len(labels) != n:
        raise ValueError(f"class_labels must hold one label or one per image (n={n}), got {len(labels)}")
    return labels


@torch.no_grad()
def run_batches(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    body: Callable[[BatchContext, torch.Tensor], torch.Tensor],
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    image_shape: tuple | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    numerics: Numerics | None = None,
    class_labels=None,
    guidance: float = 0.0,
    x_T: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Draw ``n`` images in batches of ``batch_size`` with ``body``; returns (n, C, H, W) on the CPU.

    Its keyword arguments are the *run options*: every sampler of :mod:`ddpm_lib.sampling` takes them
    (as ``**run``) and passes them here unchanged; this is the one place they are documented.

    * ``seed`` or ``generator``: every random draw comes from this one generator (``seed=None``: seed 0),
      in a fixed order: per batch, x_T first (unless ``x_T`` is given), then whatever the sampler draws
      (Algorithm 2 and DDIM: one z per step). The same seed and ``batch_size`` give the same images.
    * ``x_T``: start from these (n, C, H, W) instead of drawing x_T ~ N(0, I) (e.g. from ``ddim_invert``).
    * ``image_shape``: (C, H, W), for a network without a ``config`` to read it from.
    * ``device``: where the network runs (default: where its parameters are).
    * ``batch_size``: images per batch; it fixes the order of the random draws, like the seed.
    * ``numerics``: the precision and memory format of the network (:class:`~ddpm_lib.numerics.Numerics`;
      default fp32, contiguous: the arithmetic the equations describe). The fastest pair for a machine
      is measured by :func:`ddpm_lib.numerics.choose_numerics` (the command line and each chapter's
      setup cell call it once and pass the answer here); bf16 autocast draws images that differ from
      fp32's by about 0.002 per pixel (``bench/sample_throughput.py --agreement``).
    * ``class_labels`` (an int for all images, or one per image) and ``guidance`` = w: every call of the
      network is a classifier-free guided one (:mod:`ddpm_lib.guidance`).
    * ``progress``: a progress bar per batch.
    * ``callback(i, x_i)``: called with every state of the chain of every batch: x_T as state i = K (the
      sampler's number of steps) first, then the state after each step, down to the image, state 0. For
      Algorithm 2 over all T steps, ``i`` is the paper's index of x_i. ``x_i`` is the batch's float32
      tensor on the device; copy it to keep it (:func:`record_trajectory` does).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    shape = image_shape_of(model, schedule, image_shape)
    labels = class_labels_for(model, n, class_labels, guidance)
    if x_T is not None and tuple(x_T.shape) != (n, *shape):
        raise ValueError(f"x_T must have shape {(n, *shape)}, got {tuple(x_T.shape)}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    numerics = numerics if numerics is not None else Numerics()
    eps_model = as_eps_model(model, schedule)      # samplers call an eps-predictor, whatever the network predicts
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with numerics.applied_to(model):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x = torch.randn((b, *shape), generator=generator) if x_T is None else x_T[start:start + b].float()
                x = x.to(device).contiguous(memory_format=numerics.memory_format)
                net = eps_model if labels is None else ClassifierFreeGuidance(eps_model, labels[start:start + b], guidance)
                ctx = BatchContext(net, numerics, device, generator, (b, *shape), start, n, progress, callback)
                outputs.append(body(ctx, x).cpu().contiguous())
    finally:
        model.train(was_training)
    return torch.cat(outputs)


#: the run options (the keyword arguments of :func:`run_batches`), which every sampler passes through, and
#: their defaults
RUN_DEFAULTS: dict = {name: p.default for name, p in inspect.signature(run_batches).parameters.items()
                      if p.kind is p.KEYWORD_ONLY}
RUN_OPTIONS: tuple[str, ...] = tuple(RUN_DEFAULTS)


def check_run_options(run: dict, who: str) -> dict:
    """``run`` itself if it holds only run options; else a TypeError that names what ``who`` takes."""
    unknown = [k for k in run if k not in RUN_OPTIONS]
    if unknown:
        hint = ("; for the states of the chain, pass callback=record_trajectory(k)[0]"
                if "record_every" in unknown else "")
        raise TypeError(f"{who}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}: besides its "
                        f"own options it takes the run options {', '.join(RUN_OPTIONS)} (see run_batches){hint}")
    return run


def record_trajectory(every: int) -> tuple[Callable[[int, torch.Tensor], None], list]:
    """A ``callback`` for any sampler that keeps states of the chain of the first batch, and the list it fills.

    ``record, trajectory = record_trajectory(k)``; after ``ddpm_sample(..., callback=record)``,
    ``trajectory`` holds ``(i, x_i)`` pairs on the CPU: (K, x_T) first, then every state whose index i is a
    multiple of ``k``, down to (0, x_0). For plotting the reverse chain.
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    trajectory: list[tuple[int, torch.Tensor]] = []
    start, done = None, False                          # the index of the chain's first state; the first batch ended

    def record(i: int, x: torch.Tensor) -> None:
        nonlocal start, done
        if start is None:
            start = i
        elif i == start:                               # the chain starts again: the next batch, not recorded
            done = True
        if not done and (i == start or i % every == 0):
            trajectory.append((i, x.cpu().clone()))

    return record, trajectory
