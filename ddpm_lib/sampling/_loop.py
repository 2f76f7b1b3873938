"""The part every sampler shares: batches, the seeded generator, eval mode, numerics, class labels.

A sampler is a function ``body(ctx, x_T) -> x_0`` for one batch; :func:`run_batches`
draws x_T for each batch (or takes the caller's), builds the network the body
calls (the model itself or, with class labels, a
:class:`~ddpm_lib.guidance.ClassifierFreeGuidance` wrapper of it), runs the body
under the chosen numerics and concatenates the results on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ..guidance import ClassifierFreeGuidance, check_class_labels
from ..numerics import Numerics, choose_numerics
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


def sampling_numerics(
    model: nn.Module,
    device: torch.device | str,
    batch_size: int,
    precision: str = "auto",
    channels_last: bool | None = None,
    image_shape: tuple | None = None,
) -> Numerics:
    """The precision and memory format the samplers run ``model`` with.

    ``precision="auto"`` and ``channels_last=None`` (the defaults) pick the
    fastest variant for this model, device and batch size, measured once and
    cached (:func:`ddpm_lib.numerics.choose_numerics`); ``"fp32"``/``"bf16"``
    and ``True``/``False`` force a choice. bf16 autocast draws images that
    differ from fp32's by about 0.002 per pixel (``bench/sample_throughput.py
    --agreement``); forced fp32 is what the tests that compare exact values use.
    """
    return choose_numerics(model, device=device, purpose="sample", batch_size=batch_size, precision=precision,
                           channels_last=channels_last, image_shape=image_shape)


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

    def output(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The network's output in float32 for the whole batch at the integer timestep ``t``."""
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=self.device)
        with self.numerics.autocast(self.device):
            return self.net(x, tt).float()

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """eps_theta(x, t) in float32 (``net`` is the model seen as an eps-predictor)."""
        return self.output(x, t)

    def randn(self) -> torch.Tensor:
        """A fresh N(0, I) draw shaped like the batch, from the seeded CPU generator, on the device."""
        return torch.randn(self.shape, generator=self.generator).to(self.device)


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
    precision: str = "auto",
    channels_last: bool | None = None,
    class_labels=None,
    guidance: float = 0.0,
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n`` images in batches of ``batch_size`` with ``body``; returns (n, C, H, W) on the CPU.

    Random draws come from one generator (``seed`` or ``generator``) in a fixed
    order: per batch, x_T first (unless ``x_T`` is given), then whatever the body
    draws. ``class_labels`` (an int for all images, or one per image) and
    ``guidance`` = w make every call of the network a classifier-free guided one
    (:mod:`ddpm_lib.guidance`).
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
    numerics = sampling_numerics(model, device, min(batch_size, n), precision, channels_last, shape)
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
                ctx = BatchContext(net, numerics, device, generator, (b, *shape), start)
                outputs.append(body(ctx, x).cpu().contiguous())
    finally:
        model.train(was_training)
    return torch.cat(outputs)
