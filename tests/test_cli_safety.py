"""Nothing lost, nothing silent: the command line refuses bad input before any work, never destroys a file it
did not write, and answers every outcome in one line and an exit status.

Two kinds of test. Fuzz tests (Hypothesis) draw random values and combinations of each command's options --
numbers that are negative, huge, NaN or infinite, strings that are no number, paths that are folders, missing,
unwritable or another file of the run -- and run the program (:func:`ddpm_lib.cli.run`) in-process with the
expensive work replaced by fakes: every run must succeed or exit 1 or 2 with one line and no traceback, having
started no work when it fails, and must leave no temporary file and no changed file it did not create (unless
``--force``). Then one test per case that trying bad input by hand once found: data lost, work lost, wrong
results reported as success, tracebacks instead of messages.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ddpm_lib.classifier
import ddpm_lib.cli.nll as cli_nll
import ddpm_lib.cli.sample as cli_sample
import ddpm_lib.data
import ddpm_lib.metrics
import ddpm_lib.numerics
import ddpm_lib.training
from ddpm_lib import _io
from ddpm_lib.checkpoint import (MODEL_FILE, STATE_FILE, CheckpointError, check_run_folder, load_checkpoint,
                                 save_checkpoint)
from ddpm_lib.data import DataUnavailableError, load_mnist, load_training_images
from ddpm_lib.cli import run
from ddpm_lib.models import build_model
from ddpm_lib.numerics import Numerics
from ddpm_lib.presets import PRESETS, TrainConfig
from ddpm_lib.schedule import make_schedule

TINY = PRESETS["tiny"]
FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# --------------------------------------------------------------------------- files and fakes

@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny model checkpoint, one with a NaN weight, a real training state, and a PyTorch pickle."""
    d = tmp_path_factory.mktemp("inputs")
    schedule = make_schedule(TINY.schedule, TINY.T)
    torch.manual_seed(0)
    model = build_model(TINY.model)
    save_checkpoint(d / "ckpt.safetensors", model, schedule, {"step": 0})
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight")).view(-1)[0] = float("nan")
    save_checkpoint(d / "nan.safetensors", model, schedule, {"step": 0})
    ddpm_lib.training.train(TINY.model, schedule, TrainConfig(steps=1, batch_size=4, warmup_steps=1, log_every=1,
                                                              checkpoint_every=1, precision="fp32",
                                                              channels_last=False),
                            torch.zeros(8, 1, 28, 28), d / "run", progress=False)
    shutil.copy(d / "run" / STATE_FILE, d / "state.safetensors")
    torch.save({"weight": torch.zeros(2)}, d / "model.pt")
    return {"ckpt": d / "ckpt.safetensors", "nan": d / "nan.safetensors", "state": d / "state.safetensors",
            "pt": d / "model.pt"}


class Work:
    """The fakes' record: how often the expensive work started, and what it should do."""

    def __init__(self):
        self.calls = 0
        self.value = 0.0            # what the fake sampler draws
        self.during = None          # called inside the work (to raise KeyboardInterrupt, send a signal, ...)
        self.root = None            # the fake classifier trainer writes only inside this folder

    def start(self):
        self.calls += 1
        if self.during is not None:
            self.during()


def _report(images, seed=0, **kw) -> dict:
    n = len(images)
    return {"n": n, "n_floor": n, "fd": 2.0, "fd_floor": 1.0, "fd_ratio": 2.0, "mean_confidence": 0.9,
            "digit_counts": [n] + [0] * 9, "digit_fractions": [1.0] + [0.0] * 9, "min_fraction": 0.0,
            "max_fraction": 1.0, "classifier_test_accuracy": 0.99, "seed": seed}


