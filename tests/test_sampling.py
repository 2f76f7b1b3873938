"""The reverse process (Algorithm 2) and DDIM, checked against hand computations."""

import math

import pytest
import torch
from torch import nn

from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.sampling import (SAMPLERS, ddim_sample, ddim_timesteps, ddpm_sample, p_sample, p_step,
                               record_trajectory, sample)
from ddpm_lib.schedule import make_schedule


class ConstantEps(nn.Module):
    """A stand-in for eps_theta that always predicts the same noise value."""

    def __init__(self, value: float, T: int, size: int = 2):
        super().__init__()
        self.value = value
        self.config = ModelConfig(image_size=size, channel_mults=(1,), num_timesteps=T)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return torch.full_like(x, self.value)


@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "none"])
def test_p_sample_matches_hand_computation(variance):
    s = make_schedule("linear", 1000)
    model = ConstantEps(0.25, 1000)
    x_t = torch.tensor([0.5, -1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()
    z = torch.full_like(x_t, -0.3)
    t = torch.tensor([600, 600])
    out = p_sample(model, s, x_t, t, noise=z, variance=variance)
    beta = 1e-4 + (0.02 - 1e-4) * 600 / 999
    alpha_bar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(601))
    alpha_bar_prev = alpha_bar / (1 - beta)
    sigma2 = {"beta": beta, "beta_tilde": (1 - alpha_bar_prev) / (1 - alpha_bar) * beta, "none": 0.0}[variance]
    for i, x in enumerate([0.5, -1.0]):
        mean = (x - beta / math.sqrt(1 - alpha_bar) * 0.25) / math.sqrt(1 - beta)
        expected = mean + math.sqrt(sigma2) * -0.3
        assert torch.allclose(out[i], torch.full((1, 2, 2), expected), atol=1e-6)


def test_clip_x0_changes_nothing_where_x0_hat_is_in_range():
    s = make_schedule("linear", 1000)
    x_t = torch.tensor([0.5, -0.7]).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()
    z, t = torch.full_like(x_t, -0.3), torch.tensor([5, 5])
    x0_hat = s.predict_x0(x_t, t, torch.full_like(x_t, 0.25))
    assert x0_hat.abs().max() < 1                     # nothing to clip: Eq. 7 with x0_hat is Eq. 11
    a = p_sample(ConstantEps(0.25, 1000), s, x_t, t, noise=z)
    b = p_sample(ConstantEps(0.25, 1000), s, x_t, t, noise=z, clip_x0=True)
    assert torch.allclose(a, b, atol=1e-6)


def test_clip_x0_takes_the_posterior_mean_of_the_clipped_prediction():
    """At t=600 (paper's 601) eps = 0.25 makes x0_hat of x_t = 0.5 overshoot 1; the step becomes
    mu_tilde(x_t, 1.0) (Eq. 7) plus sigma z, computed by hand."""
    s = make_schedule("linear", 1000)
    x_t = torch.full((1, 1, 2, 2), 0.5)
    z, t = torch.full_like(x_t, -0.3), torch.tensor([600])
    beta = 1e-4 + (0.02 - 1e-4) * 600 / 999
    alpha_bar = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(601))
    alpha_bar_prev = alpha_bar / (1 - beta)
    assert (0.5 - math.sqrt(1 - alpha_bar) * 0.25) / math.sqrt(alpha_bar) > 1
    mean = (math.sqrt(alpha_bar_prev) * beta * 1.0 + math.sqrt(1 - beta) * (1 - alpha_bar_prev) * 0.5) / (1 - alpha_bar)
    out = p_sample(ConstantEps(0.25, 1000), s, x_t, t, noise=z, clip_x0=True)
    assert torch.allclose(out, torch.full_like(out, mean + math.sqrt(beta) * -0.3), atol=1e-6)


def test_clip_x0_keeps_an_untrained_net_in_range():
    """An untrained net's eps is far off; on the cosine schedule (alpha_bar_T ~ 2e-9) DDIM's x0_pred blows
    up without clipping. With clipping the last step (alpha_bar_prev = 1, eta = 0) returns x0_pred in [-1, 1]."""
    torch.manual_seed(0)
    m = build_model(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=1000)
    s = make_schedule("cosine", 1000)
    wild = ddim_sample(m, s, 2, steps=5, seed=0)
    tame = ddim_sample(m, s, 2, steps=5, seed=0, clip_x0=True)
    assert wild.abs().max() > 10
    assert tame.abs().max() <= 1
    x = ddpm_sample(ConstantEps(0.0, 10), make_schedule("cosine", 10), 2, seed=0, clip_x0=True)
    assert x.abs().max() <= 1 + 1e-6  # the last Algorithm 2 step (no noise) is mu_tilde of a clipped x0 at t=1


def test_last_step_adds_no_noise():
    s = make_schedule("cosine", 10)
    model = ConstantEps(0.0, 10)
    x = torch.ones(2, 1, 2, 2)
    a = p_sample(model, s, x, torch.tensor([0, 0]), noise=torch.full_like(x, 5.0))
    b = p_sample(model, s, x, torch.tensor([0, 0]), noise=torch.zeros_like(x))
    assert torch.equal(a, b)


def test_ddpm_sample_is_deterministic_given_seed():
    torch.manual_seed(0)
    m = build_model(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=20)
    s = make_schedule("cosine", 20)
    a = ddpm_sample(m, s, 3, seed=7)
    b = ddpm_sample(m, s, 3, seed=7)
    c = ddpm_sample(m, s, 3, seed=8)
    assert a.shape == (3, 1, 28, 28)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    record, traj = record_trajectory(5)
    x0 = ddpm_sample(m, s, 2, seed=7, callback=record)
    assert [t for t, _ in traj] == [20, 15, 10, 5, 0]
    assert torch.equal(traj[-1][1], x0)


