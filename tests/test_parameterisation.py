"""What the network predicts (eps, x0, v) and the UNet switches of the ablation (time at the input, BatchNorm)."""

import pytest
import torch
from torch import nn

from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.sampling import EpsFromPrediction, as_eps_model, ddim_sample, p_mean
from ddpm_lib.schedule import make_schedule
from ddpm_lib.losses import DiffusionLoss

SMALL = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=100)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_targets_and_their_inverse(prediction):
    s = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 50, 98, 99])
    x_t = s.q_sample(x0, t, noise)
    target = s.prediction_target(x0, noise, t, prediction)
    assert torch.allclose(s.eps_from_prediction(target, x_t, t, prediction), noise, atol=1e-9)
    if prediction == "v":   # v = sqrt(ab) eps - sqrt(1 - ab) x0, and x0 = sqrt(ab) x_t - sqrt(1 - ab) v
        a, b = s.sqrt_alpha_bars[t].view(-1, 1, 1, 1), s.sqrt_one_minus_alpha_bars[t].view(-1, 1, 1, 1)
        assert torch.allclose(a * x_t - b * target, x0, atol=1e-9)


class _DiracOracle(nn.Module):
    """The exact minimiser of each objective when the data is one image x*: x0 = x*, eps and v follow from x_t."""

    def __init__(self, x_star, schedule, prediction):
        super().__init__()
        self.x_star, self.schedule = x_star, schedule
        self.config = ModelConfig(image_size=8, channel_mults=(1, 2), num_timesteps=schedule.T, prediction=prediction)
        self.weight = nn.Parameter(torch.zeros(()))   # samplers look up the device of a parameter

    def forward(self, x, t, y=None):
        x0 = self.x_star.expand_as(x).to(x.dtype)
        a = self.schedule.sqrt_alpha_bars[t.cpu()].view(-1, 1, 1, 1).to(x.dtype)
        b = self.schedule.sqrt_one_minus_alpha_bars[t.cpu()].view(-1, 1, 1, 1).to(x.dtype)
        eps = (x - a * x0) / b
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[self.config.prediction]


def test_every_parameterisation_samples_the_same_images():
    """DDIM with the exact predictor of a one-image data set lands on that image, whatever the network predicts."""
    s = make_schedule("linear", 100)
    x_star = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = {p: ddim_sample(_DiracOracle(x_star, s, p), s, 4, steps=10, seed=0)
           for p in ("eps", "x0", "v")}
    for p, x in out.items():
        assert torch.allclose(x, x_star.expand_as(x), atol=1e-4), p
    assert torch.allclose(out["x0"], out["eps"], atol=1e-5) and torch.allclose(out["v"], out["eps"], atol=1e-5)


def test_eps_view_is_applied_once_and_only_when_needed():
    s = make_schedule("linear", 100)
    eps_model = build_model(**SMALL)
    assert as_eps_model(eps_model, s) is eps_model
    x0_model = build_model(**SMALL, prediction="x0")
    view = as_eps_model(x0_model, s)
    assert isinstance(view, EpsFromPrediction) and view.config.prediction == "eps"
    assert as_eps_model(view, s) is view
    # p_mean converts by itself: the mean from the raw x0-network equals the one from its eps view
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 40, 99])
    with torch.no_grad():
        assert torch.allclose(p_mean(x0_model, s, x, t), p_mean(view, s, x, t))


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_loss_regresses_the_declared_target(prediction):
    s = make_schedule("linear", 100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([3, 30, 60, 90])
    oracle = _DiracOracle(x0[:1], s, prediction)   # exact for image 0 only
    loss = DiffusionLoss(s, prediction)(oracle, x0[:1], t[:1], noise[:1])
    assert float(loss) < 1e-10
    with pytest.raises(ValueError, match="Min-SNR|min_snr"):
        DiffusionLoss(s, prediction, min_snr_gamma=5.0)


def test_time_at_the_input_only():
    torch.manual_seed(0)
    every, once = build_model(**SMALL), build_model(**SMALL, time_embedding="input")
    assert all(b.temb is None for b in once.down_blocks) and once.temb_in is not None
    assert all(b.temb is not None for b in every.down_blocks) and every.temb_in is None
    assert once.num_parameters() < every.num_parameters()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():   # t still matters, through the input
        assert not torch.allclose(once(x, torch.tensor([0, 0])), once(x, torch.tensor([90, 90])))


def test_batchnorm_depends_on_the_batch_only_in_train_mode():
    torch.manual_seed(0)
    m = build_model(**SMALL, norm="batch")
    assert any(isinstance(k, nn.BatchNorm2d) for k in m.modules())
    assert not any(isinstance(k, nn.GroupNorm) for k in m.modules())
    x, t = torch.randn(8, 1, 28, 28), torch.full((8,), 50)
    with torch.no_grad():
        m.train()
        alone, in_batch = m(x[:2], t[:2]), m(x, t)[:2]
        assert not torch.allclose(alone, in_batch, atol=1e-4)     # the other images change image 0's prediction
        m.eval()
        assert torch.allclose(m(x[:2], t[:2]), m(x, t)[:2], atol=1e-5)


@pytest.mark.parametrize("field, value", [("prediction", "score"), ("time_embedding", "nowhere"), ("norm", "layer")])
def test_unknown_switch_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=f"unknown {field}"):
        ModelConfig(**{field: value})


