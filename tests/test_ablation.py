"""experiments/ablation.py at toy scale: the budget follows the measured speeds, entries are complete, a rerun resumes."""

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import ablation  # noqa: E402
from _results import ResultsFile  # noqa: E402

from ddpm_lib.checkpoint import read_tensors  # noqa: E402
from ddpm_lib.training import STATE_FILE  # noqa: E402


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """Five variants, a few steps of batch 16 in fp32 (nothing probed), 40 images: the script's logic at seconds of CPU."""
    from ddpm_lib.data import load_mnist

    data = load_mnist("train").as_model_input()[:512]
    variants = {name: ablation.VARIANTS[name] for name in ("baseline", "raw_weights", "alg2_no_noise", "cold_blur",
                                                                "lr_decay")}
    variants = {name: replace(v, sampler=(v.sampler[0], 4, v.sampler[2])) for name, v in variants.items()}
    variants["cold_blur"] = replace(variants["cold_blur"], T=4)
    monkeypatch.setattr(ablation, "VARIANTS", variants)
    monkeypatch.setattr(ablation, "TRAINED", [n for n, v in variants.items() if v.from_run is None])
    base = ablation.BASE
    monkeypatch.setattr(ablation, "BASE", replace(base, train=replace(base.train, batch_size=16, precision="fp32",
                                                                      channels_last=False)))
    monkeypatch.setattr(ablation, "TEN_MINUTE_STEPS", 6)
    monkeypatch.setattr(ablation, "CALIBRATION_SECONDS", 0.5)
    monkeypatch.setattr(ablation, "N", 40)
    monkeypatch.setattr(ablation, "BATCH", 40)
    monkeypatch.setattr(ablation, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(ablation, "training_data", lambda: data)
    monkeypatch.setattr(ablation, "_MIXTURE", None)
    return tmp_path / "ablation.json"


def test_toy_ablation_runs_and_resumes(toy):
    assert ablation.main(["--out", str(toy), "--sample-seeds", "0"]) == 0
    entries = json.loads(toy.read_text())["entries"]
    cal = entries["calibration"]
    for name in ("baseline", "cold_blur"):      # the budget: the baseline's steps, scaled by the measured speed
        assert cal["budget_steps"][name] == round(6 * cal["steps_per_second"][name] / cal["steps_per_second"]["baseline"])
    for name in ("baseline", "cold_blur"):
        t = entries[f"train:{name}:seed0"]
        assert t["steps"] == cal["budget_steps"][name] and t["measured"]["command"].startswith("python")
    # a recipe lever costs what the baseline costs per step: it is not timed, it gets the baseline's budget,
    # and its learning rate has fallen to lr / budget by the last step (warm-up and decay multiply)
    assert "lr_decay" not in cal["budget_steps"] and entries["train:lr_decay:seed0"]["steps"] == cal["budget_steps"]["baseline"]
    budget = cal["budget_steps"]["baseline"]
    config = ablation.VARIANTS["lr_decay"].train_config(budget, 0)
    _, meta = read_tensors(ablation.RUNS / "lr_decay_seed0" / STATE_FILE)
    assert config.cooldown_steps == budget
    # step budget - 1: warm-up factor budget / warmup_steps, decay factor 1 / budget
    assert meta["param_groups"][0]["lr"] == pytest.approx(config.lr / config.warmup_steps)
    evals = {k.split(":")[1]: v for k, v in entries.items() if k.startswith("eval:")}
    assert set(evals) == {"baseline", "raw_weights", "alg2_no_noise", "cold_blur", "lr_decay"}
    for name, e in evals.items():
        assert e["n"] == 40 and e["fd"] > 0 and e["fd_floor"] > 0
        images = ablation.decode_images(e["samples"])
        assert images.shape == (ablation.SHOWN, 28, 28) and images.dtype == torch.uint8
    assert evals["raw_weights"]["ema"] is False and evals["baseline"]["ema"] is True
    assert evals["alg2_no_noise"]["options"] == {"variance": "none"} and evals["cold_blur"]["sampler"] == "cold"
    assert evals["raw_weights"]["fd"] != evals["baseline"]["fd"]     # the same run, other weights
    before = toy.read_text()
    assert ablation.main(["--out", str(toy), "--sample-seeds", "0"]) == 0
    assert toy.read_text() == before                                   # nothing to do: nothing rerun or rewritten

    # runs/ is not committed: scoring a run whose state is gone says how to get it back, and --redo retrains it
    # and re-scores every variant that samples from it (the same computation: the same scores, bit for bit)
    shutil.rmtree(ablation.RUNS / "baseline_seed0")
    ResultsFile(toy, "toy").drop(["eval:raw_weights:train0:sample0"])
    with pytest.raises(SystemExit, match="--redo baseline"):
        ablation.main(["--out", str(toy), "--sample-seeds", "0", "--only", "raw_weights"])
    assert ablation.main(["--out", str(toy), "--sample-seeds", "0", "--redo", "baseline"]) == 0
    redone = json.loads(toy.read_text())["entries"]
    for name in ("baseline", "raw_weights", "alg2_no_noise"):
        assert redone[f"eval:{name}:train0:sample0"]["fd"] == evals[name]["fd"]
    assert redone["eval:lr_decay:train0:sample0"] == entries["eval:lr_decay:train0:sample0"]   # another run


def test_a_variant_added_later_is_timed_beside_the_baseline_again(toy, monkeypatch):
    assert ablation.main(["--out", str(toy), "--sample-seeds", "0", "--only", "baseline"]) == 0
    first = json.loads(toy.read_text())["entries"]["calibration"]
    variants = dict(ablation.VARIANTS, half_width=ablation.Variant("half the width", {"base_channels": 16},
                                                                   sampler=ablation.VARIANTS["baseline"].sampler))
    monkeypatch.setattr(ablation, "VARIANTS", variants)
    monkeypatch.setattr(ablation, "TRAINED", [n for n, v in variants.items() if v.from_run is None])
    assert ablation.main(["--out", str(toy), "--sample-seeds", "0", "--only", "half_width"]) == 0
    entries = json.loads(toy.read_text())["entries"]
    assert entries["calibration"] == first                              # the first round is kept as it was
    second = entries["calibration:2"]
    assert set(second["budget_steps"]) == {"baseline", "half_width"}   # measured beside the baseline again
    rate = second["steps_per_second"]
    assert entries["train:half_width:seed0"]["steps"] == round(6 * rate["half_width"] / rate["baseline"])
    merged = ablation.merged_calibration([first, second])
    assert merged["budget_steps"]["baseline"] == first["budget_steps"]["baseline"] == 6
    assert merged["relative_speed"]["half_width"] == rate["half_width"] / rate["baseline"]


def test_kept_samples_give_a_paired_comparison_over_training_seeds(toy, monkeypatch, tmp_path):
    """--keep-samples keeps every image (compressed, committed); --paired compares a variant with the baseline,
    one group per training seed that both have; a rerun changes nothing."""
    from _results import load_images

    monkeypatch.setattr(ablation, "SAMPLES", tmp_path / "samples")
    args = ["--out", str(toy), "--only", "baseline", "raw_weights", "--sample-seeds", "0", "--keep-samples"]
    assert ablation.main([*args, "--train-seeds", "0", "--paired"]) == 0
    one = json.loads(toy.read_text())["entries"]["paired:raw_weights"]
    assert one["train_seeds"] == [0] and one["n_per_group"] == [40] and "paired:baseline" not in json.loads(
        toy.read_text())["entries"]
    assert ablation.main([*args, "--train-seeds", "1", "--paired"]) == 0
    entries = json.loads(toy.read_text())["entries"]
    for name in ("baseline", "raw_weights"):
        for seed in (0, 1):
            images = load_images(ablation.kept_path(name, seed, 0))
            assert images.shape == (40, 28, 28) and images.dtype == "uint8"
            shown = ablation.decode_images(entries[f"eval:{name}:train{seed}:sample0"]["samples"])
            assert (torch.from_numpy(images[:ablation.SHOWN]) == shown).all()    # the images that were scored
    both = entries["paired:raw_weights"]
    assert both["train_seeds"] == [0, 1] and both["n_per_group"] == [40, 40] and both["paired"] is True
    assert both["low"] <= both["ratio"] <= both["high"] and both["verdict"] in ("better", "worse", "unresolved")
    # the groups combine as a geometric mean of the per-seed ratios, the first of which is the one-seed entry's
    assert both["ratio"] == pytest.approx((both["ratio_per_group"][0] * both["ratio_per_group"][1]) ** 0.5)
    assert both["ratio_per_group"][0] == pytest.approx(one["ratio"])
    before = toy.read_text()
    assert ablation.main([*args, "--train-seeds", "0", "1"]) == 0
    assert toy.read_text() == before                                   # kept and scored: nothing redone

    # --seed-null: a recipe against itself, training seed 1 against seed 0, one group; its ratio is the quotient
    # of the two runs' FDs (the same x_T, the same reference)
    assert ablation.main([*args, "--train-seeds", "0", "--seed-null"]) == 0
    entries = json.loads(toy.read_text())["entries"]
    null = entries["seed_null:baseline"]
    assert null["train_seeds"] == [0, 1] and null["n_per_group"] == [40] and null["paired"] is True
    fd = [entries[f"eval:baseline:train{s}:sample0"]["fd"] for s in (0, 1)]
    assert null["ratio"] == pytest.approx(fd[1] / fd[0], rel=1e-5)
    assert "seed_null:raw_weights" in entries

    # a variant is also compared with the variants of its paired_with, paired:NAME:vs:OTHER; per seed, that ratio
    # is the quotient of the two variants' ratios to the baseline (the same features, the same FD)
    monkeypatch.setitem(ablation.VARIANTS, "raw_weights",
                        replace(ablation.VARIANTS["raw_weights"], paired_with=("alg2_no_noise",)))
    assert ablation.main([*args[:5], "alg2_no_noise", *args[5:], "--train-seeds", "0", "1", "--paired"]) == 0
    entries = json.loads(toy.read_text())["entries"]
    other = entries["paired:raw_weights:vs:alg2_no_noise"]
    assert other["vs"] == "alg2_no_noise" and other["train_seeds"] == [0, 1]
    for k in (0, 1):
        assert other["ratio_per_group"][k] == pytest.approx(
            both["ratio_per_group"][k] / entries["paired:alg2_no_noise"]["ratio_per_group"][k])


def test_the_half_width_preset_buys_the_steps_the_ablation_measured():
    """Preset half_width: the shipped run's 55 and 10 minutes, in the steps of a network 2.4 times as fast."""
    from ddpm_lib.presets import TEN_MINUTE_STEPS, PRESETS, SHIPPED_STEPS

    entries = json.loads((ROOT / "experiments" / "results" / "ablation.json").read_text())["entries"]
    rate = entries["calibration"]["steps_per_second"]
    recipe, shipped = PRESETS["half_width"], PRESETS["shipped"]
    relative = rate["half_width"] / rate["baseline"]
    assert recipe.train.steps == round(SHIPPED_STEPS * relative)
    ten_minutes = entries["train:half_width:seed0"]["steps"]
    assert recipe.train.snapshot_steps == (round(TEN_MINUTE_STEPS * relative),) == (ten_minutes,)
    assert recipe.model == replace(shipped.model, base_channels=16)
    assert replace(recipe.train, steps=1, snapshot_steps=()) == replace(shipped.train, steps=1, snapshot_steps=())
