"""The forward process: schedules, the closed form, the posterior (Ho et al. 2020, Eqs. 2, 4, 6, 7)."""

import math

import pytest
import torch

from ddpm_lib.schedule import cosine_betas, make_schedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_monotone_and_in_range(kind):
    s = make_schedule(kind, 1000)
    assert s.T == 1000 and s.betas.shape == (1000,)
    assert bool(((s.betas > 0) & (s.betas < 1)).all())
    assert bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all()), "alpha_bar must decrease strictly"
    assert 0 < float(s.alpha_bars[-1]) < 1e-3, "x_T must be almost pure noise"
    assert bool((s.betas[1:] >= s.betas[:-1]).all()), "betas must not decrease"


def test_linear_schedule_matches_paper():
    s = make_schedule("linear", 1000)
    assert float(s.betas[0]) == pytest.approx(1e-4)
    assert float(s.betas[-1]) == pytest.approx(0.02)
    # alpha_bar_T for the DDPM schedule is about 4.0e-5 (a well-known value)
    assert float(s.alpha_bars[-1]) == pytest.approx(4.04e-5, rel=0.02)


def test_cosine_schedule_is_clipped_like_the_paper():
    raw = cosine_betas(1000, max_beta=1.0)
    assert float(raw[-1]) == pytest.approx(1.0)  # the singularity at t = T ...
    s = make_schedule("cosine", 1000)
    assert float(s.betas.max()) == pytest.approx(0.999)  # ... is clipped to 0.999
    # alpha_bar follows cos^2 closely away from the end (Nichol & Dhariwal 2021, Eq. 17)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert torch.allclose(s.alpha_bars[:900], f[:900], rtol=1e-9)


def test_posterior_variance_formula():
    s = make_schedule("linear", 1000)
    t = 500
    expected = (1 - s.alpha_bars[t - 1]) / (1 - s.alpha_bars[t]) * s.betas[t]
    assert float(s.posterior_variance[t]) == pytest.approx(float(expected))
    assert float(s.posterior_variance[0]) == 0.0
    assert bool((s.posterior_variance[1:] < s.betas[1:]).all()), "beta_tilde_t < beta_t for t > 1"


def test_closed_form_matches_iterated_chain():
    """x_t from t applications of q_step has the distribution of q_sample (Eq. 4)."""
    torch.manual_seed(0)
    s = make_schedule("linear", 1000)
    n, t_end = 20_000, 300
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(t_end):
        x = s.q_step(x, torch.full((n,), t))
    closed = s.q_sample(x0, torch.full((n,), t_end - 1))
    mean = math.sqrt(float(s.alpha_bars[t_end - 1])) * 0.7
    std = math.sqrt(1 - float(s.alpha_bars[t_end - 1]))
    se = std / math.sqrt(n)
    for sample in (x, closed):
        assert float(sample.mean()) == pytest.approx(mean, abs=5 * se)
        assert float(sample.std()) == pytest.approx(std, rel=0.03)


def test_q_sample_is_the_reparameterisation():
    s = make_schedule("cosine", 200)
    x0 = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    eps = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 199])
    ab = s.alpha_bars[t].view(-1, 1, 1, 1)
    assert torch.allclose(s.q_sample(x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert torch.allclose(s.predict_x0(s.q_sample(x0, t, eps), t, eps), x0)


def test_posterior_mean_formula():
    s = make_schedule("linear", 1000)
    x0, xt = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 400, 999])
    mean, var = s.q_posterior(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        ab, abp, b = s.alpha_bars[ti], s.alpha_bars[ti - 1], s.betas[ti]
        expected = abp.sqrt() * b / (1 - ab) * x0[i] + (1 - b).sqrt() * (1 - abp) / (1 - ab) * xt[i]
        assert torch.allclose(mean[i], expected)
        assert float(var[i].flatten()[0]) == pytest.approx(float(s.posterior_variance[ti]))


def test_posterior_is_the_bayes_posterior():
    """Sampling x_{t-1} ~ q(x_{t-1}|x_0), then x_t ~ q(x_t|x_{t-1}), and regressing x_{t-1} on x_t
    recovers the posterior mean coefficient and variance of Eq. 7 (x_0 fixed)."""
    torch.manual_seed(1)
    s = make_schedule("linear", 1000)
    t, n = 50, 200_000
    x0 = torch.full((n, 1), 0.3, dtype=torch.float64)
    x_prev = s.q_sample(x0, torch.full((n,), t - 1))
    x_t = s.q_step(x_prev, torch.full((n,), t))
    mean, var = s.q_posterior(x0, x_t, torch.full((n,), t))
    resid = x_prev - mean
    assert abs(float(resid.mean())) < 5 * math.sqrt(float(var[0])) / math.sqrt(n)
    assert float(resid.var()) == pytest.approx(float(var[0]), rel=0.02)


@pytest.mark.parametrize("bad", [torch.tensor([-1]), torch.tensor([1000]), torch.tensor([5, 1000])])
def test_timestep_out_of_range_is_rejected(bad):
    s = make_schedule("linear", 1000)
    with pytest.raises(ValueError, match=r"timestep out of range.*\[0, 1000\)"):
        s.q_sample(torch.zeros(len(bad), 1, 28, 28), bad)


def test_timesteps_must_be_integers_one_per_image():
    s = make_schedule("cosine", 10)
    with pytest.raises(TypeError, match="integer"):
        s.q_sample(torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="one per image"):
        s.q_sample(torch.zeros(2, 1, 2, 2), torch.tensor([1, 2, 3]))


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*linear, cosine"):
        make_schedule("quadratic", 1000)
