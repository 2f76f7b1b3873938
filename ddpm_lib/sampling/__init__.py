"""Reverse process: drawing new images with a trained eps_theta.

* :mod:`.ddpm` -- Algorithm 2 of Ho et al. (2020), ancestral sampling: the pure step ``p_step``,
  ``p_sample`` (network + step), ``ddpm_sample``, also on a respaced schedule;
* :mod:`.ddim` -- DDIM (Song et al. 2021): ``ddim_step``, ``ddim_sample``, inversion;
* :mod:`.dpm_solver` -- DPM-Solver++(2M) and its SDE variant (Lu et al. 2022): ``dpm_solver_pp_step``,
  ``dpm_solver_sample``;
* :mod:`.edm` -- Karras et al. (2022)'s sampler: Heun on the probability-flow ODE at Eq. 5's noise levels,
  optional churn (Algorithm 2): ``edm_step``, ``edm_sample``;
* :mod:`.flow` -- a flow-matching model's ODE (:mod:`ddpm_lib.flow`) with Euler, midpoint or Heun steps:
  ``flow_step``, ``flow_sample``;
* :mod:`.cold` -- cold diffusion's sampler (Bansal et al. 2022);
* :mod:`._loop` -- what they share: batches, seeds, numerics, class labels, progress and callback, the
  *run options* of :func:`run_batches` that every sampler takes as ``**run`` and passes through.

Every sampler returns the images, a float tensor (n, C, H, W) on the CPU; the states of the chain
come through the ``callback`` run option (:func:`record_trajectory` keeps them).

:data:`SAMPLERS` is the registry of the samplers :func:`sample` picks by name (the CLI's
``--sampler``): for each, its function, its default and largest number of steps, the options
it takes besides the run options, and the kind of model it samples (a DDPM schedule's or a
flow's). Cold diffusion's :func:`cold_sample` is not in it: it samples a
different process (a blur :class:`~ddpm_lib.cold.BlurDegradation`, not a
:class:`~ddpm_lib.schedule.DiffusionSchedule`), starts from a grey-level mixture fitted to training
images that no checkpoint carries, and always runs all T steps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..schedule import DiffusionSchedule
from ._loop import (RUN_DEFAULTS, RUN_OPTIONS, BatchContext, EpsFromPrediction, as_eps_model, record_trajectory,
                    run_batches)
from .cold import cold_sample
from .ddim import DDIMStep, ddim_default_steps, ddim_invert, ddim_sample, ddim_step, ddim_timesteps, slerp
from .ddpm import VARIANCES, ddpm_sample, p_mean, p_sample, p_step, respace
from .dpm_solver import (dpm_solver_default_steps, dpm_solver_max_steps, dpm_solver_pp_step, dpm_solver_sample,
                         dpm_solver_timesteps)
from .edm import (edm_default_steps, edm_intervals, edm_max_steps, edm_sample, edm_slope, edm_step, karras_sigmas,
                  schedule_sigmas, sigma_to_t)
from .flow import FLOW_SOLVERS, flow_default_steps, flow_intervals, flow_max_steps, flow_sample, flow_step
from ..flow import LinearPath


@dataclass(frozen=True)
class Sampler:
    """One entry of :data:`SAMPLERS`: how :func:`sample` (and the CLI) call a sampler.

    ``fn(model, schedule, n, steps=steps, **options, **run)`` draws the images; ``default_steps(T)``
    and ``max_steps(T)`` give its default and largest number of network evaluations for a schedule of
    T steps (the smallest is 1); ``options`` names the keyword arguments it takes besides the run
    options (:data:`RUN_OPTIONS`), their defaults those of ``fn`` (:meth:`defaults`). ``process`` is the
    kind of model it samples: "diffusion" (a :class:`DiffusionSchedule`) or "flow" (a
    :class:`~ddpm_lib.flow.LinearPath`).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    about: str
    default_steps: Callable[[int], int]
    max_steps: Callable[[int], int]
    options: tuple[str, ...]
    process: str = "diffusion"

    def defaults(self) -> dict:
        """``{option: its default}``, read from the signature of ``fn``."""
        params = inspect.signature(self.fn).parameters
        return {name: params[name].default for name in self.options}

    def check_steps(self, steps: int, T: int) -> None:
        if not 1 <= steps <= self.max_steps(T):
            raise ValueError(f"steps must be between 1 and {self.max_steps(T)} for sampler {self.name!r} "
                             f"(T={T}), got {steps}")


