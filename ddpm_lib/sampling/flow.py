"""Samplers of a flow-matching model: the ODE dx/dt = v_theta(x, t) integrated from t = 1 to t = 0.

x starts as a draw of N(0, I) (the linear path at t = 1, :mod:`ddpm_lib.flow`) and each step
goes from time t to an earlier s = t - h on the uniform grid t_k = 1 - k/K:

* Euler (one network call):       x_s = x_t - h v_theta(x_t, t)
* midpoint (two calls):           x_m = x_t - (h/2) v_theta(x_t, t);   x_s = x_t - h v_theta(x_m, t - h/2)
* Heun (two calls, trapezoidal):  x_e = x_t - h v_theta(x_t, t);       x_s = x_t - (h/2) (v_theta(x_t, t) + v_theta(x_e, s))

(Heun's method as Karras et al. 2022 use it, Algorithm 1; here the velocity is smooth at
t = 0, so the last step is a Heun step too.) Euler and midpoint are first and second order:
halving h divides the error of one trajectory by about 2 and 4.

``steps`` counts *network calls*, as for every sampler of the book, so that samplers compare at
equal cost: Euler takes K = steps intervals; midpoint and Heun take K = ceil(steps / 2), and
when ``steps`` is odd their last interval (ending at t = 0) is an Euler step.

:func:`flow_step` is the Euler update as a pure function of the network's output, the
counterpart of diffusers' ``FlowMatchEulerDiscreteScheduler.step``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..flow import LinearPath
from ._loop import BatchContext, check_run_options, run_batches

FLOW_SOLVERS = ("euler", "midpoint", "heun")


def flow_default_steps(T: int) -> int:
    """Network calls unless told: 20 (the budget chapter 9 gives DPM-Solver++)."""
    return 20


def flow_max_steps(T: int) -> int:
    """The most network calls a flow sampler takes: T (the grid can be finer than the network's time input
    distinguishes, but no finer is useful)."""
    return T


def flow_intervals(steps: int, solver: str) -> list[bool]:
    """The grid's intervals for ``steps`` network calls: one entry per interval, True where the interval takes a
    second-order (two-call) step; Euler intervals take one call."""
    if solver not in FLOW_SOLVERS:
        raise ValueError(f"unknown flow solver {solver!r}: expected one of {', '.join(FLOW_SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps (network calls) must be at least 1, got {steps}")
    if solver == "euler":
        return [False] * steps
    return [True] * (steps // 2) + [False] * (steps % 2)


def flow_step(x_t: torch.Tensor, v: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from time t to time s: x_s = x_t + (s - t) v."""
    return x_t + (s - t) * v


@torch.no_grad()
def flow_sample(model: nn.Module, path: LinearPath, n: int, steps: int = 20, solver: str = "euler",
                **run) -> torch.Tensor:
    """Draw ``n`` images from a flow-matching model in ``steps`` network calls with ``solver`` ("euler",
    "midpoint" or "heun"; see the module docstring). ``run``: the run options of
    :func:`~ddpm_lib.sampling._loop.run_batches` (seed, batch_size, numerics, class_labels, guidance, x_T,
    callback, ...); x_T is x at t = 1. Guidance combines velocities, (1 + w) v(x, t, y) - w v(x, t).
    """
    if not isinstance(path, LinearPath):
        raise ValueError(f"flow_sample integrates a flow's linear path, got {type(path).__name__}: sample a DDPM "
                         "checkpoint with ddpm, ddim, dpmpp, dpmpp-sde or edm")
    prediction = getattr(getattr(model, "config", None), "prediction", "velocity")
    if prediction != "velocity":
        raise ValueError(f"this network predicts {prediction!r}, not a velocity: flow_sample needs a model trained "
                         "with flow matching (train --objective flow)")
    plan = flow_intervals(steps, solver)
    check_run_options(run, "flow_sample")
    K = len(plan)
    times = [1 - k / K for k in range(K + 1)]

    def velocity(ctx: BatchContext, x: torch.Tensor, t: float) -> torch.Tensor:
        return ctx.output(x, float(t * (path.T - 1)))

    def body(ctx: BatchContext, x: torch.Tensor) -> torch.Tensor:
        for i in ctx.countdown(K, x):
            k = K - 1 - i
            t, s = times[k], times[k + 1]
            v = velocity(ctx, x, t)
            if not plan[k]:
                x = flow_step(x, v, t, s)                                          # Euler
            elif solver == "midpoint":
                x = flow_step(x, velocity(ctx, flow_step(x, v, t, (t + s) / 2), (t + s) / 2), t, s)
            else:                                                                  # Heun: the trapezoidal rule
                x = flow_step(x, (v + velocity(ctx, flow_step(x, v, t, s), s)) / 2, t, s)
            ctx.report(i, x)
        return x

    return run_batches(model, path, n, body, **run)
