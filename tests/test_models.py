"""Both noise predictors: shapes, the time embedding, clear errors on bad input."""

import math

import pytest
import torch

from ddpm_lib.models import ModelConfig, SimpleUNet, UNet, build_model, sinusoidal_embedding
from ddpm_lib.presets import PRESETS


def test_sinusoidal_embedding_values():
    t = torch.tensor([0, 1, 37])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin(0) = 0, cos(0) = 1
    for j in range(4):
        freq = math.exp(-math.log(10000.0) * j / 4)
        assert float(emb[2, j]) == pytest.approx(math.sin(37 * freq), abs=1e-5)
        assert float(emb[2, 4 + j]) == pytest.approx(math.cos(37 * freq), abs=1e-5)
    assert torch.allclose(emb.pow(2).view(3, 2, 4).sum(1), torch.ones(3, 4))  # sin^2 + cos^2 = 1


def test_embedding_distinguishes_timesteps():
    emb = sinusoidal_embedding(torch.arange(1000), 32)
    d = torch.cdist(emb, emb)
    assert float(d[~torch.eye(1000, dtype=bool)].min()) > 1e-3


@pytest.mark.parametrize("arch", ["unet", "simple"])
@pytest.mark.parametrize("mults", [(1, 2), (1, 2, 2)])
def test_output_shape(arch, mults):
    torch.manual_seed(0)
    m = build_model(arch=arch, base_channels=16, channel_mults=mults, num_res_blocks=1)
    assert isinstance(m, UNet if arch == "unet" else SimpleUNet)
    x = torch.randn(3, 1, 28, 28)
    out = m(x, torch.tensor([0, 500, 999]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_unet_uses_time():
    torch.manual_seed(0)
    m = build_model(base_channels=16, channel_mults=(1, 2)).eval()
    x = torch.randn(1, 1, 28, 28)
    assert not torch.allclose(m(x, torch.tensor([10])), m(x, torch.tensor([900])))


def test_shipped_preset_size():
    m = build_model(PRESETS["shipped"].model)
    assert 1.0e6 < m.num_parameters() < 1.2e6
    assert m.num_parameters() * 4 < 20e6  # checkpoint under 20 MB


def test_config_round_trip():
    c = ModelConfig(arch="simple", base_channels=8, channel_mults=[1, 2])
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**c.to_dict(), "width": 3})
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(arch="transformer")
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(channel_mults=(1, 2, 2, 2))  # 28 is not divisible by 8


@pytest.mark.parametrize("arch", ["unet", "simple"])
def test_bad_inputs_are_rejected(arch):
    m = build_model(arch=arch, base_channels=8, channel_mults=(1, 2), num_res_blocks=1)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 28, 28\).*unsqueeze"):
        m(torch.zeros(2, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"expected images of shape"):
        m(torch.zeros(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"timestep out of range.*\[0, 1000\)"):
        m(torch.zeros(2, 1, 28, 28), torch.tensor([1, 1000]))
    with pytest.raises(ValueError, match=r"timesteps of shape \(2,\)"):
        m(torch.zeros(2, 1, 28, 28), torch.tensor(3))
    with pytest.raises(TypeError, match="integers, or real numbers"):
        m(torch.zeros(2, 1, 28, 28), torch.tensor([True, False]))


def test_real_valued_timesteps_interpolate_the_integer_ones():
    """A float timestep is a point between two steps: at an integer value the network's output is exactly the
    integer timestep's, and between steps it moves continuously (the embedding is smooth in t)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(base_channels=16, num_res_blocks=1, num_timesteps=100)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        at_int = model(x, torch.tensor([10, 99]))
        at_float = model(x, torch.tensor([10.0, 99.0]))
        near = model(x, torch.tensor([10.001, 98.999]))
        between = model(x, torch.tensor([10.5, 98.5]))
    torch.testing.assert_close(at_float, at_int, rtol=0, atol=1e-6)
    assert (near - at_int).abs().max() < 1e-2 < (between - at_int).abs().max()
    for bad in (torch.tensor([-0.5, 3.0]), torch.tensor([3.0, 99.5]), torch.tensor([float("nan"), 3.0])):
        with pytest.raises(ValueError, match=r"expected finite numbers in \[0, 99\]"):
            model(x, bad)
    with pytest.raises(TypeError, match="integers, or real numbers"):
        model(x, torch.tensor([True, False]))