def test_sample_with_exact_eps_recovers_data():
    """With eps_theta equal to the true noise of a single data point x0 = c, Algorithm 2 with
    sigma = 0 and the true-eps model lands exactly on c (a sanity check of the update)."""
    s = make_schedule("linear", 50)
    c = 0.4

    class TrueEps(ConstantEps):
        def forward(self, x, t):
            ab = s.alpha_bars[t].float().view(-1, 1, 1, 1)
            return (x - ab.sqrt() * c) / (1 - ab).sqrt()

    x0 = ddpm_sample(TrueEps(0.0, 50), s, 4, seed=0, variance="none")
    assert torch.allclose(x0, torch.full_like(x0, c), atol=1e-4)


def test_ddim_eta1_all_steps_is_ddpm_with_beta_tilde():
    torch.manual_seed(0)
    m = build_model(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=30)
    s = make_schedule("linear", 30)
    a = ddpm_sample(m, s, 2, seed=3, variance="beta_tilde")          # fp32, contiguous: the default numerics
    b = ddim_sample(m, s, 2, steps=30, eta=1.0, seed=3)
    # two formulas for one step: equal up to float rounding, which an untrained net (values in the
    # thousands) magnifies; so the tolerance is relative to the largest value
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * a.abs().max().item())


def test_ddim_timesteps():
    tau = ddim_timesteps(1000, 50)
    assert len(tau) == 50 and int(tau[0]) == 0 and int(tau[-1]) == 999
    assert bool((tau[1:] > tau[:-1]).all())
    with pytest.raises(ValueError, match="between 1 and T=1000"):
        ddim_timesteps(1000, 0)


def test_sampler_rejects_mismatched_schedule_and_bad_variance():
    m = build_model(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=100)
    with pytest.raises(ValueError, match="T=100 timesteps but the schedule has T=1000"):
        ddpm_sample(m, make_schedule("linear", 1000), 1)
    with pytest.raises(ValueError, match="unknown variance 'large'"):
        ddpm_sample(m, make_schedule("linear", 100), 1, variance="large")


@pytest.mark.parametrize("variance", ["beta", "beta_tilde", "none"])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_p_step_is_p_sample_given_the_networks_output(variance, clip_x0):
    """p_step takes eps_theta(x_t, t), not the network: with the same eps and z it is p_sample, bit for bit."""
    s = make_schedule("cosine", 50)
    torch.manual_seed(0)
    m = build_model(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50,
                    image_size=8).eval()
    x_t, z, t = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), torch.tensor([0, 17, 49])
    with torch.no_grad():
        eps = m(x_t, t)
    assert torch.equal(p_step(x_t, eps, t, s, variance, z, clip_x0),
                       p_sample(m, s, x_t, t, noise=z, variance=variance, clip_x0=clip_x0))


def test_callback_sees_every_state_and_the_trajectory_keeps_the_first_batch():
    s = make_schedule("cosine", 12)
    m = ConstantEps(0.1, 12)
    seen = []
    x = ddpm_sample(m, s, 5, seed=0, batch_size=3, steps=6, callback=lambda i, x: seen.append((i, x.shape[0])))
    assert seen == [(i, 3) for i in range(6, -1, -1)] + [(i, 2) for i in range(6, -1, -1)]  # x_K first, then x_i
    record, traj = record_trajectory(4)
    y = ddpm_sample(m, s, 5, seed=0, batch_size=3, callback=record)
    assert [t for t, _ in traj] == [12, 8, 4, 0] and all(x.shape[0] == 3 for _, x in traj)
    assert torch.equal(traj[-1][1], y[:3])
    for sampler in ("ddim", "dpmpp"):
        record, traj = record_trajectory(1)
        z = sample(m, s, 2, sampler, 3, seed=0, callback=record)
        assert [t for t, _ in traj] == [3, 2, 1, 0] and torch.equal(traj[-1][1], z)


def test_sample_checks_steps_and_options_against_the_registry():
    s = make_schedule("linear", 40)
    m = ConstantEps(0.0, 40)
    assert {k: (v.default_steps(1000), v.max_steps(1000)) for k, v in SAMPLERS.items()} == {
        "ddpm": (1000, 1000), "ddim": (50, 1000), "dpmpp": (20, 500), "dpmpp-sde": (20, 500),
        "edm": (35, 1999), "euler": (20, 1000), "midpoint": (20, 1000), "heun": (20, 1000)}
    assert SAMPLERS["ddpm"].defaults() == {"variance": "beta", "clip_x0": False}
    with pytest.raises(ValueError, match="sampler 'ddpm' takes no option 'eta': its options are variance, clip_x0"):
        sample(m, s, 1, "ddpm", eta=0.5)
    with pytest.raises(ValueError, match="steps must be between 1 and 20 for sampler 'dpmpp-sde'"):
        sample(m, s, 1, "dpmpp-sde", 21)
    with pytest.raises(TypeError, match="record_every.*record_trajectory"):
        ddpm_sample(m, s, 1, record_every=5)
    # the default steps of every sampler are what its function does without steps
    for name, fn in (("ddim", ddim_sample), ("ddpm", ddpm_sample)):
        assert torch.equal(sample(m, s, 2, name, seed=1), fn(m, s, 2, seed=1))
