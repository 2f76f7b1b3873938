"""Numerics chosen by measurement (ddpm_lib.numerics): the probe, its cache, the feature check, the AVX2 cap."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from ddpm_lib import machine, numerics
from ddpm_lib.models import ModelConfig, build_model
from ddpm_lib.machine import resolve_device
from ddpm_lib.numerics import Numerics, choose_numerics
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
    expected = "cuda" if torch.cuda.is_available() else "mps" if machine._mps_available() else "cpu"
    assert resolve_device("auto").type == expected == resolve_device(None).type
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_probe_leaves_the_random_streams_alone(cache):
    model = build_model(TINY.__class__(**{**TINY.to_dict(), "dropout": 0.5}))
    state = torch.get_rng_state()
    choose_numerics(model, purpose="train", batch_size=4, use_cache=False)
    assert torch.equal(state, torch.get_rng_state())


def test_every_variant_samples_the_same_images(cache):
    """fp32 in either memory format draws the same images (to float rounding); bf16 close to them.
    A sampler given no numerics runs fp32 contiguous, the same on every machine."""
    model, schedule = tiny_model(), make_schedule("linear", 50)
    ref = ddpm_sample(model, schedule, 6, seed=3, numerics=Numerics("fp32", False))
    cl = ddpm_sample(model, schedule, 6, seed=3, numerics=Numerics("fp32", True))
    bf = ddpm_sample(model, schedule, 6, seed=3, numerics=Numerics("bf16", False))
    auto = ddpm_sample(model, schedule, 6, seed=3, numerics=choose_numerics(model, purpose="sample", batch_size=6))
    assert torch.equal(ddpm_sample(model, schedule, 6, seed=3), ref)
    # an untrained net sends values to the thousands: compare relative to their size
    assert torch.allclose(ref, cl, rtol=1e-4, atol=1e-3)
    assert (bf - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert (auto - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert ref.is_contiguous() and cl.is_contiguous()
    # the model is handed back in the contiguous format it came in
    assert all(p.is_contiguous() for p in model.parameters())
    d_ref = ddim_sample(model, schedule, 6, steps=5, seed=3, numerics=Numerics("fp32", False))
    d_cl = ddim_sample(model, schedule, 6, steps=5, seed=3, numerics=Numerics("fp32", True))
    assert torch.allclose(d_ref, d_cl, rtol=1e-4, atol=1e-3)


def _run_capped(code: str, cache_dir, capped: bool = True) -> dict:
    """Run ``code`` in a fresh interpreter with the AVX2 cap (or with no cap at all); returns its last JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in (*AVX2_CAP, "DNNL_MAX_CPU_ISA")}
    env.update(AVX2_CAP if capped else {}, DDPM_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@x86
def test_under_the_avx2_cap_bf16_is_not_even_timed(tmp_path):
    """The feature check holds under the cap: no native bf16, so ``auto`` times fp32 alone and keeps it.

    This is what a learner's AVX2 laptop sees: bf16 emulated and many times slower, so ``auto``
    must never pick it, and it does not even spend the time to measure it. What the probe would
    do with bf16's emulated speed is checked with a fake clock (below), not by timing this machine.
    """
    got = _run_capped("""
        import json, torch
        from ddpm_lib import numerics
        from ddpm_lib.models import ModelConfig, build_model
        timed = []
        real_probe = numerics.probe
        def probe(model, candidates, **kw):
            timed.extend(c.name for c in candidates)
            return real_probe(model, candidates, **kw)
        numerics.probe = probe
        cfg = ModelConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention=False, num_timesteps=50)
        torch.manual_seed(0)
        model = build_model(cfg)
        candidates, note = numerics.candidates_for("cpu")
        chosen = numerics.choose_numerics(model, purpose="sample", batch_size=4)
        fixed = numerics.choose_numerics(model, purpose="train", batch_size=4, channels_last=False)
        print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "native": numerics.bf16_native(),
                          "candidates": [c.name for c in candidates], "note": note, "timed": timed,
                          "chosen": chosen.precision, "source": chosen.source,
                          "fixed": [fixed.name, fixed.source]}))
    """, tmp_path)
    assert got["capability"] == "AVX2" and got["native"] is False, got
    assert got["candidates"] == ["fp32 contiguous", "fp32 channels_last"] and "no native bf16" in got["note"], got
    assert got["timed"] == got["candidates"], got               # bf16 never reached the probe
    assert (got["chosen"], got["source"]) == ("fp32", "probe"), got
    assert got["fixed"] == ["fp32 contiguous", "feature check"], got   # nothing left to measure


class FakeClock:
    """Seconds that pass only when a fake step says so: the probe's timings, chosen by the test."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_steps(monkeypatch, clock: FakeClock, costs: dict, load=lambda now: 1.0) -> dict:
    """Replace the probe's real work: a call of candidate ``name`` takes ``costs[name]`` seconds of ``clock``
    (the first call, the warm-up, 10 times as long), times ``load(now)``; a name missing from ``costs`` fails
    to build, like an op a device lacks. Returns the number of calls of each candidate."""
    calls = {}

    def step_fn(*args, **kwargs):
        name = next(a for a in (*args, *kwargs.values()) if isinstance(a, Numerics)).name
        if name not in costs:
            raise RuntimeError(f"{name} is not supported here")

        def step():
            calls[name] = calls.get(name, 0) + 1
            clock.now += costs[name] * (10 if calls[name] == 1 else 1) * load(clock.now)
        return step

    monkeypatch.setattr(numerics, "_step_fn", step_fn)
    return calls


FOUR = [Numerics(p, cl) for p in ("fp32", "bf16") for cl in (False, True)]
# as an AVX2 CPU measures them (ms per call, relative): bf16 emulated, ten times slower than fp32
AVX2_COSTS = {"fp32 contiguous": 0.010, "fp32 channels_last": 0.008,
              "bf16 contiguous": 0.100, "bf16 channels_last": 0.090}


def test_the_probe_rates_each_candidate_by_its_fastest_call(monkeypatch):
    """Rates are the batch over the fastest call, whatever the warm-up or a burst of background load cost."""
    clock = FakeClock()
    burst = lambda now: 5.0 if 0.25 < now < 0.6 else 1.0        # the machine is busy for many rounds
    calls = fake_steps(monkeypatch, clock, {"fp32 contiguous": 0.010, "fp32 channels_last": 0.008}, burst)
    rates = numerics.probe(tiny_model(), FOUR[:2], batch_size=64, clock=clock, seconds=0.4, rounds=3)
    assert rates == {"fp32 contiguous": pytest.approx(6400), "fp32 channels_last": pytest.approx(8000)}
    # interleaved rounds: both saw the burst, and both were timed about ``seconds`` each
    assert abs(calls["fp32 contiguous"] - calls["fp32 channels_last"]) <= 1
    assert clock.now >= 0.4 * 2


def test_the_probe_stops_timing_a_hopeless_candidate_and_leaves_out_a_failing_one(monkeypatch):
    clock = FakeClock()
    costs = {k: v for k, v in AVX2_COSTS.items() if k != "bf16 channels_last"}     # that one fails to build
    calls = fake_steps(monkeypatch, clock, costs)
    rates = numerics.probe(tiny_model(), FOUR, batch_size=8, clock=clock, seconds=0.4, rounds=3)
    assert set(rates) == {"fp32 contiguous", "fp32 channels_last", "bf16 contiguous"}
    assert calls["bf16 contiguous"] == 2            # the warm-up and one round: at 1/10 of the best, it cannot win
    assert calls["fp32 contiguous"] > 3 and rates["bf16 contiguous"] == pytest.approx(8 / 0.100)
    # fewer rounds than asked only when the time is spent: at least ``rounds``, at least ``seconds`` each
    short = fake_steps(monkeypatch, clock, {"fp32 contiguous": 1.0, "fp32 channels_last": 1.0})
    numerics.probe(tiny_model(), FOUR[:2], batch_size=8, clock=clock, seconds=0.4, rounds=3)
    assert short == {"fp32 contiguous": 4, "fp32 channels_last": 4}


@pytest.mark.parametrize("native", [True, False])
def test_auto_keeps_what_the_probe_measured_fastest(cache, monkeypatch, native):
    """choose_numerics with the probe's timings fixed: the fastest fp32 layout, never emulated bf16, and where
    bf16 is native and faster, bf16; the decision is cached with the figures that made it."""
    monkeypatch.setattr(numerics, "bf16_native", lambda device="cpu": native)
    clock = FakeClock()
    monkeypatch.setattr(numerics, "probe", functools.partial(numerics.probe, clock=clock))
    costs = dict(AVX2_COSTS)
    fake_steps(monkeypatch, clock, costs)
    chosen = choose_numerics(tiny_model(), purpose="sample", batch_size=8)
    assert (chosen.name, chosen.source) == ("fp32 channels_last", "probe")
    assert set(chosen.rates) == ({c.name for c in FOUR} if native else {"fp32 contiguous", "fp32 channels_last"})
    assert choose_numerics(tiny_model(), purpose="sample", batch_size=8).source == "cache"
    # a CPU with native bf16 (AMX), where bf16 is the fastest: chosen there, and not where it is emulated
    costs.update({"bf16 contiguous": 0.004, "bf16 channels_last": 0.005})
    fast_bf16 = choose_numerics(tiny_model(), purpose="train", batch_size=8)
    assert fast_bf16.name == ("bf16 contiguous" if native else "fp32 channels_last")


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
