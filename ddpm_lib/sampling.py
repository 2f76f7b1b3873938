"""Reverse process: sampling new images (Ho et al. 2020, Algorithm 2).

One reverse step, :func:`p_sample`, computes

    x_{t-1} = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_theta(x_t, t)) + sigma_t z

with z ~ N(0, I) (z = 0 at the last step). The paper tries two choices of the
variance (section 3.2), selected here by ``variance``:

* ``"beta"``        -- sigma_t^2 = beta_t            (optimal for x_0 ~ N(0, I))
* ``"beta_tilde"``  -- sigma_t^2 = beta_tilde_t (Eq. 7, optimal for a single fixed x_0)
* ``"none"``        -- sigma_t = 0: the origin project's simplification, which drops
                       the noise term. It is *not* DDPM; chapter 5 shows what it does.

``clip_x0=True`` does what the paper's released code does when it samples
(``clip_denoised``; diffusers calls it ``clip_sample``): it clips the prediction
x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t) to the data
range [-1, 1] and takes the posterior mean mu_tilde(x_t, x0_hat) of Eq. 7. Where
nothing is clipped this is the same mean as Eq. 11; where x0_hat overshoots, the
step is pulled back into range. It matters most where alpha_bar_t is tiny (the
first steps of a cosine schedule), where dividing by sqrt(alpha_bar_t) turns a
small error of eps_theta into a huge one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .numerics import Numerics, choose_numerics
from .schedule import DiffusionSchedule, _extract

VARIANCES = ("beta", "beta_tilde", "none")


def _sigma(schedule: DiffusionSchedule, t: torch.Tensor, x: torch.Tensor, variance: str) -> torch.Tensor:
    if variance == "beta":
        return torch.sqrt(_extract(schedule.betas, t, x))
    if variance == "beta_tilde":
        return torch.sqrt(_extract(schedule.posterior_variance, t, x))
    if variance == "none":
        return torch.zeros_like(_extract(schedule.betas, t, x))
    raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VARIANCES)}")


def p_mean(
    model: nn.Module, schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
) -> torch.Tensor:
    """mu_theta(x_t, t) = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-alpha_bar_t) eps_theta(x_t, t)) (Eq. 11).

    With ``clip_x0``: mu_tilde(x_t, clip(x0_hat, -1, 1)) (Eq. 7), see the module docstring.
    """
    t = schedule.check_timesteps(t, batch=x_t.shape[0])
    eps = model(x_t, t).to(x_t.dtype)
    if clip_x0:
        x0_hat = schedule.predict_x0(x_t, t, eps).clamp(-1.0, 1.0)
        return schedule.q_posterior(x0_hat, x_t, t)[0]
    eps_coef = _extract(schedule.betas / schedule.sqrt_one_minus_alpha_bars, t, x_t)  # float64, then cast
    return (x_t - eps_coef * eps) * _extract(1.0 / torch.sqrt(schedule.alphas), t, x_t)


@torch.no_grad()
def p_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    variance: str = "beta",
    clip_x0: bool = False,
) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1}: line 4 of Algorithm 2.

    ``t`` holds zero-indexed timesteps of shape (B,); where ``t == 0`` (the
    paper's t = 1) no noise is added. ``noise`` is z; pass it to make the step
    deterministic. ``clip_x0``: see the module docstring. Same role as
    diffusers' ``scheduler.step``.
    """
    t = schedule.check_timesteps(t, batch=x_t.shape[0])
    if noise is None:
        noise = torch.randn_like(x_t)
    mean = p_mean(model, schedule, x_t, t, clip_x0)
    sigma = _sigma(schedule, t, x_t, variance)
    nonzero = (t > 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.device)
    return mean + nonzero * sigma * noise


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