@pytest.fixture
def work(monkeypatch, files, tmp_path_factory) -> Work:
    """Replace sampling, scoring, the bound, training, the data and the numerics probe by instant fakes."""
    w = Work()
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    tiny = load_checkpoint(files["ckpt"]).model

    def fake_sample(model, schedule, n, sampler="ddpm", steps=None, **kw):
        w.start()
        c, s = model.config.image_channels, model.config.image_size
        return torch.full((min(n, 4), c, s, s), w.value)

    def fake_numerics(model, **kw):
        precision = kw.get("precision")
        return Numerics(precision if precision in ("fp32", "bf16") else "fp32", bool(kw.get("channels_last")))

    def fake_bound(model, schedule, x0, **kw):
        w.start()
        n, T = len(x0), schedule.T
        return SimpleNamespace(nats_to_bits_per_dim=1.0, mean_bits_per_dim=lambda: (1.0, 0.1), dims=784,
                               prior=torch.zeros(n), decoder_nll=torch.zeros(n), terms=torch.zeros(n, T),
                               per_t_bits_per_dim=lambda: torch.zeros(T), bits_per_dim=torch.ones(n),
                               numerics="fp32")

    def fake_train(model_cfg, schedule, config, data, out_dir, overwrite=False, **kw):
        with _io.RunLock(out_dir):
            if not overwrite:
                check_run_folder(out_dir)
            w.start()
            save_checkpoint(Path(out_dir) / MODEL_FILE, tiny, schedule, {"step": 1})
            _io.atomic_write_bytes(Path(out_dir) / STATE_FILE, files["state"].read_bytes())
        return SimpleNamespace(interrupted=False, step=1, seconds=0.1, numerics=Numerics())

    def fake_train_classifier(seed=0):
        w.start()
        return "model", {"test_accuracy": 0.995, "seed": seed}

    def fake_save_classifier(model, path, info):
        if w.root is not None and Path(path).resolve().is_relative_to(w.root.resolve()):
            _io.atomic_write_bytes(path, b"classifier")

    monkeypatch.setattr(cli_sample, "sample", fake_sample)
    monkeypatch.setattr(cli_nll, "variational_bound", fake_bound)
    monkeypatch.setattr(ddpm_lib.numerics, "choose_numerics", fake_numerics)
    monkeypatch.setattr(ddpm_lib.numerics, "summary", lambda device="cpu": {"device": str(device)})
    monkeypatch.setattr(ddpm_lib.metrics, "evaluate_samples", lambda images, seed=0, **kw: (w.start(), _report(images, seed))[1])
    monkeypatch.setattr(ddpm_lib.training, "train", fake_train)
    monkeypatch.setattr(ddpm_lib.data, "load_training_images",
                        lambda spec, channels=1, size=28, root=None: torch.zeros(64, channels, size, size))
    monkeypatch.setattr(ddpm_lib.data, "load_mnist", lambda split="train", root=None: ddpm_lib.data.MNIST(
        torch.zeros(64, 28, 28, dtype=torch.uint8), torch.zeros(64, dtype=torch.long)))
    monkeypatch.setattr(ddpm_lib.classifier, "train_classifier", fake_train_classifier)
    monkeypatch.setattr(ddpm_lib.classifier, "save_classifier", fake_save_classifier)
    return w