#: the samplers :func:`sample` and the CLI know, by name
SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", ddpm_sample,
            "Algorithm 2 (Ho et al. 2020); steps < T runs it on a respaced schedule (Nichol & Dhariwal 2021)",
            default_steps=lambda T: T, max_steps=lambda T: T, options=("variance", "clip_x0")),
    Sampler("ddim", ddim_sample, "DDIM (Song et al. 2021), eta = 0 by default: deterministic",
            default_steps=ddim_default_steps, max_steps=lambda T: T, options=("eta", "clip_x0")),
    Sampler("dpmpp", dpm_solver_sample, "DPM-Solver++(2M) (Lu et al. 2022): second-order multistep ODE solver",
            default_steps=dpm_solver_default_steps, max_steps=dpm_solver_max_steps,
            options=("order", "spacing", "clip_x0")),
    Sampler("dpmpp-sde", partial(dpm_solver_sample, stochastic=True),
            "SDE-DPM-Solver++(2M) (Lu et al. 2022): its stochastic variant",
            default_steps=dpm_solver_default_steps, max_steps=dpm_solver_max_steps,
            options=("order", "spacing", "clip_x0")),
    Sampler("edm", edm_sample,
            "Karras et al. 2022: Heun steps at Eq. 5's noise levels (2N - 1 calls for N levels); churn = 0: "
            "deterministic", default_steps=edm_default_steps, max_steps=edm_max_steps,
            options=("rho", "churn", "s_tmin", "s_tmax", "s_noise", "clip_x0")),
    *(Sampler(solver, partial(flow_sample, solver=solver), about, default_steps=flow_default_steps,
              max_steps=flow_max_steps, options=(), process="flow") for solver, about in (
        ("euler", "a flow-matching model's ODE with Euler steps (one network call each)"),
        ("midpoint", "a flow-matching model's ODE with midpoint steps (second order, two calls each)"),
        ("heun", "a flow-matching model's ODE with Heun steps (second order, two calls each; Karras et al. 2022)"))),
)}


PROCESSES = ("diffusion", "flow")     # the kinds of model a sampler fits (:attr:`Sampler.process`)


def process_of(forward_process) -> str:
    """"flow" for a flow's :class:`~ddpm_lib.flow.LinearPath`, else "diffusion": what :attr:`Sampler.process` names.
    A name of :data:`PROCESSES` is returned as it is."""
    if isinstance(forward_process, str):
        if forward_process not in PROCESSES:
            raise ValueError(f"unknown kind of model {forward_process!r}: expected one of {', '.join(PROCESSES)}")
        return forward_process
    return "flow" if isinstance(forward_process, LinearPath) else "diffusion"


def samplers_for(forward_process) -> list[str]:
    """The names of the samplers of :data:`SAMPLERS` that fit a model of this forward process (or of this name of
    :data:`PROCESSES`)."""
    return [name for name, s in SAMPLERS.items() if s.process == process_of(forward_process)]


def default_sampler(forward_process) -> str:
    """The sampler :func:`sample` uses when none is named: the first of :data:`SAMPLERS` that fits the model
    ("ddpm", Algorithm 2, for a diffusion model; "euler" for a flow). ``forward_process``: the model's schedule
    or path, or a name of :data:`PROCESSES`."""
    return samplers_for(forward_process)[0]


def sample(model: nn.Module, schedule: DiffusionSchedule, n: int, sampler: str | None = None,
           steps: int | None = None, **options) -> torch.Tensor:
    """Draw ``n`` images with the sampler called ``sampler`` (a key of :data:`SAMPLERS`) in ``steps`` network calls.

    ``sampler`` defaults to :func:`default_sampler` of the model's forward process (``schedule``: a
    :class:`DiffusionSchedule`, or a :class:`~ddpm_lib.flow.LinearPath` for a flow-matching model).

    ``steps`` defaults to the sampler's ``default_steps(T)`` (T for ddpm, 50 for ddim, 20 for the
    DPM-Solvers) and must lie between 1 and its ``max_steps(T)``. ``options``: the sampler's own
    (e.g. ``variance`` for ddpm, ``eta`` for ddim, ``clip_x0``) and the run options of
    :func:`run_batches` (``seed``, ``batch_size``, ``class_labels``, ``guidance``, ...); anything
    else is refused with the list of what this sampler takes.
    """
    sampler = default_sampler(schedule) if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    entry = SAMPLERS[sampler]
    if entry.process != process_of(schedule):
        raise ValueError(f"sampler {sampler!r} samples a {entry.process} model, but this one is a "
                         f"{process_of(schedule)} model: use one of {', '.join(samplers_for(schedule))}")
    unknown = [k for k in options if k not in entry.options and k not in RUN_OPTIONS]
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option {', '.join(map(repr, unknown))}: its options are "
                         f"{', '.join(entry.options)}, and the run options {', '.join(RUN_OPTIONS)}")
    steps = entry.default_steps(schedule.T) if steps is None else steps
    entry.check_steps(steps, schedule.T)
    return entry.fn(model, schedule, n, steps=steps, **options)


__all__ = [
    "FLOW_SOLVERS", "PROCESSES", "RUN_DEFAULTS", "RUN_OPTIONS", "SAMPLERS", "VARIANCES", "BatchContext", "DDIMStep", "EpsFromPrediction", "Sampler",
    "as_eps_model", "cold_sample", "ddim_default_steps", "ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps",
    "ddpm_sample", "default_sampler", "dpm_solver_default_steps", "dpm_solver_max_steps", "dpm_solver_pp_step", "dpm_solver_sample",
    "dpm_solver_timesteps", "edm_default_steps", "edm_intervals", "edm_max_steps", "edm_sample", "edm_slope",
    "edm_step", "flow_default_steps", "flow_intervals", "flow_max_steps", "flow_sample", "flow_step",
    "karras_sigmas", "p_mean", "p_sample", "p_step", "process_of", "samplers_for", "schedule_sigmas", "sigma_to_t",
    "record_trajectory", "respace", "run_batches", "sample", "slerp",
]
