"""Reverse process: drawing new images with a trained eps_theta.

* :mod:`.ddpm` -- Algorithm 2 of Ho et al. (2020), ancestral sampling (``p_sample``,
  ``ddpm_sample``), also on a respaced schedule;
* :mod:`.ddim` -- DDIM (Song et al. 2021): ``ddim_step``, ``ddim_sample``, inversion;
* :mod:`.dpm_solver` -- DPM-Solver++(2M) and its SDE variant (Lu et al. 2022);
* :mod:`._loop` -- what they share: batches, seeds, numerics, class labels.

:func:`sample` picks one by name (the CLI's ``--sampler``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..schedule import DiffusionSchedule
from ._loop import BatchContext, EpsFromPrediction, as_eps_model, run_batches, sampling_numerics
from .ddim import DDIMStep, ddim_invert, ddim_sample, ddim_step, ddim_timesteps, slerp
from .ddpm import VARIANCES, ddpm_sample, p_mean, p_sample, respace
from .dpm_solver import dpm_solver_pp_step, dpm_solver_sample, dpm_solver_timesteps

#: the samplers :func:`sample` and the CLI know, with what ``steps`` means for each
SAMPLERS = {
    "ddpm": "Algorithm 2 (Ho et al. 2020); steps < T runs it on a respaced schedule (Nichol & Dhariwal 2021)",
    "ddim": "DDIM (Song et al. 2021), eta = 0 by default: deterministic",
    "dpmpp": "DPM-Solver++(2M) (Lu et al. 2022): second-order multistep ODE solver",
    "dpmpp-sde": "SDE-DPM-Solver++(2M) (Lu et al. 2022): its stochastic variant",
}


def sample(model: nn.Module, schedule: DiffusionSchedule, n: int, sampler: str = "ddpm", steps: int | None = None,
           **kwargs) -> torch.Tensor:
    """Draw ``n`` images with the sampler called ``sampler`` (a key of :data:`SAMPLERS`) in ``steps`` network calls.

    ``steps`` defaults to T for ``ddpm``, 50 for ``ddim`` and 20 for the DPM-Solvers; ``kwargs`` go to the sampler
    (``seed``, ``batch_size``, ``class_labels``, ``guidance``, ``eta`` for ddim, ``variance`` for ddpm, ...).
    """
    if sampler == "ddpm":
        return ddpm_sample(model, schedule, n, steps=steps, **kwargs)
    if sampler == "ddim":
        return ddim_sample(model, schedule, n, steps=steps or 50, **kwargs)
    if sampler in ("dpmpp", "dpmpp-sde"):
        return dpm_solver_sample(model, schedule, n, steps=steps or 20, stochastic=sampler == "dpmpp-sde", **kwargs)
    raise ValueError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")


__all__ = [
    "SAMPLERS", "VARIANCES", "BatchContext", "DDIMStep", "EpsFromPrediction", "as_eps_model", "ddim_invert",
    "ddim_sample", "ddim_step", "ddim_timesteps", "ddpm_sample", "dpm_solver_pp_step", "dpm_solver_sample",
    "dpm_solver_timesteps", "p_mean", "p_sample", "respace", "run_batches", "sample", "sampling_numerics", "slerp",
]