def test_configs_written_before_the_switches_still_load():
    old = {k: v for k, v in ModelConfig().to_dict().items() if k not in ("prediction", "time_embedding", "norm")}
    cfg = ModelConfig.from_dict(old)
    assert (cfg.prediction, cfg.time_embedding, cfg.norm) == ("eps", "every_block", "group")


def test_recalibrated_batchnorm_statistics_are_those_of_the_data():
    """After recalibration each BatchNorm layer's running mean and variance are the plain averages of the batch
    statistics its own weights produce on training-like inputs (here: the first layer, computed by hand)."""
    from ddpm_lib.ema import recalibrate_batchnorm

    torch.manual_seed(0)
    s = make_schedule("linear", 100)
    m = build_model(**SMALL, norm="batch").eval()
    data = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bn = m.down_blocks[0].norm1
    bn.running_mean.fill_(5.0)                                   # statistics that belong to other weights
    assert recalibrate_batchnorm(m, s, data, batches=4, batch_size=32, seed=1) == sum(
        isinstance(k, nn.BatchNorm2d) for k in m.modules())
    assert not m.training and bn.momentum == 0.1
    g = torch.Generator().manual_seed(1)                         # the same draws as the function's
    means, variances = [], []
    with torch.no_grad():
        for _ in range(4):
            x0 = data[torch.randint(0, 256, (32,), generator=g)]
            t = torch.randint(0, 100, (32,), generator=g)
            h = m.conv_in(s.q_sample(x0, t, torch.randn(x0.shape, generator=g)))   # what norm1 of block 0 sees
            means.append(h.mean(dim=(0, 2, 3)))
            variances.append(h.var(dim=(0, 2, 3), unbiased=True))
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack(variances).mean(0), atol=1e-4)
    assert recalibrate_batchnorm(build_model(**SMALL), s, data) == 0     # GroupNorm: nothing to do


def test_an_exported_batchnorm_model_carries_statistics_of_its_own_weights(tmp_path):
    """train() exports the EMA weights; ema_update copies the raw weights' BatchNorm statistics, so the export
    recomputes them for the EMA weights (exactly what recalibrate_batchnorm gives the training state's EMA model),
    while the training state keeps the copied ones."""
    from ddpm_lib.checkpoint import load_checkpoint
    from ddpm_lib.checkpoint import MODEL_FILE, STATE_FILE, load_train_state_model
    from ddpm_lib.ema import recalibrate_batchnorm
    from ddpm_lib.presets import TrainConfig
    from ddpm_lib.training import train

    s = make_schedule("linear", 100)
    data = torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = ModelConfig(arch="unet", norm="batch", attention=False, **SMALL)
    tc = TrainConfig(steps=6, batch_size=16, warmup_steps=2, checkpoint_every=100, log_every=2, seed=3,
                     precision="fp32", channels_last=False)
    train(cfg, s, tc, data, tmp_path, progress=False)
    loaded = load_checkpoint(tmp_path / MODEL_FILE)
    exported = loaded.model
    assert loaded.info["batchnorm_recalibrated"] is True
    ema, _, _ = load_train_state_model(tmp_path / STATE_FILE, ema=True)
    raw, _, _ = load_train_state_model(tmp_path / STATE_FILE, ema=False)
    bn = lambda model: [b for n, b in model.named_buffers() if "running" in n]   # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(bn(ema), bn(raw)))          # the state: copied from the raw model
    recalibrate_batchnorm(ema, s, data, seed=3)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(bn(exported), bn(ema)))
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(bn(exported), bn(raw)))