@torch.no_grad()
def ddpm_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    variance: str = "beta",
    clip_x0: bool = False,
    image_shape: tuple[int, int, int] | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    record_every: int | None = None,
    progress: bool = False,
    precision: str = "auto",
    channels_last: bool | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
):
    """Draw ``n`` samples with Algorithm 2 over all T steps of ``schedule``.

    x_T ~ N(0, I); for t = T..1: x_{t-1} = p_sample(x_t, t); return x_0.

    Reproducible: all noise comes from one generator (``seed`` or ``generator``),
    drawn in a fixed order (per batch: x_T first, then z for each step), so the
    same seed and ``batch_size`` give the same images. ``clip_x0``: see the
    module docstring. ``precision`` and ``channels_last``: see
    :func:`sampling_numerics` (by default the fastest for this machine, measured).

    Returns a float tensor (n, C, H, W) in roughly [-1, 1] (not clipped). With
    ``record_every=k`` it returns ``(x0, trajectory)`` where ``trajectory`` is a
    list of ``(t, x_t)`` pairs every k steps (and at t = 0), for plotting.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VARIANCES)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
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
    if device is None:
        device = next(model.parameters()).device
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    numerics = sampling_numerics(model, device, min(batch_size, n), precision, channels_last, image_shape)
    was_training = model.training
    model.eval()

    outputs, trajectory = [], []
    steps = range(schedule.T - 1, -1, -1)
    try:
        with numerics.applied_to(model):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x = torch.randn((b, *image_shape), generator=generator).to(device)
                x = x.contiguous(memory_format=numerics.memory_format)
                iterator = steps
                if progress:
                    from tqdm import tqdm

                    iterator = tqdm(steps, desc=f"sampling {start + b}/{n}", leave=False)
                record = record_every is not None and start == 0
                if record:
                    trajectory.append((schedule.T, x.cpu().clone()))
                for i in iterator:
                    t = torch.full((b,), i, dtype=torch.long, device=device)
                    z = torch.randn((b, *image_shape), generator=generator).to(device)
                    with numerics.autocast(device):
                        x = p_sample(model, schedule, x, t, noise=z, variance=variance, clip_x0=clip_x0).float()
                    if record and (i % record_every == 0):
                        trajectory.append((i, x.cpu().clone()))
                    if callback is not None:
                        callback(i, x)
                outputs.append(x.cpu().contiguous())
    finally:
        model.train(was_training)
    x0 = torch.cat(outputs)
    return (x0, trajectory) if record_every is not None else x0


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """An evenly spaced, increasing sub-sequence tau of [0, T) with ``steps`` elements (Song et al. 2021, section 4.2)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    return torch.linspace(0, T - 1, steps).round().long().unique()


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    steps: int = 50,
    eta: float = 0.0,
    *,
    clip_x0: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    precision: str = "auto",
    channels_last: bool | None = None,
) -> torch.Tensor:
    """DDIM sampling over ``steps`` of the T timesteps (Song et al. 2021, Eq. 12).

    x_{tau_{i-1}} = sqrt(alpha_bar_{tau_{i-1}}) x0_pred
                    + sqrt(1 - alpha_bar_{tau_{i-1}} - sigma^2) eps_theta + sigma z,
    x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t),
    sigma = eta sqrt((1 - alpha_bar_{tau_{i-1}}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{tau_{i-1}}).
    ``eta = 0`` is the deterministic DDIM sampler; ``eta = 1`` with all T steps is DDPM with sigma_t^2 = beta_tilde_t.
    ``clip_x0`` clips x0_pred to [-1, 1] before it is used (eps_theta is kept as predicted).
    ``precision``, ``channels_last``: see :func:`sampling_numerics`.
    """
    cfg = model.config
    if cfg.num_timesteps != schedule.T:
        raise ValueError(f"the model was built for T={cfg.num_timesteps} timesteps but the schedule has T={schedule.T}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    tau = ddim_timesteps(schedule.T, steps).tolist()
    ab = schedule.alpha_bars
    shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    device = device or next(model.parameters()).device
    generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)
    numerics = sampling_numerics(model, device, min(batch_size, n), precision, channels_last)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with numerics.applied_to(model):
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                x = torch.randn((b, *shape), generator=generator).to(device)
                x = x.contiguous(memory_format=numerics.memory_format)
                for i in range(len(tau) - 1, -1, -1):
                    t_now = tau[i]
                    ab_t = float(ab[t_now])
                    ab_prev = float(ab[tau[i - 1]]) if i > 0 else 1.0
                    t = torch.full((b,), t_now, dtype=torch.long, device=device)
                    with numerics.autocast(device):
                        eps = model(x, t).float()
                    x0_pred = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
                    if clip_x0:
                        x0_pred = x0_pred.clamp(-1.0, 1.0)
                    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
                    z = torch.randn((b, *shape), generator=generator).to(device)
                    x = math.sqrt(ab_prev) * x0_pred + math.sqrt(max(0.0, 1 - ab_prev - sigma**2)) * eps + sigma * z
                outputs.append(x.cpu().contiguous())
    finally:
        model.train(was_training)
    return torch.cat(outputs)
