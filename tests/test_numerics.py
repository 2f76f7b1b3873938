"""Numerics chosen by measurement (ddpm_lib.numerics): the probe, its cache, the feature check, the AVX2 cap."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from ddpm_lib import numerics
from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.numerics import Numerics, choose_numerics, resolve_device
from ddpm_lib.sampling import ddim_sample, ddpm_sample
from ddpm_lib.schedule import make_schedule

TINY = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the AVX2 cap is x86-only")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path))
    return tmp_path / "numerics.json"


def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY)


def test_explicit_choices_measure_nothing(cache):
    chosen = choose_numerics(tiny_model(), purpose="train", batch_size=8, precision="fp32", channels_last=True)
    assert chosen == Numerics("fp32", True) and chosen.source == "explicit" and not chosen.rates
    assert not cache.exists()


def test_auto_probes_once_then_reads_the_cache(cache):
    model = tiny_model()
    first = choose_numerics(model, purpose="sample", batch_size=8)
    assert first.source in ("probe", "feature check")
    if first.source == "feature check":
        pytest.skip("only one candidate on this machine")
    expected = {c.name for c in numerics.candidates_for("cpu")[0]}
    assert set(first.rates) == expected and all(v > 0 for v in first.rates.values())
    # the choice is the fastest candidate the probe measured
    assert first.rates[first.name] == max(first.rates.values())
    second = choose_numerics(model, purpose="sample", batch_size=8)
    assert (second.precision, second.channels_last, second.source) == (first.precision, first.channels_last, "cache")
    assert second.rates == first.rates
    # another purpose or batch size is another decision
    choose_numerics(model, purpose="train", batch_size=8)
    choose_numerics(model, purpose="sample", batch_size=4)
    entries = numerics.cached_decisions()
    assert sorted((e["key"]["purpose"], e["key"]["batch_size"]) for e in entries) == [
        ("sample", 4), ("sample", 8), ("train", 8)]
    assert all(e["key"]["model"] == TINY.to_dict() for e in entries)
    assert numerics.clear_cache() == 3 and not cache.exists()
    assert choose_numerics(model, purpose="sample", batch_size=8).source == "probe"


def test_a_corrupt_cache_is_measured_again(cache):
    cache.write_text("{not json")
    chosen = choose_numerics(tiny_model(), purpose="sample", batch_size=4, precision="fp32")
    assert chosen.source == "probe"
    assert json.loads(cache.read_text())["version"] == 1


def test_the_feature_check_drops_bf16_where_it_is_emulated(cache, monkeypatch):
    monkeypatch.setattr(numerics, "bf16_native", lambda device="cpu": False)
    candidates, note = numerics.candidates_for("cpu")
    assert [c.name for c in candidates] == ["fp32 contiguous", "fp32 channels_last"] and "no native bf16" in note
    # with the memory format fixed, nothing is left to measure
    chosen = choose_numerics(tiny_model(), purpose="train", batch_size=8, channels_last=False)
    assert chosen == Numerics("fp32", False) and chosen.source == "feature check"
    # an explicit bf16 is still obeyed
    assert choose_numerics(tiny_model(), precision="bf16", channels_last=False).precision == "bf16"


def test_bad_requests_fail_clearly():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        choose_numerics(tiny_model(), precision="fp16")
    with pytest.raises(ValueError, match="purpose must be one of train, sample"):
        choose_numerics(tiny_model(), purpose="eval")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        choose_numerics(tiny_model(), batch_size=0)
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_auto_device_is_the_best_present():
    expected = "cuda" if torch.cuda.is_available() else "mps" if numerics._mps_available() else "cpu"
    assert resolve_device("auto").type == expected == resolve_device(None).type
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_probe_leaves_the_random_streams_alone(cache):
    model = build_model(TINY.__class__(**{**TINY.to_dict(), "dropout": 0.5}))
    state = torch.get_rng_state()
    choose_numerics(model, purpose="train", batch_size=4, use_cache=False)
    assert torch.equal(state, torch.get_rng_state())


def test_every_variant_samples_the_same_images(cache):
    """fp32 in either memory format draws the same images (to float rounding); bf16 close to them."""
    model, schedule = tiny_model(), make_schedule("linear", 50)
    ref = ddpm_sample(model, schedule, 6, seed=3, precision="fp32", channels_last=False)
    cl = ddpm_sample(model, schedule, 6, seed=3, precision="fp32", channels_last=True)
    bf = ddpm_sample(model, schedule, 6, seed=3, precision="bf16", channels_last=False)
    auto = ddpm_sample(model, schedule, 6, seed=3)
    # an untrained net sends values to the thousands: compare relative to their size
    assert torch.allclose(ref, cl, rtol=1e-4, atol=1e-3)
    assert (bf - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert (auto - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert ref.is_contiguous() and cl.is_contiguous()
    # the model is handed back in the contiguous format it came in
    assert all(p.is_contiguous() for p in model.parameters())
    d_ref = ddim_sample(model, schedule, 6, steps=5, seed=3, precision="fp32", channels_last=False)
    d_cl = ddim_sample(model, schedule, 6, steps=5, seed=3, precision="fp32", channels_last=True)
    assert torch.allclose(d_ref, d_cl, rtol=1e-4, atol=1e-3)


def _run_capped(code: str, cache_dir, capped: bool = True) -> dict:
    """Run ``code`` in a fresh interpreter with the AVX2 cap (or with no cap at all); returns its last JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in (*AVX2_CAP, "DNNL_MAX_CPU_ISA")}
    env.update(AVX2_CAP if capped else {}, DDPM_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@x86
def test_under_the_avx2_cap_auto_keeps_fp32_and_the_probe_agrees(tmp_path):
    """The feature check (no native bf16 under the cap) and a probe that is made to time bf16 agree.

    This is what a learner's AVX2 laptop sees: bf16 emulated and many times slower, so ``auto``
    must never pick it, and it does not even spend the time to measure it.
    """
    got = _run_capped("""
        import json, torch
        from ddpm_lib import numerics
        from ddpm_lib.presets import PRESETS
        from ddpm_lib.models import build_model
        torch.manual_seed(0)
        model = build_model(PRESETS["shipped"].model)
        chosen = numerics.choose_numerics(model, purpose="sample", batch_size=8)
        # time all four, bf16 included, as if the feature check did not exist
        rates = numerics.probe(model, [numerics.Numerics(p, cl) for p in ("fp32", "bf16") for cl in (False, True)],
                               purpose="sample", batch_size=8)
        print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "native": numerics.bf16_native(),
                          "chosen": chosen.name, "source": chosen.source, "rates": rates}))
    """, tmp_path)
    assert got["capability"] == "AVX2" and got["native"] is False, got
    assert got["chosen"].startswith("fp32"), got
    rates = got["rates"]
    fastest_bf16 = max(v for k, v in rates.items() if k.startswith("bf16"))
    slowest_fp32 = min(v for k, v in rates.items() if k.startswith("fp32"))
    assert fastest_bf16 < slowest_fp32 / 2, rates        # emulated bf16 loses by far: the check is safe


@x86
def test_the_cap_is_part_of_the_cache_key(tmp_path, monkeypatch):
    """A decision taken under the cap is never reused without it, and the other way round."""
    code = """
        import json, torch
        from ddpm_lib import numerics
        from ddpm_lib.models import ModelConfig, build_model
        cfg = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
        print(json.dumps(numerics.choose_numerics(build_model(cfg), purpose="sample", batch_size=4,
                                                  precision="fp32").source))
    """
    assert _run_capped(code, tmp_path, capped=False) == "probe"
    assert _run_capped(code, tmp_path, capped=True) == "probe"      # not the uncapped decision
    assert _run_capped(code, tmp_path, capped=False) == "cache"
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path))
    caps = [e["key"]["machine"]["cap"] for e in numerics.cached_decisions()]
    assert sorted(caps, key=len) == [{}, AVX2_CAP]


def test_a_model_the_probe_cannot_run_falls_back_to_fp32(cache):
    """A model of one's own, without a config, that refuses the probe's timesteps: sampling still works."""

    class SmallT(torch.nn.Module):            # knows only t < 10; the probe draws t up to 999
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.1))

        def forward(self, x, t):
            if int(t.max()) >= 10:
                raise ValueError(f"t must be below 10, got {int(t.max())}")
            return self.scale * x

    chosen = choose_numerics(SmallT(), purpose="sample", batch_size=4, image_shape=(1, 8, 8))
    assert chosen == Numerics("fp32", False) and chosen.source.startswith("fallback")
    assert not cache.exists()                # nothing measured, nothing cached
    x = ddpm_sample(SmallT(), make_schedule("cosine", 10), 3, seed=0, image_shape=(1, 8, 8))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()
