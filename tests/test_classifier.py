"""Tests for ddpm_lib.classifier: the shipped MNIST judge, its checkpoint (a ddpm_lib checkpoint of
kind "classifier" with a weights digest) and train-if-missing loading."""

from __future__ import annotations

import pytest
import torch

from ddpm_lib import classifier as clf_lib
from ddpm_lib.checkpoint import FORMAT, CheckpointError, read_tensors, save_tensors
from ddpm_lib.classifier import ClassifierCheckpointError, ClassifierConfig, MNISTClassifier


# ---------------------------------------------------------------- the shipped classifier


@pytest.fixture(scope="module")
def classifier():
    path = clf_lib.shipped_classifier_path()
    assert path.exists(), f"the shipped classifier {path} is missing"
    return clf_lib.load_classifier(path, train_if_missing=False)


def test_shipped_classifier_metadata(classifier):
    from safetensors import safe_open

    assert classifier.test_accuracy >= 0.99
    with safe_open(str(clf_lib.shipped_classifier_path()), framework="pt") as f:
        assert f.metadata()["format"] == FORMAT
    tensors, meta = read_tensors(clf_lib.shipped_classifier_path())
    assert meta["kind"] == "classifier"
    assert meta["test_accuracy"] >= 0.99 and meta["seed"] == 0
    assert meta["config"]["precision"] == "bf16" and "autocast_bf16" not in meta["config"]
    assert ClassifierConfig.from_dict(meta["config"]).feature_dim == 128
    assert meta["weights_sha256"] == clf_lib._weights_digest(tensors)
    assert {"train_seconds", "train_cpu_seconds", "torch_version", "num_threads"} <= set(meta)
    assert not classifier.training
    assert not any(p.requires_grad for p in classifier.parameters())


def test_shipped_classifier_accuracy(classifier):
    acc = clf_lib.classifier_test_accuracy(classifier)
    assert acc >= 0.99
    assert acc == pytest.approx(classifier.test_accuracy, abs=2e-4)  # fp32 eval reproduces the stored figure


def test_default_load_is_the_shipped_file_and_memoised(classifier):
    assert clf_lib.load_classifier() is classifier
    assert classifier.metadata["path"] == str(clf_lib.shipped_classifier_path())


def test_config_refuses_the_old_autocast_key():
    with pytest.raises(ValueError, match="autocast_bf16"):
        ClassifierConfig.from_dict({"autocast_bf16": True})


# ---------------------------------------------------------------- checkpoint files


def _tiny_classifier():
    torch.manual_seed(0)
    model = MNISTClassifier(ClassifierConfig(channels=(4, 8), feature_dim=16))
    return model.eval()


def test_save_load_roundtrip(tmp_path):
    model = _tiny_classifier()
    path = tmp_path / "clf.safetensors"
    assert clf_lib.save_classifier(model, path, {"test_accuracy": 0.5, "seed": 3, "num_threads": 2}) == path
    assert path.read_bytes()[:8]  # a file was written, and no temporary files were left behind
    assert [p.name for p in tmp_path.iterdir()] == ["clf.safetensors"]
    loaded = clf_lib.load_classifier(path, train_if_missing=False)
    assert loaded.test_accuracy == 0.5 and loaded.metadata["seed"] == 3 and loaded.metadata["num_threads"] == 2
    assert loaded.config == model.config
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))


def _damaged(path, damage):
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = b"this is not a safetensors file"
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # flip bits in the last weight tensor
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bitflip"])
def test_corrupt_checkpoint_error(tmp_path, damage):
    path = tmp_path / "clf.safetensors"
    clf_lib.save_classifier(_tiny_classifier(), path, {"test_accuracy": 0.5, "seed": 0})
    _damaged(path, damage)
    with pytest.raises(ClassifierCheckpointError, match="corrupt") as err:
        clf_lib.load_classifier(path, train_if_missing=False)
    msg = str(err.value)
    assert str(path) in msg and "Delete it" in msg and "python -m ddpm_lib train-classifier --out" in msg
    assert isinstance(err.value, CheckpointError)  # caught by the CLI's `except CheckpointError`


def test_other_checkpoint_kind_is_not_a_classifier(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, _tiny_classifier().state_dict(), {"kind": "model"})
    with pytest.raises(ClassifierCheckpointError, match="'kind' is 'model'"):
        clf_lib.load_classifier(path, train_if_missing=False)


def test_old_format_is_refused_with_retrain_advice(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "old.safetensors"
    save_file(_tiny_classifier().state_dict(), str(path), metadata={"format": "ddpm_lib.mnist_classifier/1"})
    with pytest.raises(ClassifierCheckpointError, match="train-classifier"):
        clf_lib.load_classifier(path, train_if_missing=False)


def test_missing_checkpoint_without_training(tmp_path):
    with pytest.raises(FileNotFoundError):
        clf_lib.load_classifier(tmp_path / "nope.safetensors", train_if_missing=False)


def _fake_training(calls):
    def fake(seed=0, config=None, verbose=True):
        calls.append(seed)
        return _tiny_classifier(), {"test_accuracy": 0.25, "seed": seed, "train_seconds": 0.0}

    return fake


def test_missing_checkpoint_is_trained_and_cached(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(clf_lib, "train_classifier", _fake_training(calls))
    path = tmp_path / "sub" / "clf.safetensors"
    model = clf_lib.load_classifier(path, seed=7)
    assert calls == [7] and path.exists() and model.test_accuracy == 0.25
    assert "training it now" in capsys.readouterr().out
    clf_lib.load_classifier(path)  # second time: loaded, not retrained
    assert calls == [7]


def test_default_path_falls_back_to_cache_dir(tmp_path, monkeypatch):
    # a shipped location outside a source checkout (no pyproject.toml next to it) is not written to
    calls = []
    monkeypatch.setattr(clf_lib, "train_classifier", _fake_training(calls))
    monkeypatch.setattr(clf_lib, "shipped_classifier_path", lambda: tmp_path / "pkg" / "checkpoints" / "c.safetensors")
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    model = clf_lib.load_classifier()
    assert calls == [0]
    assert (tmp_path / "cache" / clf_lib.CHECKPOINT_NAME).exists()
    assert not (tmp_path / "pkg").exists()
    assert model.metadata["path"] == str((tmp_path / "cache" / clf_lib.CHECKPOINT_NAME).resolve())
