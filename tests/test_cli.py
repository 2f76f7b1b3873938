"""The command line: train a tiny model, sample it to .npy and .png, inspect it, refuse bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddpm_lib.cli import main


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--steps", "20", "--out-dir", str(out), "--no-progress",
                 "--export", str(out / "tiny.safetensors")]) == 0
    return out / "tiny.safetensors"


def test_sample_npy_round_trip(tiny_checkpoint, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for path in (a, b):
        assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "5", "--seed", "3",
                     "--precision", "fp32", "--no-channels-last", "--out", str(path)]) == 0
    x = np.load(a)
    assert x.shape == (5, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x, np.load(b)), "the same seed must give the same samples"


def test_sample_png(tiny_checkpoint, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "4", "--sampler", "ddim",
                 "--steps", "10", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.size[0] >= 2 * 28 and img.size[1] >= 2 * 28


def test_info_as_subprocess(tiny_checkpoint):
    proc = subprocess.run([sys.executable, "-m", "ddpm_lib", "info", "--checkpoint", str(tiny_checkpoint)],
                          capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert info["schedule"] == {"kind": "linear", "T": 100}
    assert info["info"]["step"] == 20
    # the program refuses bad input in one line, exit status 2, no traceback (tests/test_cli_safety.py: the rest)
    proc = subprocess.run([sys.executable, "-m", "ddpm_lib", "info", "--checkpoint", str(tiny_checkpoint),
                           "--sample-batch-size", "-1"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == ("error: --sample-batch-size must be between 1 and 1000000, "
                                                    "got -1\n")


def test_bad_requests_fail_clearly(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit, match="must end in .png"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.jpg")])
    with pytest.raises(SystemExit, match="--steps must be between 1 and 100 for --sampler ddpm"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--steps", "500", "--out", str(tmp_path / "x.npy")])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    assert main(["info", "--checkpoint", str(broken)]) == 1
    assert "corrupt" in capsys.readouterr().err
    # a learning-rate cool-down over the last 5 minutes of the run needs a run of 5 minutes or more
    with pytest.raises(SystemExit, match="--cooldown-minutes=5.0 needs a time budget.*set --max-minutes"):
        main(["train", "--preset", "tiny", "--max-minutes", "2", "--cooldown-minutes", "5",
              "--out-dir", str(tmp_path / "run")])
    # ... and a cool-down in steps fits inside the run's steps
    with pytest.raises(SystemExit, match=r"--cooldown-steps must be between 0 and steps \(200\), got 500"):
        main(["train", "--preset", "tiny", "--cooldown-steps", "500", "--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_evaluate_prints_json_with_the_floor(tiny_checkpoint, tmp_path, capsys):
    out, kept = tmp_path / "eval.json", tmp_path / "samples.npy"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--n", "20", "--sampler", "ddim",
                 "--steps", "5", "--clip-x0", "--out", str(out), "--samples-out", str(kept)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["n"] == 20 and report["sampler"] == "ddim" and report["steps"] == 5 and report["clip_x0"] is True
    assert report["fd"] > 0 and report["fd_floor"] > 0
    assert report["fd_ratio"] == pytest.approx(report["fd"] / report["fd_floor"])
    assert sum(report["digit_counts"]) == 20

    # the kept samples are the scored ones: scoring them again gives the same figures
    from ddpm_lib.metrics import evaluate_samples

    samples = np.load(kept)
    assert samples.shape == (20, 28, 28) and samples.dtype == np.uint8
    again = evaluate_samples(samples)
    assert again == {k: v for k, v in report.items() if k in again}


def test_evaluate_several_seeds_reports_each_and_their_mean(tiny_checkpoint, tmp_path, capsys):
    # numerics pinned: runs compared with each other must not depend on what the probe measures under load
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--n", "20", "--sampler", "ddim", "--steps", "5",
              "--precision", "fp32", "--no-channels-last"]
    singles = []
    for seed in (0, 1):
        assert main(common + ["--seed", str(seed)]) == 0
        singles.append(json.loads(capsys.readouterr().out))
    out = tmp_path / "seeds.json"
    assert main(common + ["--seeds", "0", "1", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    # every seed is scored exactly as a single-seed run scores it (the paths are deterministic)
    strip = lambda r: {k: v for k, v in r.items() if k != "sample_seconds"}
    assert [strip(r) for r in report["per_seed"]] == [strip(r) for r in singles]
    assert singles[0]["fd"] != singles[1]["fd"], "another seed must draw other samples"
    assert report["seeds"] == [0, 1] and report["sampler"] == "ddim" and report["steps"] == 5
    assert report["fd"] == pytest.approx((singles[0]["fd"] + singles[1]["fd"]) / 2)
    assert report["fd_floor"] == pytest.approx((singles[0]["fd_floor"] + singles[1]["fd_floor"]) / 2)
    assert report["fd_ratio"] == pytest.approx(report["fd"] / report["fd_floor"])
    assert report["fd_ratio_per_seed"] == [s["fd_ratio"] for s in singles]
    assert report["fd_ratio_sd"] == pytest.approx(abs(singles[0]["fd_ratio"] - singles[1]["fd_ratio"]) / 2 ** 0.5)
    # the digit histogram pools the samples of both seeds; each seed's extremes are kept too
    assert report["digit_counts"] == [a + b for a, b in zip(singles[0]["digit_counts"], singles[1]["digit_counts"])]
    assert sum(report["digit_counts"]) == 40
    assert report["min_fraction"] == min(report["digit_fractions"]) == min(report["digit_counts"]) / 40
    assert report["min_fraction_per_seed"] == [s["min_fraction"] for s in singles]

    with pytest.raises(SystemExit, match="not repeat"):
        main(common + ["--seeds", "1", "1"])
    with pytest.raises(SystemExit, match="one seed"):
        main(common + ["--seeds", "0", "1", "--samples-out", str(tmp_path / "x.npy")])


def test_an_interrupted_evaluation_resumes_where_it_stopped(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """--out keeps every seed scored so far; the same command, or one with more seeds, scores only the rest,
    and the result is the one an uninterrupted run writes. A file of other settings is refused, not mixed in."""
    import ddpm_lib.metrics

    # numerics pinned: the runs compared here must not depend on what the probe measures under load
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--n", "20", "--sampler", "ddim", "--steps", "5",
              "--precision", "fp32", "--no-channels-last"]

    def strip(r):   # wall-clock times depend on the load: everything else must be equal
        r = {k: v for k, v in r.items() if k != "sample_seconds"}
        return {**r, "per_seed": [strip(p) for p in r["per_seed"]]} if "per_seed" in r else r

    assert main(common + ["--seeds", "0", "1", "2", "--out", str(tmp_path / "whole.json")]) == 0
    whole = json.loads(capsys.readouterr().out)

    out = tmp_path / "eval.json"
    score = ddpm_lib.metrics.evaluate_samples

    def interrupted_at_seed_2(images, seed=0, **kw):
        if seed == 2:
            raise KeyboardInterrupt
        return score(images, seed=seed, **kw)

    monkeypatch.setattr(ddpm_lib.metrics, "evaluate_samples", interrupted_at_seed_2)
    with pytest.raises(KeyboardInterrupt):
        main(common + ["--seeds", "0", "1", "2", "--out", str(out)])
    assert json.loads(out.read_text())["seeds"] == [0, 1]          # what was scored is on disk
    monkeypatch.setattr(ddpm_lib.metrics, "evaluate_samples", score)
    capsys.readouterr()

    assert main(common + ["--seeds", "0", "1", "2", "--out", str(out)]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed == json.loads(out.read_text())
    assert [strip(r) for r in resumed["per_seed"]] == [strip(r) for r in whole["per_seed"]]
    assert strip(resumed) == strip(whole)

    # seeds already scored are not drawn again (even a subset of them), only reported
    monkeypatch.setattr(ddpm_lib.metrics, "evaluate_samples", interrupted_at_seed_2)
    assert main(common + ["--seeds", "1", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "seed 1: scored before" in err and "seed 2: scored before" in err
    monkeypatch.setattr(ddpm_lib.metrics, "evaluate_samples", score)

    with pytest.raises(SystemExit, match=r"holds an evaluation of something else \(steps: 5 there, 4 now\)"):
        main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--n", "20", "--sampler", "ddim", "--steps", "4",
              "--precision", "fp32", "--no-channels-last", "--seeds", "0", "3", "--out", str(out)])
    out.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="exists but is not an evaluate report"):
        main(common + ["--seeds", "0", "1", "--out", str(out)])


def test_device_requests_fail_clearly(tiny_checkpoint, tmp_path):
    import torch

    with pytest.raises(SystemExit, match="not a device name"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--device", "gpu0", "--out", str(tmp_path / "x.npy")])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            main(["sample", "--checkpoint", str(tiny_checkpoint), "--device", "cuda", "--out", str(tmp_path / "x.npy")])
    with pytest.raises(SystemExit, match="must end in .npy"):
        main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--samples-out", str(tmp_path / "x.png")])


def test_numerics_options_are_obeyed_and_recorded(tiny_checkpoint, tmp_path, capsys):
    common = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--n", "8", "--sampler", "ddim", "--steps", "3"]
    assert main(common + ["--precision", "fp32", "--no-channels-last"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["precision"], report["channels_last"], report["device"]) == ("fp32", False, "cpu")
    assert main(common + ["--bf16", "--channels-last"]) == 0          # --bf16 is --precision bf16
    report = json.loads(capsys.readouterr().out)
    assert (report["precision"], report["channels_last"]) == ("bf16", True)
    assert main(common) == 0                                           # auto: whatever was measured fastest
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] in ("fp32", "bf16") and isinstance(report["channels_last"], bool)
    with pytest.raises(SystemExit):
        main(common + ["--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_info_shows_and_clears_the_numerics(tiny_checkpoint, capsys):
    assert main(["info", "--checkpoint", str(tiny_checkpoint), "--sample-batch-size", "16"]) == 0
    report = json.loads(capsys.readouterr().out)
    num = report["numerics"]
    assert num["device"] == "cpu" and isinstance(num["bf16_native"], bool)
    assert num["train"]["batch_size"] == 64 and num["sample"]["batch_size"] == 16
    for purpose in ("train", "sample"):
        assert num[purpose]["how"] in ("probe", "cache", "feature check")
        assert num[purpose]["chosen"].split()[0] in ("fp32", "bf16")
    assert main(["info", "--checkpoint", str(tiny_checkpoint), "--sample-batch-size", "16"]) == 0
    again = json.loads(capsys.readouterr().out)["numerics"]
    assert again["sample"]["chosen"] == num["sample"]["chosen"] and again["sample"]["how"] in ("cache", "feature check")
    assert main(["info", "--clear-numerics-cache"]) == 0
    assert "forgot" in capsys.readouterr().out


def test_out_of_range_options_get_one_line_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit, match=r"--steps must be between 1 and 100 for --sampler ddim .*T=100.* got 5000"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "ddim", "--steps", "5000",
              "--out", str(tmp_path / "x.npy")])
    for option, value, message in [("--lr", "nan", r"--lr must be a number > 0 and <= 1 \(e.g. 1e-3\), got nan"),
                                   ("--max-minutes", "-1", r"--max-minutes must be a number >= 0 \(0: no time "
                                                           r"limit\), got -1.0"),
                                   ("--warmup-steps", "-5", "--warmup-steps must be between 0 and 1000000000, "
                                                            "got -5"),
                                   ("--accum-steps", "0", "--accum-steps must be between 1 and 1000000, got 0"),
                                   ("--accum-steps", "3", "--batch-size 64 must divide into 1 processes x "
                                                          "--accum-steps 3 equal parts: use a multiple of 3"),
                                   ("--dist-timeout", "0", "--dist-timeout must be a number > 0 and <= 604800 "
                                                           "seconds, got 0.0"),
                                   ("--image-size", "29", "--image-size must be a multiple of 2"),
                                   ("--data", "svhn", "--data must be one of mnist, fashion-mnist, cifar10, "
                                                      "imagefolder:PATH, got 'svhn'")]:
        with pytest.raises(SystemExit, match=message):
            main(["train", "--preset", "tiny", option, value, "--out-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="--batch-size must be between 1 and 1000000, got 0"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--batch-size", "0", "--out", str(tmp_path / "x.npy")])


@pytest.mark.parametrize("sampler, steps", [("ddpm", "10"), ("ddim", "10"), ("dpmpp", "10"), ("dpmpp-sde", "10"),
                                            ("edm", "9")])
def test_every_sampler_draws_from_the_command_line(tiny_checkpoint, tmp_path, sampler, steps):
    out = tmp_path / "x.npy"
    assert main(["sample", "--checkpoint", str(tiny_checkpoint), "--n", "3", "--sampler", sampler,
                 "--steps", steps, "--out", str(out), "--precision", "fp32"]) == 0
    images = np.load(out)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8


def test_class_and_guidance_are_refused_clearly(tiny_checkpoint, tmp_path):
    out = str(tmp_path / "x.png")
    with pytest.raises(SystemExit, match="this checkpoint is unconditional"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--class", "3", "--out", out])
    with pytest.raises(SystemExit, match="--guidance needs --class.*unconditional"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--guidance", "2", "--out", out])
    with pytest.raises(SystemExit, match=r"--guidance must be a number between 0 and 100 \(0: no guidance"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--guidance", "-1", "--out", out])


@pytest.fixture(scope="module")
def tiny_conditional_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", "--preset", "tiny", "--steps", "4", "--out-dir", str(out), "--no-progress",
                 "--precision", "fp32"]) == 0
    from ddpm_lib.checkpoint import load_checkpoint, save_checkpoint
    from ddpm_lib.models import build_model

    base = load_checkpoint(out / "model.safetensors")
    model = build_model(base.config, num_classes=10)     # the same net with a (random) class embedding
    path = out / "conditional.safetensors"
    save_checkpoint(path, model, base.schedule, {"step": 0})
    return path


def test_conditional_checkpoint_draws_one_row_per_digit(tiny_conditional_checkpoint, tmp_path):
    out = tmp_path / "grid.npy"
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "all", "--n", "2",
                 "--guidance", "1.5", "--sampler", "ddim", "--steps", "5", "--precision", "fp32",
                 "--out", str(out)]) == 0
    assert np.load(out).shape == (20, 28, 28)
    for bad, message in [("10", r"--class: class labels must be between 0 and 9, got \[10\]"),
                         ("-1", r"--class: class labels must be between 0 and 9"),
                         ("three", "--class must be a digit 0-9 or 'all', got 'three'")]:
        with pytest.raises(SystemExit, match=message):
            main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", bad, "--out",
                  str(tmp_path / "never_written.npy")])
    # the grid drawn above is kept: another command with the same --out is refused unless --force
    with pytest.raises(SystemExit, match="already exists: pass --force"):
        main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "3", "--out", str(out)])


def test_the_ablation_switches_reach_the_checkpoint(tmp_path):
    """--prediction, --time-embedding and --norm build that network, and `sample` converts its output to eps."""
    from ddpm_lib.checkpoint import load_checkpoint

    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--out-dir", str(out), "--no-progress", "--precision",
                 "fp32", "--prediction", "v", "--time-embedding", "input", "--norm", "batch"]) == 0
    cfg = load_checkpoint(out / "model.safetensors").config
    assert (cfg.prediction, cfg.time_embedding, cfg.norm) == ("v", "input", "batch")
    grid = tmp_path / "grid.npy"
    assert main(["sample", "--checkpoint", str(out / "model.safetensors"), "--n", "3", "--sampler", "ddim",
                 "--steps", "4", "--precision", "fp32", "--out", str(grid)]) == 0
    assert np.load(grid).shape == (3, 28, 28)


def test_sampler_options_come_from_the_registry_and_foreign_ones_are_refused(tiny_checkpoint, tmp_path, capsys):
    from ddpm_lib.cli import build_parser
    from ddpm_lib.sampling import SAMPLERS

    sampling = build_parser()._subparsers._group_actions[0].choices["sample"]
    choices = {a.dest: a for a in sampling._actions}
    assert choices["sampler"].choices == list(SAMPLERS)
    assert all(f"{name} {s.default_steps(1000)} (at most {s.max_steps(1000)})" in choices["steps"].help
               for name, s in SAMPLERS.items())
    out = str(tmp_path / "x.npy")
    for options, message in [(["--eta", "0.5"], "--eta does not apply to --sampler ddpm .*ddim.*takes --variance, "
                                                "--clip-x0"),
                             (["--sampler", "ddim", "--variance", "none"], "--variance does not apply to --sampler "
                                                                           "ddim"),
                             (["--sampler", "dpmpp", "--eta", "0"], "--sampler dpmpp takes --clip-x0"),
                             (["--sampler", "ddim", "--churn", "1"], "--churn does not apply to --sampler ddim .*"
                                                                      "--sampler edm")]:
        with pytest.raises(SystemExit, match=message):
            main(["sample", "--checkpoint", str(tiny_checkpoint), *options, "--out", out])
    with pytest.raises(SystemExit, match=r"--steps must be between 1 and 50 for --sampler dpmpp-sde"):
        main(["sample", "--checkpoint", str(tiny_checkpoint), "--sampler", "dpmpp-sde", "--steps", "51", "--out", out])


def test_train_classifier_trains_saves_and_reports(tmp_path, capsys, monkeypatch):
    """The command calls ddpm_lib.classifier's training and saving (faked here: the real one takes a minute)."""
    import ddpm_lib.classifier as clf

    saved = {}
    monkeypatch.setattr(clf, "train_classifier", lambda seed=0: ("model", {"test_accuracy": 0.995, "seed": seed,
                                                                           "train_seconds": 1.5}))
    monkeypatch.setattr(clf, "save_classifier", lambda model, path, info: saved.update(path=path, info=info))
    assert main(["train-classifier", "--out", str(tmp_path / "c.safetensors"), "--seed", "3"]) == 0
    assert saved["path"] == tmp_path / "c.safetensors" and saved["info"]["seed"] == 3
    out = capsys.readouterr().out
    assert "test accuracy: 0.9950" in out and f"saved to {(tmp_path / 'c.safetensors').resolve()}" in out
