"""The exponential moving average (EMA) of the weights, and the BatchNorm statistics it needs.

DDPM samples with an EMA of the training weights (Ho et al. 2020, appendix B: decay 0.9999);
:func:`ddpm_lib.training.train` updates it after every step with :func:`ema_update` at the
decay :func:`ema_decay_at` gives. Averaged weights need their own BatchNorm statistics
(:func:`recalibrate_batchnorm`, "precise BN"), which chapter 11 shows.
"""

from __future__ import annotations

import torch
from torch import nn

from .schedule import DiffusionSchedule


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
            x_t = schedule.q_sample(x0, t, noise)   # cold diffusion: D(x_0, t), its forward process's sample
            model(x_t.to(device), t.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
