"""DDIM, DPM-Solver++ and respaced Algorithm 2: properties that hold whatever the network."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.sampling import (ddim_invert, ddim_sample, ddim_step, ddpm_sample, dpm_solver_sample,
                               dpm_solver_timesteps, respace, sample, slerp)
from ddpm_lib.schedule import make_schedule

SCHEDULE = make_schedule("linear", 1000)


class GaussianOptimalEps(nn.Module):
    """E[eps | x_t] for x_0 ~ N(0, s^2 I): the network a perfect training run would give."""

    def __init__(self, s: float, schedule, size: int = 4):
        super().__init__()
        self.s, self.ab = s, schedule.alpha_bars
        self.config = ModelConfig(image_size=size, num_timesteps=schedule.T)

    def forward(self, x, t):
        a = self.ab[t].reshape(-1, 1, 1, 1)
        return ((1 - a).sqrt() / (a * self.s**2 + 1 - a) * x).float()


@pytest.fixture(scope="module")
def gaussian():
    s = 0.5
    oracle = GaussianOptimalEps(s, SCHEDULE)
    x_T = torch.randn(128, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a_T = SCHEDULE.alpha_bars[-1]
    exact = (x_T * s / (a_T * s**2 + 1 - a_T).sqrt()).float()     # the probability-flow ODE's end point
    return oracle, x_T, exact


def _err(oracle, x_T, exact, **kw):
    return float((dpm_solver_sample(oracle, SCHEDULE, len(x_T), x_T=x_T, device="cpu", **kw) - exact)
                 .abs().mean())


def test_solvers_converge_to_the_exact_ode_solution_at_their_order(gaussian):
    oracle, x_T, exact = gaussian
    first = {k: _err(oracle, x_T, exact, order=1, timesteps=dpm_solver_timesteps(1000, k)) for k in (20, 40)}
    second = {k: _err(oracle, x_T, exact, order=2, timesteps=dpm_solver_timesteps(1000, k)) for k in (20, 40)}
    # first order: doubling the steps about halves the error; second order: divides it by about four or more
    assert 1.6 < first[20] / first[40] < 2.4
    assert second[20] / second[40] > 3.5
    assert second[40] < first[40] / 10


def test_sde_solver_matches_the_data_distribution(gaussian):
    oracle, _, _ = gaussian
    x = dpm_solver_sample(oracle, SCHEDULE, 4000, steps=50, stochastic=True, seed=0, device="cpu",
                          image_shape=(1, 4, 4))
    assert abs(float(x.std()) - 0.5) < 0.02 and abs(float(x.mean())) < 0.02


def test_ddim_eta_one_over_all_steps_is_algorithm_2_with_beta_tilde():
    schedule = make_schedule("linear", 100)
    torch.manual_seed(0)
    net = build_model(arch="unet", base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                      num_timesteps=100, image_size=8).eval()
    x_t, t = torch.randn(3, 1, 8, 8), 12
    z = torch.randn(3, 1, 8, 8)
    from ddpm_lib.sampling import p_sample

    with torch.no_grad():
        eps = net(x_t, torch.full((3,), t))
        ddim = ddim_step(x_t, eps, float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t - 1]), 1.0, z).prev_sample
        ddpm = p_sample(net, schedule, x_t, torch.full((3,), t), noise=z, variance="beta_tilde")
    torch.testing.assert_close(ddim, ddpm, atol=1e-5, rtol=1e-5)


def test_ddim_clip_recomputes_eps_from_the_clipped_prediction():
    x_t = torch.tensor([[[[3.0]]]])
    eps = torch.tensor([[[[-2.0]]]])          # x0_pred far above 1
    step = ddim_step(x_t, eps, 0.5, 0.9, clip_x0=True)
    assert float(step.pred_original_sample) == 1.0
    # the recomputed eps is the noise that takes x0 = 1 to this x_t
    assert math.isclose(float(step.pred_epsilon), (3.0 - math.sqrt(0.5) * 1.0) / math.sqrt(0.5), rel_tol=1e-6)
    assert math.isclose(float(step.prev_sample),
                        math.sqrt(0.9) * 1.0 + math.sqrt(0.1) * float(step.pred_epsilon), rel_tol=1e-6)


def test_respaced_schedule_keeps_alpha_bar_and_all_steps_is_the_original():
    tau = torch.tensor([0, 99, 499, 999])
    r = respace(SCHEDULE, tau)
    torch.testing.assert_close(r.alpha_bars, SCHEDULE.alpha_bars[tau])
    torch.testing.assert_close(respace(SCHEDULE, torch.arange(1000)).betas, SCHEDULE.betas)
    with pytest.raises(ValueError, match="increasing"):
        respace(SCHEDULE, [5, 3])


def test_ddpm_with_all_steps_is_unchanged_by_the_steps_argument():
    schedule = make_schedule("linear", 30)
    torch.manual_seed(1)
    net = build_model(arch="unet", base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                      num_timesteps=30, image_size=8)
    a = ddpm_sample(net, schedule, 3, seed=4)
    b = ddpm_sample(net, schedule, 3, seed=4, steps=30)
    assert torch.equal(a, b)
    c = ddpm_sample(net, schedule, 3, seed=4, steps=10)
    assert c.shape == a.shape and torch.isfinite(c).all()


def test_inversion_round_trip_is_exact_in_the_limit(gaussian):
    oracle, _, _ = gaussian
    x0 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(5)) * 0.5
    errs = {}
    for k in (20, 200):
        z = ddim_invert(oracle, SCHEDULE, x0, steps=k, device="cpu")
        back = ddim_sample(oracle, SCHEDULE, 16, steps=k, x_T=z, device="cpu")
        errs[k] = float((back - x0).abs().mean())
    assert errs[200] < errs[20] / 5 and errs[200] < 0.02     # the error falls like 1/steps


def test_slerp_keeps_the_norm_and_ends():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(784, generator=g), torch.randn(784, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)
    assert abs(float(mid.norm()) - float((a.norm() + b.norm()) / 2)) < 0.5


def test_sample_dispatches_and_rejects_unknown_samplers():
    schedule = make_schedule("linear", 40)
    net = build_model(arch="unet", base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                      num_timesteps=40, image_size=8)
    for name in ("ddpm", "ddim", "dpmpp", "dpmpp-sde"):
        assert sample(net, schedule, 2, name, 5, seed=0).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        sample(net, schedule, 2, "plms", 5)
    with pytest.raises(ValueError, match="between 1 and T/2=20"):
        dpm_solver_sample(net, schedule, 2, steps=30)


class _LoudNet(nn.Module):
    """An eps-network that overshoots by a factor of 50: its data predictions leave [-1, 1] by far."""

    def __init__(self, T):
        super().__init__()
        self.config = ModelConfig(num_timesteps=T)
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        return -50.0 * x


@pytest.mark.parametrize("stochastic", [False, True])
def test_dpm_solver_clip_bounds_the_data_prediction(stochastic):
    """With clip_x0 every data prediction lies in [-1, 1], so the last step (which returns it) does too;
    unclipped, the same network draws values far outside."""
    s = make_schedule("linear", 100)
    kw = dict(steps=8, seed=0, stochastic=stochastic)
    loose = dpm_solver_sample(_LoudNet(100), s, 4, **kw)
    clipped = dpm_solver_sample(_LoudNet(100), s, 4, clip_x0=True, **kw)
    assert float(loose.abs().max()) > 10
    assert float(clipped.abs().max()) <= 1.0


def test_dpm_solver_clip_changes_nothing_inside_the_range():
    """A model whose data predictions stay inside [-1, 1] samples exactly the same with and without clipping."""
    s = make_schedule("linear", 100)
    model = build_model(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=100)
    torch.nn.init.zeros_(model.conv_out.weight)
    torch.nn.init.zeros_(model.conv_out.bias)               # eps = 0: the ODE keeps x0_theta = x_T / alpha_T
    x_T = 0.001 * torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))   # x0_theta = x_T / alpha_T
    kw = dict(steps=5, x_T=x_T)
    assert torch.equal(dpm_solver_sample(model, s, 2, **kw), dpm_solver_sample(model, s, 2, clip_x0=True, **kw))