def _digest(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def _workdir(root: Path, files) -> Path:
    """A fresh folder with what the fuzzed paths name: existing outputs, a folder, a file, the inputs, run folders."""
    w = Path(tempfile.mkdtemp(dir=root))
    for name in ("exists.png", "exists.npy", "exists.json", "exists.safetensors", "afile"):
        (w / name).write_bytes(b"precious " + name.encode())
    for name in ("dir", "dir.png", "dir.npy", "dir.json", "dir.safetensors"):
        (w / name).mkdir()
    for key in ("ckpt", "nan", "state", "pt"):
        shutil.copy(files[key], w / files[key].name)
    (w / "foreign").mkdir()
    shutil.copy(files["ckpt"], w / "foreign" / MODEL_FILE)            # a model from elsewhere, no state
    (w / "ownrun").mkdir()
    shutil.copy(files["state"], w / "ownrun" / STATE_FILE)            # a run of its own: it resumes and rewrites
    shutil.copy(files["ckpt"], w / "ownrun" / MODEL_FILE)
    return w


def _run_and_check(argv: list[str], w: Path, work: Work, capsys) -> int:
    """Run the program; every outcome must be one of the promised ones (see the module docstring)."""
    before = _digest(w)
    capsys.readouterr()
    calls = work.calls
    code = run(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code:
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert work.calls == calls, f"{argv}: refused after the work had started ({err})"
    assert not [p for p in w.rglob("*.tmp")], f"{argv}: a temporary file was left"
    after = _digest(w)
    inputs = {Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--checkpoint", "--state")}
    for path, digest in before.items():
        if path.parent.name == "ownrun" or ("--force" in argv and path not in inputs):
            continue             # a run's own files are rewritten by design; --force replaces what it names
        assert after.get(path) == digest, f"{argv}: {path.name} was changed or removed (exit {code}: {err})"
    return code


def _argv(command: str, options: dict, w: Path) -> list[str]:
    argv = [command]
    for flag, value in options.items():
        values = [] if value is None else value if isinstance(value, list) else [value]
        argv += [flag] + [str(v).replace("{w}", str(w)) for v in values]
    return argv


# --------------------------------------------------------------------------- what the fuzz tests draw

JUNK = st.sampled_from(["", "x", "1e23", " ", "0x10", "--", "1,000"])
INT_EDGES = st.sampled_from([0, -1, -28, 1000, 10**6, 10**6 + 1, 2**32, 2**63, 10**20])
FLOAT_EDGES = st.sampled_from(["nan", "inf", "-inf", "1e30", "-5", "0", "1", "1.5", "1e400", "-0.0"])


def _mixed(valid: st.SearchStrategy, edge: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a valid value, often an edge (0, negative, huge, NaN, infinite), now and then no number at all."""
    return st.integers(0, 19).flatmap(lambda i: JUNK if i == 0 else edge.map(str) if i < 7 else valid.map(str))


def _ints(low: int, high: int) -> st.SearchStrategy:
    return _mixed(st.integers(low, high), INT_EDGES)


def _floats(low: float, high: float) -> st.SearchStrategy:
    return _mixed(st.floats(low, high).map(repr), FLOAT_EDGES)


SEEDS = _mixed(st.integers(0, 2**32 - 1), st.sampled_from([-1, 2**32, 2**63, 10**23]))
FLAG = st.just(None)
CHECKPOINTS = st.sampled_from(["{w}/ckpt.safetensors"] * 6 + ["{w}/nan.safetensors", "{w}/state.safetensors",
                                                             "{w}/model.pt", "{w}/dir", "{w}/missing.safetensors"])
DEVICES = st.sampled_from(["cpu"] * 5 + ["auto", "cuda", "gpu0", "cuda:7", ""])
PRECISION = st.sampled_from(["fp32", "bf16", "auto", "fp16"])


def _paths(*suffixes) -> st.SearchStrategy:
    """Output paths: mostly new; else existing, a folder, below a missing folder or a file, unwritable, an input."""
    other = [f"{{w}}/exists{s}" for s in suffixes] + [f"{{w}}/missing/sub/new{s}" for s in suffixes] + \
        [f"{{w}}/afile/new{suffixes[0]}", f"{{w}}/dir{suffixes[0]}", f"/proc/new{suffixes[0]}",
         "{w}/ckpt.safetensors", "{w}/state.safetensors", "{w}/new.txt"]
    new = st.sampled_from([f"{{w}}/new{s}" for s in suffixes])
    return st.integers(0, 3).flatmap(lambda i: st.sampled_from(other) if i == 0 else new)


SAMPLER_OPTIONS = {
    "--checkpoint": CHECKPOINTS, "--n": _ints(1, 16), "--seed": SEEDS, "--steps": _ints(1, 100),
    "--sampler": st.sampled_from(["ddpm", "ddim", "ddim", "dpmpp", "dpmpp-sde", "euler"]),
    "--variance": st.sampled_from(["beta", "beta_tilde", "none", "big"]), "--eta": _floats(0, 1), "--clip-x0": FLAG,
    "--class": st.sampled_from(["3", "all", "x", "-1", "10"]), "--guidance": _floats(0, 10),
    "--batch-size": _ints(1, 64), "--precision": PRECISION, "--bf16": FLAG, "--channels-last": FLAG,
    "--no-channels-last": FLAG, "--device": DEVICES, "--force": FLAG,
}


def _options(required: dict, optional: dict, most: int = 4) -> st.SearchStrategy:
    """The required options, and up to ``most`` of the optional ones."""
    chosen = st.lists(st.sampled_from(sorted(optional)), max_size=most, unique=True)
    return st.tuples(st.fixed_dictionaries(required),
                     chosen.flatmap(lambda keys: st.fixed_dictionaries({k: optional[k] for k in keys}))
                     ).map(lambda t: {**t[0], **t[1]})


# --------------------------------------------------------------------------- the fuzz tests, one per command

@FUZZ
@given(options=_options({"--out": _paths(".png", ".npy")}, {**SAMPLER_OPTIONS, "--nrow": _ints(1, 10)}))
def test_fuzz_sample(options, work, files, tmp_path, capsys):
    _run_and_check(_argv("sample", options, w := _workdir(tmp_path, files)), w, work, capsys)


@FUZZ
@given(options=_options({}, {**SAMPLER_OPTIONS, "--out": _paths(".json"), "--samples-out": _paths(".npy"),
                             "--seeds": st.lists(SEEDS, min_size=1, max_size=3)}, most=5))
def test_fuzz_evaluate(options, work, files, tmp_path, capsys):
    options.setdefault("--n", "8")       # the default 1000 is fine too, but the fakes need not copy it
    _run_and_check(_argv("evaluate", options, w := _workdir(tmp_path, files)), w, work, capsys)


TRAIN_OPTIONS = {
    "--preset": st.sampled_from(["tiny"] * 4 + ["origin", "conditional", "shipped", "huge"]),
    "--export": _paths(".safetensors"), "--steps": _ints(1, 300), "--max-minutes": _floats(0, 60),
    "--batch-size": _mixed(st.sampled_from([8, 16, 32, 64]), INT_EDGES), "--lr": _floats(1e-5, 1e-2),
    "--warmup-steps": _ints(0, 100), "--cooldown-minutes": _floats(0, 5), "--cooldown-steps": _ints(0, 50),
    "--accum-steps": _mixed(st.sampled_from([1, 2, 4]), INT_EDGES), "--dist-timeout": _floats(1, 1000),
    "--min-snr-gamma": _floats(0, 10), "--p-uncond": _floats(0, 1), "--ema-decay": _floats(0, 0.9999),
    "--checkpoint-every": _ints(1, 1000), "--seed": SEEDS, "--precision": PRECISION,
    "--arch": st.sampled_from(["unet", "simple", "dit"]),
    "--base-channels": _mixed(st.sampled_from([8, 16, 24, 32, 6]), INT_EDGES),
    "--prediction": st.sampled_from(["eps", "x0", "v"]), "--norm": st.sampled_from(["group", "batch"]),
    "--time-embedding": st.sampled_from(["every_block", "input"]), "--schedule": st.sampled_from(["linear", "cosine"]),
    "--T": _ints(2, 1000), "--image-size": _mixed(st.sampled_from([4, 8, 16, 28, 32, 30]), INT_EDGES),
    "--image-channels": st.sampled_from(["1", "3", "2"]),
    "--data": st.sampled_from(["mnist", "mnist", "fashion-mnist", "svhn", "imagefolder:", "imagefolder:{w}/dir",
                               "imagefolder:{w}/missing", "imagefolder:{w}/afile"]),
    "--data-dir": st.sampled_from(["{w}/dir", "{w}/afile", "{w}/newdata"]), "--device": DEVICES,
    "--no-resume": FLAG, "--force": FLAG,
}
OUT_DIRS = st.sampled_from(["{w}/newrun"] * 3 + ["{w}/ownrun"] * 2 + ["{w}/foreign", "{w}/afile", "{w}/dir",
                                                                        "/proc/run", "{w}/ckpt.safetensors"])


@FUZZ
@given(options=_options({"--out-dir": OUT_DIRS, "--no-progress": FLAG}, TRAIN_OPTIONS, most=5))
def test_fuzz_train(options, work, files, tmp_path, capsys):
    _run_and_check(_argv("train", options, w := _workdir(tmp_path, files)), w, work, capsys)


@FUZZ
@given(options=_options({"--state": st.sampled_from(["{w}/state.safetensors"] * 3 + ["{w}/ckpt.safetensors",
                                                                                      "{w}/model.pt", "{w}/dir",
                                                                                      "{w}/missing"]),
                         "--out": _paths(".safetensors")}, {"--raw": FLAG, "--force": FLAG}))
def test_fuzz_export(options, work, files, tmp_path, capsys):
    w = _workdir(tmp_path, files)
    argv = _argv("export", options, w)
    if _run_and_check(argv, w, work, capsys) == 0:
        assert load_checkpoint(argv[argv.index("--out") + 1]).info["step"] == 1


@FUZZ
@given(options=_options({"--no-numerics": FLAG}, {"--checkpoint": CHECKPOINTS, "--device": DEVICES,
                                                  "--train-batch-size": _ints(1, 64),
                                                  "--sample-batch-size": _ints(1, 64)}))
def test_fuzz_info(options, work, files, tmp_path, capsys):
    _run_and_check(_argv("info", options, w := _workdir(tmp_path, files)), w, work, capsys)


@FUZZ
@given(options=_options({"--n": _ints(1, 16)}, {"--checkpoint": CHECKPOINTS, "--seed": SEEDS,
                                               "--batch-size": _ints(1, 256),
                                        "--variance": st.sampled_from(["beta", "beta_tilde", "none"]),
                                        "--device": DEVICES, "--out": _paths(".json"), "--force": FLAG}))
def test_fuzz_nll(options, work, files, tmp_path, capsys):
    _run_and_check(_argv("nll", options, w := _workdir(tmp_path, files)), w, work, capsys)


@settings(FUZZ, max_examples=20)
@given(options=_options({}, {"--out": _paths(".safetensors"), "--seed": SEEDS, "--force": FLAG}))
def test_fuzz_train_classifier(options, work, files, tmp_path, capsys):
    work.root = w = _workdir(tmp_path, files)
    _run_and_check(_argv("train-classifier", options, w), w, work, capsys)


# --------------------------------------------------------------------------- data lost (must never happen)

def _refused(argv, capsys, *needles, code=2) -> str:
    capsys.readouterr()
    assert run([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_training_state_is_never_overwritten_by_an_export(work, files, tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    state = run_dir / STATE_FILE
    shutil.copy(files["state"], state)
    kept = state.read_bytes()
    _refused(["train", "--preset", "tiny", "--out-dir", run_dir, "--export", state, "--no-progress"], capsys,
             "is also where the run's own train_state.safetensors")
    _refused(["export", "--state", state, "--out", state, "--force"], capsys, "is the file --state reads")
    os.link(state, tmp_path / "hard.safetensors")        # the same file under another name
    _refused(["export", "--state", state, "--out", tmp_path / "hard.safetensors", "--force"], capsys,
             "is the file --state reads")
    assert state.read_bytes() == kept and work.calls == 0


def test_evaluate_never_writes_its_report_over_its_samples(work, files, tmp_path, capsys):
    samples = tmp_path / "s.npy"
    samples.write_bytes(b"samples")
    _refused(["evaluate", "--checkpoint", files["ckpt"], "--n", "8", "--out", samples, "--samples-out", samples],
             capsys, "--out must end in .json")
    (tmp_path / "s.json").symlink_to(samples)             # the same file through a link
    _refused(["evaluate", "--checkpoint", files["ckpt"], "--n", "8", "--out", tmp_path / "s.json", "--samples-out",
              samples, "--force"], capsys, "is also where --out goes")
    assert samples.read_bytes() == b"samples" and work.calls == 0


def test_a_model_from_elsewhere_in_the_run_folder_is_kept_unless_forced(work, files, tmp_path, capsys):
    folder = tmp_path / "u"
    folder.mkdir()
    shutil.copy(files["ckpt"], folder / MODEL_FILE)
    kept = (folder / MODEL_FILE).read_bytes()
    argv = ["train", "--preset", "tiny", "--out-dir", folder, "--no-progress"]
    _refused(argv, capsys, "holds a model.safetensors but no training state", "--force")
    assert (folder / MODEL_FILE).read_bytes() == kept and work.calls == 0
    assert run([str(a) for a in argv] + ["--force"]) == 0 and work.calls == 1


def test_the_library_refuses_a_model_from_elsewhere(files, tmp_path):
    folder = tmp_path / "u"
    folder.mkdir()
    shutil.copy(files["ckpt"], folder / MODEL_FILE)
    config = TrainConfig(steps=1, batch_size=4, precision="fp32", channels_last=False)
    with pytest.raises(CheckpointError, match="overwrite=True"):
        ddpm_lib.training.train(TINY.model, make_schedule(TINY.schedule, TINY.T), config, torch.zeros(8, 1, 28, 28),
                                folder, progress=False)
    assert (folder / MODEL_FILE).read_bytes() == files["ckpt"].read_bytes()


_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("_io", sys.argv[1])
io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)
with io.RunLock(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_two_trainings_never_share_a_run_folder(work, files, tmp_path, capsys):
    """A run folder is locked by the process that trains in it; a second one is refused with its pid, before
    any work, and may train once the first has let go (even if it was killed: the lock ends with it)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, _io.__file__, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        argv = ["train", "--preset", "tiny", "--out-dir", str(folder), "--no-progress"]
        _refused(argv, capsys, f"in use by another training process (pid {holder.pid})", code=1)
        assert work.calls == 0
    finally:
        holder.kill()
        holder.wait()
    assert run(argv) == 0 and work.calls == 1
    assert not (folder / _io.LOCK_FILE).exists(), "the lock file outlived the run"
    # one process takes its own lock again (the command line and the training loop both hold it)
    with _io.RunLock(folder), _io.RunLock(folder):
        pass


# --------------------------------------------------------------------------- work lost: refused before any work

@pytest.mark.parametrize("command", ["sample", "evaluate", "nll", "export", "train --export"])
@pytest.mark.parametrize("where", ["a folder", "an unwritable folder", "below a file", "a missing folder"])
def test_a_bad_out_is_refused_before_any_work(command, where, work, files, tmp_path, capsys):
    suffix = {"sample": ".png", "evaluate": ".json", "nll": ".json"}.get(command, ".safetensors")
    (tmp_path / "afile").write_text("x")
    (tmp_path / f"folder{suffix}").mkdir()
    out = {"a folder": tmp_path / f"folder{suffix}", "an unwritable folder": Path("/proc") / f"x{suffix}",
           "below a file": tmp_path / "afile" / f"x{suffix}", "a missing folder": tmp_path / "a" / "b" / f"x{suffix}"}
    argv = {"sample": ["sample", "--checkpoint", files["ckpt"], "--n", "4", "--out"],
            "evaluate": ["evaluate", "--checkpoint", files["ckpt"], "--n", "4", "--out"],
            "nll": ["nll", "--checkpoint", files["ckpt"], "--n", "4", "--out"],
            "export": ["export", "--state", files["state"], "--out"],
            "train --export": ["train", "--preset", "tiny", "--out-dir", tmp_path / "run", "--no-progress",
                               "--export"]}[command] + [out[where]]
    if where == "a missing folder":          # created: the output is written there
        assert run([str(a) for a in argv]) == 0 and out[where].is_file()
        return
    _refused(argv, capsys, {"a folder": "is a folder", "an unwritable folder": "cannot create files in /proc",
                            "below a file": "afile is a file, not a folder"}[where])
    assert work.calls == 0


@pytest.mark.parametrize("where", ["unwritable", "a file"])
def test_a_bad_run_folder_is_refused_before_training(where, work, files, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out_dir = Path("/proc/run") if where == "unwritable" else tmp_path / "afile"
    _refused(["train", "--preset", "shipped", "--out-dir", out_dir, "--no-progress"], capsys,
             "cannot create files in /proc" if where == "unwritable" else "is a file, not a folder")
    assert work.calls == 0


def test_bad_counts_are_refused_before_sampling(work, files, tmp_path, capsys):
    ckpt = ["--checkpoint", files["ckpt"]]
    _refused(["sample", *ckpt, "--nrow", "-2", "--out", tmp_path / "x.png"], capsys, "--nrow must be between 1")
    _refused(["sample", *ckpt, "--nrow", "0", "--out", tmp_path / "x.png"], capsys, "--nrow must be between 1")
    _refused(["sample", *ckpt, "--nrow", "3", "--out", tmp_path / "x.npy"], capsys, "--nrow lays out a .png grid")
    _refused(["evaluate", *ckpt, "--n", "1"], capsys, "--n must be between 2 and 1000000")
    _refused(["sample", *ckpt, "--n", "99999999999999999999", "--out", tmp_path / "x.png"], capsys,
             "--n must be between 1 and 1000000")
    assert work.calls == 0 and not list(tmp_path.iterdir())


def test_an_existing_output_is_replaced_only_with_force(work, files, tmp_path, capsys):
    out = tmp_path / "x.png"
    out.write_bytes(b"a picture of my cat")
    argv = ["sample", "--checkpoint", str(files["ckpt"]), "--n", "4", "--out", str(out)]
    _refused(argv, capsys, "already exists: pass --force")
    assert out.read_bytes() == b"a picture of my cat"
    assert run(argv + ["--force"]) == 0 and out.read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- wrong results reported as success

def test_a_checkpoint_with_nan_weights_is_refused_at_load_naming_the_tensor(work, files, tmp_path, capsys):
    err = _refused(["sample", "--checkpoint", files["nan"], "--out", tmp_path / "x.png"], capsys,
                   "holds 1 NaN or infinite value", code=1)
    assert "tensor '" in err and not (tmp_path / "x.png").exists()
    with pytest.raises(CheckpointError, match=r"tensor '.*weight'"):
        load_checkpoint(files["nan"])


@pytest.mark.parametrize("option, value", [("--eta", "nan"), ("--eta", "-5"), ("--eta", "inf"),
                                           ("--guidance", "1e30"), ("--guidance", "nan")])
def test_sampler_options_out_of_range_are_refused(option, value, work, files, tmp_path, capsys):
    sampler = ["--sampler", "ddim"] if option == "--eta" else []
    _refused(["sample", "--checkpoint", files["ckpt"], *sampler, option, value, "--out", tmp_path / "x.png"],
             capsys, f"{option} must be a number between 0 and", f"got {float(value)}")


@pytest.mark.parametrize("guided", [True, False])
def test_samples_that_are_not_finite_are_never_written(guided, work, files, tmp_path, capsys):
    work.value = float("nan")
    out = tmp_path / "x.npy"
    extra = ["--sampler", "ddim", "--eta", "1"] if guided else []
    err = _refused(["sample", "--checkpoint", files["ckpt"], "--n", "4", *extra, "--out", out], capsys,
                   "4 of 4 samples hold NaN or infinite values; nothing was written", code=1)
    assert ("--eta 1.0" in err) == guided
    assert not out.exists()


def test_numbers_that_used_to_fall_back_to_defaults_are_refused(work, files, tmp_path, capsys):
    run_dir = ["--out-dir", tmp_path / "run", "--no-progress"]
    _refused(["train", "--preset", "tiny", "--T", "0", *run_dir], capsys, "--T must be between 2 and 100000, got 0")
    _refused(["info", "--checkpoint", files["ckpt"], "--train-batch-size", "0"], capsys,
             "--train-batch-size must be between 1")
    _refused(["train", "--preset", "tiny", "--data", "imagefolder:", *run_dir], capsys, "names no folder")
    assert work.calls == 0


def test_the_library_refuses_an_empty_image_folder_and_a_data_dir_that_is_a_file(tmp_path):
    with pytest.raises(ValueError, match="names no folder"):
        load_training_images("imagefolder:")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataUnavailableError, match="is a file"):
        load_mnist("test", tmp_path / "f")


def test_evaluate_warns_that_few_samples_give_a_rough_fd(work, files, capsys):
    assert run(["evaluate", "--checkpoint", str(files["ckpt"]), "--n", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: the covariance of 2 samples has rank 1 at most" in err


def test_a_resume_past_the_steps_asked_for_says_so(files, tmp_path, capsys):
    config = TrainConfig(steps=2, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=1, precision="fp32",
                         channels_last=False)
    args = (TINY.model, make_schedule(TINY.schedule, TINY.T))
    ddpm_lib.training.train(*args, config, torch.zeros(8, 1, 28, 28), tmp_path, progress=False)
    capsys.readouterr()
    result = ddpm_lib.training.train(*args, TrainConfig(**{**config.__dict__, "steps": 1}),
                                     torch.zeros(8, 1, 28, 28), tmp_path, progress=False)
    assert result.step == 2
    assert "note: the run is already at step 2, and steps is 1: nothing to train" in capsys.readouterr().out


def test_a_malformed_numerics_cache_is_ignored(monkeypatch, tmp_path):
    """Valid JSON of the wrong shape (the lead's fix in numerics._read_cache): no command fails on it."""
    from ddpm_lib import numerics

    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path))
    for text in ['{"version": 1, "entries": {"k": [1, 2], "j": {"precision": "fp64"}}}', '[1, 2]',
                 '{"version": 1, "entries": [1]}', '"x"']:
        numerics.cache_path().write_text(text)
        assert numerics.cached_decisions() == []
        assert run(["info", "--clear-numerics-cache"]) == 0
        assert not numerics.cache_path().exists()


def test_a_resumed_evaluation_reuses_the_reports_numerics(work, files, tmp_path, capsys):
    """A lost numerics cache may measure another precision than the report's: the resume takes the report's."""
    out = tmp_path / "e.json"
    common = ["evaluate", "--checkpoint", str(files["ckpt"]), "--n", "4", "--out", str(out)]
    assert run(common + ["--seeds", "0", "1", "--precision", "bf16", "--channels-last"]) == 0
    assert run(common + ["--seeds", "0", "1", "2"]) == 0          # --precision auto: would be fp32 here
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1, 2] and report["precision"] == "bf16" and report["channels_last"] is True
    assert "seed 1: scored before" in capsys.readouterr().err


# --------------------------------------------------------------------------- tracebacks that are now messages

@pytest.mark.parametrize("argv, needle", [
    (["sample", "--seed", "1e23"], "argument --seed: invalid int value: '1e23'"),
    (["sample", "--seed", str(10**23)], "--seed must be between 0 and 4294967295"),
    (["nll", "--n", "3", "--seed", str(10**23)], "--seed must be between 0 and 4294967295"),
    (["train", "--seed", str(10**23)], "--seed must be between 0 and 4294967295"),
    (["train", "--image-size", "0"], "--image-size must be between 4 and 512"),
    (["train", "--image-size", "-28"], "--image-size must be between 4 and 512"),
    (["train", "--image-size", "100000"], "--image-size must be between 4 and 512"),
    (["train", "--T", "1"], "--T must be between 2 and 100000, got 1"),
    (["train", "--base-channels", "0"], "--base-channels must be between 2 and 1024"),
    (["train", "--base-channels", "3"], "--base-channels must be a positive multiple of 8"),
    (["train", "--preset", "origin", "--base-channels", "5"], "--base-channels must be a positive multiple of 2"),
    (["train", "--data-dir", "{afile}"], "is a file: give the folder where the datasets are kept"),
    (["train", "--dist-timeout", "nan"], "--dist-timeout must be a number > 0 and <= 604800 seconds, got nan"),
    (["train", "--dist-timeout", "inf"], "--dist-timeout must be a number > 0"),
    (["train", "--batch-size", "65"], "--batch-size 65 is more than the 64 training images"),
    (["info", "--sample-batch-size", "-1"], "--sample-batch-size must be between 1 and 1000000, got -1"),
    (["sample", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
])
def test_bad_input_gets_one_line_not_a_traceback(argv, needle, work, files, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    extra = {"sample": ["--checkpoint", files["ckpt"], "--out", tmp_path / "x.png"],
             "nll": ["--checkpoint", files["ckpt"]], "train": ["--preset", "tiny", "--out-dir", tmp_path / "run"],
             "info": ["--checkpoint", files["ckpt"]]}[argv[0]]
    if argv[0] == "train" and "--preset" in argv:
        extra = extra[2:]
    _refused([a.replace("{afile}", str(tmp_path / "afile")) for a in argv] + extra, capsys, needle)
    assert work.calls == 0


@pytest.mark.parametrize("command", ["sample", "evaluate", "train", "nll"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_give_one_line_and_130_or_143(command, sig, work, files, tmp_path, capsys):
    """A signal during the work (a second Ctrl-C, for train): one line, 130 or 143, no traceback, nothing partial."""
    work.during = lambda: os.kill(os.getpid(), sig)
    argv = {"sample": ["sample", "--checkpoint", files["ckpt"], "--out", tmp_path / "x.png"],
            "evaluate": ["evaluate", "--checkpoint", files["ckpt"], "--n", "200", "--out", tmp_path / "e.json"],
            "train": ["train", "--preset", "tiny", "--out-dir", tmp_path / "run", "--no-progress"],
            "nll": ["nll", "--checkpoint", files["ckpt"], "--n", "4", "--out", tmp_path / "n.json"]}[command]
    capsys.readouterr()
    # Ctrl-C as a terminal delivers it: Python's own SIGINT handler (a job started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run([str(a) for a in argv]) == 128 + sig
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("interrupted (Ctrl-C)" if sig == signal.SIGINT else "terminated (SIGTERM)")
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.json"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_graceful_stop_of_train_on_sigterm_exits_143(work, files, tmp_path, monkeypatch):
    """The training loop takes SIGTERM itself and saves: the program still exits 143, not 130."""
    def stopped_by_sigterm(model_cfg, schedule, config, data, out_dir, **kw):
        previous = signal.signal(signal.SIGTERM, lambda *a: None)     # as the loop's stop flag does
        os.kill(os.getpid(), signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
        return SimpleNamespace(interrupted=True, step=1, seconds=0.1, numerics=Numerics())

    monkeypatch.setattr(ddpm_lib.training, "train", stopped_by_sigterm)
    argv = ["train", "--preset", "tiny", "--out-dir", str(tmp_path / "run"), "--no-progress"]
    assert run(argv) == 143
    monkeypatch.setattr(ddpm_lib.training, "train", lambda *a, **k: SimpleNamespace(
        interrupted=True, step=1, seconds=0.1, numerics=Numerics()))
    assert run(argv) == 130


def test_a_full_disk_gives_one_line_naming_the_file_and_keeps_the_old_one(work, files, tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "x.npy"
    out.write_bytes(b"old samples")

    def full(fd):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "fsync", full)
    err = _refused(["sample", "--checkpoint", files["ckpt"], "--out", out, "--force"], capsys,
                   f"error: {out}: File too large; the file there before, if any, is intact", code=1)
    assert out.read_bytes() == b"old samples" and not list(tmp_path.glob(".*.tmp")), err


@pytest.mark.parametrize("what", ["pickle", "folder"])
def test_a_pickle_or_a_folder_as_checkpoint_is_named_for_what_it_is(what, work, files, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(files["ckpt"], run_dir / MODEL_FILE)
    path = files["pt"] if what == "pickle" else run_dir
    err = _refused(["sample", "--checkpoint", path, "--out", tmp_path / "x.png"], capsys, code=1)
    if what == "pickle":
        assert "is a PyTorch pickle (torch.save), not a safetensors checkpoint" in err and "corrupt" not in err
    else:
        assert f"is a folder, not a checkpoint file; it holds model.safetensors: pass {run_dir / MODEL_FILE}" in err


def test_every_output_gets_the_usual_permissions(work, files, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    for out in ("x.png", "x.npy"):
        assert run(["sample", "--checkpoint", str(files["ckpt"]), "--out", str(tmp_path / out)]) == 0
        assert stat.S_IMODE((tmp_path / out).stat().st_mode) == 0o666 & ~umask, out


# --------------------------------------------------------------------------- the pieces: check_output_paths

def test_check_output_paths_decides_without_writing(tmp_path):
    from ddpm_lib._io import Output, OutputPathError, check_output_paths

    (tmp_path / "f").write_text("x")
    check_output_paths([Output("--out", tmp_path / "new" / "deep" / "x.png")])
    check_output_paths([Output("--out", tmp_path / "f", updates=True)])
    check_output_paths([Output("--out", tmp_path / "f")], force=True)
    check_output_paths([Output("--out-dir", tmp_path, folder=True)])
    for outputs, inputs, message in [
        ([Output("--out", tmp_path / "f")], None, "already exists"),
        ([Output("--out", tmp_path)], None, "is a folder"),
        ([Output("--out-dir", tmp_path / "f", folder=True)], None, "is a file, not a folder"),
        ([Output("--a", tmp_path / "x"), Output("--b", tmp_path / "." / "x")], None, "--b .* is also where --a goes"),
        ([Output("--out", tmp_path / "f", updates=True)], {"--in": tmp_path / "f"}, "is the file --in reads"),
        ([Output("--out", tmp_path / "f" / "x")], None, "is a file, not a folder"),
    ]:
        with pytest.raises(OutputPathError, match=message):
            check_output_paths(outputs, inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]      # nothing created, not even a folder
