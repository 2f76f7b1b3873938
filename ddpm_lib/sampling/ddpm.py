"""Algorithm 2 of Ho et al. (2020): ancestral sampling, one reverse step at a time.

One reverse step, :func:`p_sample`, computes

    x_{t-1} = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_theta(x_t, t)) + sigma_t z

with z ~ N(0, I) (z = 0 at the last step). The paper tries two choices of the
variance (section 3.2), selected here by ``variance``:

* ``"beta"``        -- sigma_t^2 = beta_t            (optimal for x_0 ~ N(0, I))
* ``"beta_tilde"``  -- sigma_t^2 = beta_tilde_t (Eq. 7, optimal for a single fixed x_0)
* ``"none"``        -- sigma_t = 0: the origin project's simplification, which drops
                       the noise term. It is *not* DDPM; the sampling chapter shows what it does.

``clip_x0=True`` does what the paper's released code does when it samples
(``clip_denoised``; diffusers calls it ``clip_sample``): it clips the prediction
x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_bar_t) to the data
range [-1, 1] and takes the posterior mean mu_tilde(x_t, x0_hat) of Eq. 7. Where
nothing is clipped this is the same mean as Eq. 11; where x0_hat overshoots, the
step is pulled back into range. It matters most where alpha_bar_t is tiny (the
first steps of a cosine schedule), where dividing by sqrt(alpha_bar_t) turns a
small error of eps_theta into a huge one.

``ddpm_sample(..., steps=K)`` runs Algorithm 2 on a *respaced* schedule (Nichol &
Dhariwal 2021, section 4): K of the T timesteps, tau_1 < ... < tau_K, with
alpha_bar kept at those steps and beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}},
so that the same network takes K larger steps.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..schedule import DiffusionSchedule, _extract
from ._loop import BatchContext, as_eps_model, run_batches
from .ddim import ddim_timesteps

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
    eps = as_eps_model(model, schedule)(x_t, t).to(x_t.dtype)   # a network predicting x0 or v, converted to eps
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


def respace(schedule: DiffusionSchedule, timesteps) -> DiffusionSchedule:
    """The schedule of K of the T timesteps (Nichol & Dhariwal 2021, section 4).

    ``timesteps``: increasing 0-based steps tau_1 < ... < tau_K of ``schedule``.
    The new schedule keeps alpha_bar at those steps, alpha_bar'_i = alpha_bar_{tau_i},
    so its betas are beta'_i = 1 - alpha_bar'_i / alpha_bar'_{i-1} (alpha_bar'_0 = 1).
    """
    tau = torch.as_tensor(timesteps, dtype=torch.long)
    if tau.dim() != 1 or len(tau) < 1 or bool((tau[1:] <= tau[:-1]).any()):
        raise ValueError("timesteps must be a non-empty increasing sequence of integers")
    if int(tau[0]) < 0 or int(tau[-1]) >= schedule.T:
        raise ValueError(f"timesteps must lie in [0, {schedule.T}), got {int(tau[0])}..{int(tau[-1])}")
    ab = schedule.alpha_bars[tau]
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return DiffusionSchedule(kind=f"{schedule.kind}, respaced to {len(tau)} steps", betas=1.0 - ab / ab_prev)


class _RespacedModel(nn.Module):
    """Calls ``model`` at the original timestep tau_i when a respaced sampler asks for step i."""

    def __init__(self, model: nn.Module, timesteps: torch.Tensor):
        super().__init__()
        self.model, self.timesteps = model, timesteps

    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.timesteps.to(i.device)[i])


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
    steps: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 500,
    record_every: int | None = None,
    progress: bool = False,
    precision: str = "auto",
    channels_last: bool | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    class_labels=None,
    guidance: float = 0.0,
    x_T: torch.Tensor | None = None,
):
    """Draw ``n`` samples with Algorithm 2 over all T steps of ``schedule`` (or ``steps`` of them).

    x_T ~ N(0, I); for t = T..1: x_{t-1} = p_sample(x_t, t); return x_0.

    Reproducible: all noise comes from one generator (``seed`` or ``generator``),
    drawn in a fixed order (per batch: x_T first, then z for each step), so the
    same seed and ``batch_size`` give the same images. ``clip_x0``: see the
    module docstring. ``steps=K < T``: Algorithm 2 on the respaced schedule of K
    evenly spaced timesteps (:func:`respace`). ``precision`` and
    ``channels_last``: see :func:`sampling_numerics` (by default the fastest for
    this machine, measured). ``class_labels`` and ``guidance``: a conditional
    model guided towards those classes (:mod:`ddpm_lib.guidance`).

    Returns a float tensor (n, C, H, W) in roughly [-1, 1] (not clipped). With
    ``record_every=k`` it returns ``(x0, trajectory)`` where ``trajectory`` is a
    list of ``(t, x_t)`` pairs every k steps (and at t = 0) of the first batch,
    for plotting.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VARIANCES)}")
    if steps is not None and not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be between 1 and T={schedule.T}, got {steps}")
    respaced = steps is not None and steps != schedule.T
    if respaced:
        tau = ddim_timesteps(schedule.T, steps)
        run_schedule = respace(schedule, tau)
    else:
        run_schedule = schedule
    trajectory = []

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        net = _RespacedModel(ctx.net, tau) if respaced else ctx.net
        b = x.shape[0]
        iterator = range(run_schedule.T - 1, -1, -1)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc=f"sampling {ctx.start + b}/{n}", leave=False)
        record = record_every is not None and ctx.start == 0
        if record:
            trajectory.append((run_schedule.T, x.cpu().clone()))
        for i in iterator:
            t = torch.full((b,), i, dtype=torch.long, device=ctx.device)
            z = ctx.randn()
            with ctx.numerics.autocast(ctx.device):
                x = p_sample(net, run_schedule, x, t, noise=z, variance=variance, clip_x0=clip_x0).float()
            if record and (i % record_every == 0):
                trajectory.append((i, x.cpu().clone()))
            if callback is not None:
                callback(i, x)
        return x

    x0 = run_batches(model, schedule, n, body, generator=generator, seed=seed, image_shape=image_shape,
                     device=device, batch_size=batch_size, precision=precision, channels_last=channels_last,
                     class_labels=class_labels, guidance=guidance, x_T=x_T)
    return (x0, trajectory) if record_every is not None else x0
