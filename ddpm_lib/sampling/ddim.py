"""DDIM (Song et al. 2021): the same network, a non-Markovian reverse process, fewer steps.

One step from timestep t to an earlier s (both 0-based, s = -1 meaning the clean image,
alpha_bar_{-1} = 1), Song et al. 2021, Eq. 12:

    x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_bar_t)
    sigma_t = eta * sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_s)   (Eq. 16)
    x_s     = sqrt(alpha_bar_s) x0_pred + sqrt(1 - alpha_bar_s - sigma_t^2) eps_theta + sigma_t z

(sigma_t is the standard deviation of the step, ``sigma`` in the code.) ``eta = 0`` is
deterministic (the probability-flow ODE, solved with one Euler step per interval in the
variables x / sqrt(alpha_bar) and rho = sqrt(1/alpha_bar - 1), as in the book's chapter 9);
``eta = 1`` over all T steps is Algorithm 2 with sigma_t^2 = beta_tilde_t.

With ``clip_x0``, x0_pred is clipped to [-1, 1] and eps is recomputed from the
clipped x0_pred, eps = (x_t - sqrt(alpha_bar_t) x0_pred) / sqrt(1 - alpha_bar_t), as
diffusers' ``DDIMScheduler.step`` does when asked with ``use_clipped_model_output=True``
(its default, False, keeps the unclipped eps): the step then lands on the point that the clipped
prediction and the noise it implies describe together. Keeping the unclipped eps
would add back, through the direction term, the very overshoot the clip removed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..schedule import DiffusionSchedule
from ._loop import BatchContext, check_run_options, run_batches


def ddim_default_steps(T: int) -> int:
    """The number of steps DDIM takes unless told: 50, or T if that is fewer."""
    return min(50, T)


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """An evenly spaced, increasing sub-sequence tau of [0, T) with ``steps`` elements (Song et al. 2021, section 4.2)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    return torch.linspace(0, T - 1, steps).round().long().unique()


def _increasing(timesteps, T: int) -> list[int]:
    tau = sorted({int(t) for t in timesteps})
    if not tau or tau[0] < 0 or tau[-1] >= T:
        raise ValueError(f"timesteps must be a non-empty set of integers in [0, {T})")
    return tau


class DDIMStep(NamedTuple):
    prev_sample: torch.Tensor        # x_s
    pred_original_sample: torch.Tensor   # x0_pred (clipped if asked)
    pred_epsilon: torch.Tensor       # the eps the step used (recomputed after a clip)


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: float,
    alpha_bar_s: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> DDIMStep:
    """One DDIM step x_t -> x_s given eps_theta(x_t, t) (Song et al. 2021, Eq. 12; see the module docstring).

    ``alpha_bar_s`` = 1 for the last step (to the clean image). ``noise`` is z
    (needed when ``eta > 0``). Same role as diffusers' ``DDIMScheduler.step``.
    """
    x0_pred = (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    if clip_x0:
        x0_pred = x0_pred.clamp(-1.0, 1.0)
        eps = (x_t - math.sqrt(alpha_bar_t) * x0_pred) / math.sqrt(1 - alpha_bar_t)
    sigma = eta * math.sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s))
    x_s = math.sqrt(alpha_bar_s) * x0_pred + math.sqrt(max(0.0, 1 - alpha_bar_s - sigma**2)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs noise z for the step")
        x_s = x_s + sigma * noise
    return DDIMStep(x_s, x0_pred, eps)


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    steps: int | None = None,
    eta: float = 0.0,
    *,
    timesteps=None,
    clip_x0: bool = False,
    **run,
) -> torch.Tensor:
    """DDIM sampling over ``steps`` of the T timesteps (Song et al. 2021, Eq. 12), see :func:`ddim_step`.

    ``steps`` defaults to :func:`ddim_default_steps` (50). ``timesteps`` (optional): the
    exact 0-based timesteps to visit (any order; default :func:`ddim_timesteps`). ``eta``,
    ``clip_x0``: see the module docstring. ``run``: the run options (seed, batch_size,
    numerics, class labels, x_T, progress, callback, ...), documented once in
    :func:`~ddpm_lib.sampling.run_batches`. Random draws per batch: x_T, then one z per
    step (drawn even when ``eta = 0``, so the same seed gives the same x_T for every eta).
    """
    check_run_options(run, "ddim_sample")
    if timesteps is not None:
        tau = _increasing(timesteps, schedule.T)
    else:
        tau = ddim_timesteps(schedule.T, ddim_default_steps(schedule.T) if steps is None else steps).tolist()
    ab = schedule.alpha_bars

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        for i in ctx.countdown(len(tau), x):
            eps = ctx.eps(x, tau[i])
            z = ctx.randn()
            x = ddim_step(x, eps, float(ab[tau[i]]), float(ab[tau[i - 1]]) if i > 0 else 1.0, eta, z, clip_x0).prev_sample
            ctx.report(i, x)
        return x

    return run_batches(model, schedule, n, body, **run)


@torch.no_grad()
def ddim_invert(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x0: torch.Tensor,
    steps: int = 50,
    **run,
) -> torch.Tensor:
    """Encode images x_0 (n, C, H, W) in [-1, 1] into x_T with the deterministic DDIM step run forwards.

    Each step from s to the next, larger t uses eps_theta(x_s, s) in place of the
    unknown eps_theta(x_t, t) (Song et al. 2021, section 4.3; Dhariwal & Nichol
    2021, appendix F):  x_t = sqrt(alpha_bar_t) x0_pred + sqrt(1 - alpha_bar_t) eps.
    :func:`ddim_sample` with the same ``steps`` and ``eta = 0`` decodes x_T back
    to (nearly) x_0; the small mismatch is the price of that substitution.
    fp32 (the run options' default) is where the round trip is most faithful. ``run``: the run options of
    :func:`~ddpm_lib.sampling.run_batches` but ``seed``, ``generator``, ``x_T`` and ``image_shape``
    (nothing is drawn; x_0 is the start); the callback sees the states from x_0 (state 0) up to x_T.
    """
    check_run_options(run, "ddim_invert")
    tau = ddim_timesteps(schedule.T, steps).tolist()
    ab = schedule.alpha_bars
    x0 = x0.float()

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        ab_s = 1.0                       # start at the clean image
        ctx.report(0, x)
        for i, t in enumerate(tau):
            eps = ctx.eps(x, tau[max(i - 1, 0)])   # at the current point's timestep (tau_1 for the clean image)
            ab_t = float(ab[t])
            x0_pred = (x - math.sqrt(1 - ab_s) * eps) / math.sqrt(ab_s)
            x = math.sqrt(ab_t) * x0_pred + math.sqrt(1 - ab_t) * eps
            ab_s = ab_t
            ctx.report(i + 1, x)
        return x

    return run_batches(model, schedule, len(x0), body, image_shape=tuple(x0.shape[1:]), x_T=x0, **run)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of the same shape (alpha in [0, 1]).

    Gaussian noise in high dimension lives near a sphere of radius sqrt(D);
    the straight line between two such points passes well inside it (its middle
    has norm ~ sqrt(D / 2)), where the sampler never saw an x_T. Slerp keeps
    the norm (Shoemake 1985; used for DDIM latents by Song et al. 2021, section 5.3).
    """
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(theta) < 1e-6:
        return ((1 - alpha) * a + alpha * b)
    out = (torch.sin((1 - alpha) * theta) * a_flat + torch.sin(alpha * theta) * b_flat) / torch.sin(theta)
    return out.reshape(a.shape).to(a.dtype)
