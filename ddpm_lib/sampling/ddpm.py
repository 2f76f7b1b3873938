"""Algorithm 2 of Ho et al. (2020): ancestral sampling, one reverse step at a time.

One reverse step, :func:`p_step` (given eps_theta(x_t, t); :func:`p_sample` calls the network first), computes

    x_{t-1} = 1/sqrt(alpha_t) * (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_theta(x_t, t)) + sigma_t z

with z ~ N(0, I) (z = 0 at the last step). The paper tries two choices of the
variance (section 3.2), selected here by ``variance``:

* ``"beta"``        -- sigma_t^2 = beta_t            (optimal for x_0 ~ N(0, I))
* ``"beta_tilde"``  -- sigma_t^2 = beta_tilde_t (Eq. 7, optimal for a single fixed x_0)
* ``"none"``        -- sigma_t = 0: a tempting simplification (the first design this book grew
                       from made it) that drops the noise term. It is *not* DDPM; the sampling
                       chapter shows what it does.

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

import torch
from torch import nn

from ..schedule import DiffusionSchedule, _extract
from ._loop import BatchContext, as_eps_model, check_run_options, run_batches
from .ddim import ddim_timesteps

#: the choices of sigma_t^2 (the module docstring)
VARIANCES = ("beta", "beta_tilde", "none")


def _sigma(schedule: DiffusionSchedule, t: torch.Tensor, x: torch.Tensor, variance: str) -> torch.Tensor:
    if variance == "beta":
        return torch.sqrt(_extract(schedule.betas, t, x))
    if variance == "beta_tilde":
        return torch.sqrt(_extract(schedule.posterior_variance, t, x))
    if variance == "none":
        return torch.zeros_like(_extract(schedule.betas, t, x))
    raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VARIANCES)}")


def _mu(x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, schedule: DiffusionSchedule,
        clip_x0: bool) -> torch.Tensor:
    """mu_theta(x_t, t) from eps = eps_theta(x_t, t): Eq. 11; with ``clip_x0``, Eq. 7's mu_tilde(x_t, clip(x0_hat))."""
    eps = eps.to(x_t.dtype)
    if clip_x0:
        x0_hat = schedule.predict_x0(x_t, t, eps).clamp(-1.0, 1.0)
        return schedule.q_posterior(x0_hat, x_t, t)[0]
    eps_coef = _extract(schedule.betas / schedule.sqrt_one_minus_alpha_bars, t, x_t)  # float64, then cast
    return (x_t - eps_coef * eps) * _extract(1.0 / torch.sqrt(schedule.alphas), t, x_t)


def p_mean(
    model: nn.Module, schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor, clip_x0: bool = False
) -> torch.Tensor:
    """mu_theta(x_t, t) = 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-alpha_bar_t) eps_theta(x_t, t)) (Eq. 11).

    With ``clip_x0``: mu_tilde(x_t, clip(x0_hat, -1, 1)) (Eq. 7), see the module docstring.
    """
    t = schedule.check_timesteps(t, batch=x_t.shape[0])
    eps = as_eps_model(model, schedule)(x_t, t)   # a network predicting x0 or v, converted to eps
    return _mu(x_t, eps, t, schedule, clip_x0)


def p_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    schedule: DiffusionSchedule,
    variance: str = "beta",
    noise: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} given eps = eps_theta(x_t, t): line 4 of Algorithm 2.

        x_{t-1} = mu_theta(x_t, t) + sigma_t z,
        mu_theta = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps)                          (Eq. 11)

    or, with ``clip_x0``, mu_tilde(x_t, clip(x0_hat, -1, 1)) of Eq. 7 (see the module docstring).
    ``t`` holds zero-indexed timesteps of shape (B,); where ``t == 0`` (the paper's t = 1) no noise
    is added. ``variance`` picks sigma_t^2 (:data:`VARIANCES`); ``noise`` is z (default: a fresh
    ``torch.randn_like`` draw). Pure: it takes the network's output, not the network, like
    :func:`~ddpm_lib.sampling.ddim_step`; same role as diffusers' ``DDPMScheduler.step``.
    """
    t = schedule.check_timesteps(t, batch=x_t.shape[0])
    if noise is None:
        noise = torch.randn_like(x_t)
    mean = _mu(x_t, eps, t, schedule, clip_x0)
    sigma = _sigma(schedule, t, x_t, variance)
    nonzero = (t > 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.device)
    return mean + nonzero * sigma * noise


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
    """One reverse step x_t -> x_{t-1} with the network: eps_theta(x_t, t), then :func:`p_step` (Algorithm 2, line 4).

    ``model`` is called as ``model(x_t, t)`` (a network predicting x0 or v is converted to eps).
    ``noise``, ``variance``, ``clip_x0``: as in :func:`p_step`.
    """
    t = schedule.check_timesteps(t, batch=x_t.shape[0])
    if noise is None:
        noise = torch.randn_like(x_t)
    eps = as_eps_model(model, schedule)(x_t, t)
    return p_step(x_t, eps, t, schedule, variance, noise, clip_x0)


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


@torch.no_grad()
def ddpm_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    n: int,
    *,
    variance: str = "beta",
    clip_x0: bool = False,
    steps: int | None = None,
    **run,
) -> torch.Tensor:
    """Draw ``n`` samples with Algorithm 2 over all T steps of ``schedule`` (or ``steps`` of them).

    x_T ~ N(0, I); for t = T..1: z ~ N(0, I) (z = 0 at t = 1), x_{t-1} = p_step(x_t, eps_theta(x_t, t), t, z);
    return x_0.

    ``variance`` (:data:`VARIANCES`) and ``clip_x0``: see the module docstring. ``steps=K < T``:
    Algorithm 2 on the respaced schedule of K evenly spaced timesteps (:func:`respace`).
    ``run``: the run options (seed, batch_size, numerics, class labels, x_T, progress, callback, ...),
    documented once in :func:`~ddpm_lib.sampling.run_batches`; random draws per batch: x_T, then z
    for each step. Returns a float tensor (n, C, H, W) in roughly [-1, 1] (not clipped). For the
    intermediate x_t, pass ``callback`` (:func:`~ddpm_lib.sampling.record_trajectory`).
    """
    check_run_options(run, "ddpm_sample")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}: expected one of {', '.join(VARIANCES)}")
    if steps is not None and not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must be between 1 and T={schedule.T}, got {steps}")
    respaced = steps is not None and steps != schedule.T
    tau = ddim_timesteps(schedule.T, steps) if respaced else None
    run_schedule = respace(schedule, tau) if respaced else schedule

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        for i in ctx.countdown(run_schedule.T, x):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=ctx.device)
            z = ctx.randn()
            eps = ctx.eps(x, int(tau[i]) if respaced else i)      # the network, at the original timestep tau_i
            x = p_step(x, eps, t, run_schedule, variance, z, clip_x0)
            ctx.report(i, x)
        return x

    return run_batches(model, schedule, n, body, **run)
