"""Training objectives as objects: set up once, called the same way by the training loop.

Every loss here is called as ``loss(model, x0, t, noise, y=None)`` and returns a
scalar tensor; :func:`ddpm_lib.training.train_step` never asks which one it runs.

* :class:`DiffusionLoss` -- L_simple (Ho et al. 2020, Eq. 14), or the same regression
  on x0 or v, optionally with Min-SNR-gamma weights;
* :class:`ColdLoss` -- cold diffusion's restoration loss (Bansal et al. 2022);
* :class:`FlowMatchingLoss` -- the flow-matching loss on the linear path (Lipman et al. 2023);
* :func:`make_loss` -- the loss that fits a forward process and a network.

Each loss also says how a step draws its times, ``loss.sample_t(batch, generator)``: integer
timesteps t ~ Uniform{0, ..., T - 1} (Algorithm 1, line 3) for DDPM and cold diffusion, real
t ~ Uniform[0, 1) for flow matching. The training loop draws t, then ``noise`` for every
objective (a cold run ignores it), so a cold run sees the same images and timesteps as a DDPM
run with the same seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cold import BlurDegradation
from .flow import LinearPath
from .models import PREDICTIONS
from .schedule import DiffusionSchedule


def _forward(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """eps_theta(x_t, t), or eps_theta(x_t, t, y) for a class-conditional network."""
    return model(x_t, t) if y is None else model(x_t, t, y)


class DiffusionLoss:
    """L_simple (Eq. 14): || target - net(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2, averaged.

    ``prediction`` is what the network outputs (:attr:`ModelConfig.prediction`): ``"eps"``
    (the paper's target), ``"x0"`` or ``"v"`` (:meth:`DiffusionSchedule.prediction_target`),
    each regressed unweighted. The mean runs over pixels and images, as in the paper's code.

    With ``min_snr_gamma`` = gamma > 0 (eps only), each image's error is weighted by
    min(SNR_t, gamma) / SNR_t (Min-SNR-gamma, Hang et al. 2023): timesteps with little
    noise (SNR_t > gamma) count less, the rest as in L_simple.
    """

    def __init__(self, schedule: DiffusionSchedule, prediction: str = "eps", min_snr_gamma: float = 0.0):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        if min_snr_gamma < 0:
            raise ValueError(f"min_snr_gamma must be at least 0 (0 turns the weighting off), got {min_snr_gamma}")
        if min_snr_gamma and prediction != "eps":
            raise ValueError(f"min_snr_gamma weights are defined here for eps-prediction, not {prediction!r}")
        if prediction == "velocity":
            raise ValueError("prediction 'velocity' is a flow's: train it on the linear path (FlowMatchingLoss, "
                             "make_loss(LinearPath(T), 'velocity'), train --objective flow)")
        self.schedule, self.prediction, self.min_snr_gamma = schedule, prediction, float(min_snr_gamma)

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform{0, ..., T - 1} (Algorithm 1, line 3; zero-based)."""
        return torch.randint(0, self.schedule.T, (batch,), generator=generator)

    def __call__(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        x_t = self.schedule.q_sample(x0, t, noise)                                   # Eq. 4, reparameterised
        out = _forward(model, x_t, t, y).float()
        target = self.schedule.prediction_target(x0, noise, t, self.prediction)     # eps for L_simple
        if not self.min_snr_gamma:
            return F.mse_loss(out, target)
        per_image = (out - target).pow(2).flatten(1).mean(1)
        snr = self.schedule.snr
        weight = snr.clamp(max=self.min_snr_gamma) / snr          # float64 on the CPU, like the schedule
        return (per_image * weight.to(device=x0.device, dtype=per_image.dtype)[t]).mean()


class ColdLoss:
    """|| R(D(x_0, t), t) - x_0 ||_1, averaged (Bansal et al. 2022, section 3.1, with the L1 norm they train with).

    R is a restoration network (``prediction="x0"``); ``noise`` is accepted and unused.
    """

    prediction = "x0"

    def __init__(self, degradation: BlurDegradation):
        self.degradation = degradation

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ Uniform{0, ..., T - 1}, as for DDPM."""
        return torch.randint(0, self.degradation.T, (batch,), generator=generator)

    def __call__(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        out = _forward(model, self.degradation.degrade(x0, t), t, y)
        return (out.float() - x0.float()).abs().mean()


class FlowMatchingLoss:
    """|| v_theta(x_t, t) - (eps - x_0) ||^2 on the linear path x_t = (1 - t) x_0 + t eps, averaged
    (Lipman et al. 2023, Eq. 23 with the optimal-transport path; Liu et al. 2022's rectified flow).

    ``t`` is real, in [0, 1) (:meth:`sample_t`); the network sees it as t (T - 1)
    (:meth:`~ddpm_lib.flow.LinearPath.network_time`). The minimiser is the marginal velocity
    (:mod:`ddpm_lib.flow`). The mean runs over pixels and images, as L_simple's does.
    """

    prediction = "velocity"

    def __init__(self, path: LinearPath):
        self.path = path

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.path.sample_t(batch, generator)

    def __call__(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        x_t = self.path.q_sample(x0, t, noise)                                       # a point on each line
        out = _forward(model, x_t, self.path.network_time(t), y).float()
        return F.mse_loss(out, self.path.velocity_target(x0.float(), noise.float()))   # eps - x_0


def make_loss(forward_process, prediction: str = "eps", min_snr_gamma: float = 0.0):
    """The objective for a forward process and what the network predicts.

    A :class:`DiffusionSchedule` trains with :class:`DiffusionLoss`; a cold-diffusion
    :class:`~ddpm_lib.cold.BlurDegradation` with :class:`ColdLoss`, whose network restores
    the image (``prediction="x0"``) and has no noise levels to weight; a flow's
    :class:`~ddpm_lib.flow.LinearPath` with :class:`FlowMatchingLoss` (``prediction="velocity"``).
    """
    for process, loss, name, network in ((LinearPath, FlowMatchingLoss, "flow matching", "a velocity network"),
                                         (BlurDegradation, ColdLoss, "cold diffusion", "a restoration network")):
        if isinstance(forward_process, process):
            if prediction != loss.prediction:
                raise ValueError(f"{name} trains {network}: build it with prediction={loss.prediction!r}, "
                                 f"not {prediction!r}")
            if min_snr_gamma:
                raise ValueError(f"min_snr_gamma weights the noise levels of a DDPM schedule: set it to 0 for {name}")
            return loss(forward_process)
    return DiffusionLoss(forward_process, prediction, min_snr_gamma)
