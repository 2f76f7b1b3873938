"""Class-conditional UNet, label dropout and classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib.guidance import ClassifierFreeGuidance, check_class_labels, drop_labels
from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.sampling import ddim_sample, dpm_solver_sample
from ddpm_lib.schedule import make_schedule
from ddpm_lib.training import TrainConfig, train

T = 50
SCHEDULE = make_schedule("linear", T)
CFG = ModelConfig(arch="unet", base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                  num_timesteps=T, image_size=8, num_classes=10)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(CFG).eval()
    with torch.no_grad():     # make the class embedding matter: random but large
        net.class_emb.weight.mul_(5.0)
    return net


def test_class_embedding_has_a_null_row_and_none_means_null(model):
    assert model.class_emb.num_embeddings == 11
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 20, 40])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.full((3,), 10)))
        assert not torch.allclose(model(x, t, torch.tensor([1, 2, 3])), model(x, t))


def test_guided_eps_is_the_papers_formula_and_diffusers_scale(model):
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([3, 10, 30, 49]), torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        cond, null = model(x, t, y), model(x, t)
        for w in (0.0, 0.5, 2.0, 8.0):
            guided = ClassifierFreeGuidance(model, y, w)(x, t)
            torch.testing.assert_close(guided, (1 + w) * cond - w * null, atol=1e-5, rtol=1e-5)   # Eq. 6
            scale = 1 + w                                                                       # diffusers
            torch.testing.assert_close(guided, null + scale * (cond - null), atol=1e-5, rtol=1e-5)
        assert torch.equal(ClassifierFreeGuidance(model, y, 0.0)(x, t), cond)                  # w = 0: one pass


def test_samplers_draw_guided_images_per_image_labels(model):
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    a = ddim_sample(model, SCHEDULE, 6, steps=10, seed=1, class_labels=labels, guidance=1.0, batch_size=4)
    assert a.shape == (6, 1, 8, 8)
    single = ddim_sample(model, SCHEDULE, 1, steps=10, class_labels=[5], guidance=1.0,
                         x_T=torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3)))
    assert torch.isfinite(single).all()
    # each batch takes its own slice of the labels: batches of 4 and 2 give what two separate draws give
    gen = torch.Generator().manual_seed(1)
    xT = torch.randn(6, 1, 8, 8, generator=gen)
    c = ddim_sample(model, SCHEDULE, 6, steps=10, class_labels=labels, guidance=1.0, x_T=xT, batch_size=4)
    for part in (slice(0, 4), slice(4, 6)):
        alone = ddim_sample(model, SCHEDULE, len(labels[part]), steps=10, class_labels=labels[part], guidance=1.0,
                            x_T=xT[part])
        torch.testing.assert_close(c[part], alone, atol=1e-5, rtol=0)


def test_w_zero_is_the_conditional_model_and_guidance_changes_samples(model):
    xT = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = [4, 4, 4]
    plain = dpm_solver_sample(model, SCHEDULE, 3, steps=10, class_labels=labels, guidance=0.0, x_T=xT)
    guided = dpm_solver_sample(model, SCHEDULE, 3, steps=10, class_labels=labels, guidance=3.0, x_T=xT)
    other = dpm_solver_sample(model, SCHEDULE, 3, steps=10, class_labels=[7, 7, 7], guidance=0.0, x_T=xT)
    assert not torch.allclose(plain, guided) and not torch.allclose(plain, other)


def test_bad_labels_and_weights_fail_clearly(model):
    unconditional = build_model(arch="unet", base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                                attention=False, num_timesteps=T, image_size=8)
    with pytest.raises(ValueError, match="unconditional"):
        check_class_labels(unconditional, [3])
    with pytest.raises(ValueError, match="between 0 and 9, got \\[10\\]"):
        check_class_labels(model, [1, 10])
    with pytest.raises(ValueError, match="guidance weight w must be a number >= 0"):
        ClassifierFreeGuidance(model, [1], -1.0)
    with pytest.raises(ValueError, match="needs class labels"):
        ddim_sample(model, SCHEDULE, 2, steps=5, guidance=2.0)
    with pytest.raises(ValueError, match="one label or one per image"):
        ddim_sample(model, SCHEDULE, 3, steps=5, class_labels=[1, 2])
    with pytest.raises(ValueError, match="takes no class labels"):
        unconditional(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ValueError, match="needs arch 'unet'"):
        ModelConfig(arch="simple", num_classes=10)


def test_label_dropout_rate_and_null_label():
    y = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(y, 10, 0.1, torch.Generator().manual_seed(1))
    frac = float((dropped == 10).float().mean())
    assert abs(frac - 0.1) < 4 * (0.1 * 0.9 / len(y)) ** 0.5           # binomial: within 4 standard errors
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])


def test_conditional_training_needs_labels_and_learns_with_them(tmp_path):
    data = torch.rand(128, 1, 8, 8) * 2 - 1
    labels = torch.arange(128) % 10
    tc = TrainConfig(steps=3, batch_size=32, warmup_steps=1, checkpoint_every=10, log_every=1)
    with pytest.raises(ValueError, match="class-conditional .* pass the training labels"):
        train(CFG, SCHEDULE, tc, data, progress=False)
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        train(CFG, SCHEDULE, tc, data, progress=False, labels=labels + 5)
    result = train(CFG, SCHEDULE, tc, data, tmp_path, progress=False, labels=labels)
    assert result.step == 3 and all(torch.isfinite(torch.tensor(h[1])) for h in result.history)
    # resume works for a conditional run: 3 + 2 steps equal 5 straight
    from dataclasses import replace

    straight = train(CFG, SCHEDULE, replace(tc, steps=5), data, tmp_path / "straight", progress=False, labels=labels)
    resumed = train(CFG, SCHEDULE, replace(tc, steps=5), data, tmp_path, progress=False, labels=labels)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
