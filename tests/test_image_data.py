"""Training on other images: a folder of your own (offline), Fashion-MNIST and CIFAR-10 through torchvision."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lib import data
from ddpm_lib.checkpoint import load_checkpoint
from ddpm_lib.cli import main
from ddpm_lib.data import DataUnavailableError, load_training_images


def make_folder(root, n_per_class=35, size=(40, 36), seed=0):
    """Two class folders of random RGB PNGs, of a size the model does not use (so they must be resized)."""
    rng = np.random.default_rng(seed)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / cls / f"{i}.png")
    (root / "cats" / "notes.txt").write_text("not an image: skipped")
    return root


def test_an_image_folder_is_converted_as_the_config_says(tmp_path):
    folder = make_folder(tmp_path / "imgs", n_per_class=2)
    rgb = load_training_images(f"imagefolder:{folder}", image_channels=3, image_size=32)
    gray = load_training_images(f"imagefolder:{folder}", image_channels=1, image_size=28)
    assert rgb.shape == (4, 3, 32, 32) and gray.shape == (4, 1, 28, 28)
    assert rgb.dtype == torch.float32 and -1 <= rgb.min() and rgb.max() <= 1
    # a pure red image becomes PIL's luminance of red, 0.299 * 255 = 76
    (tmp_path / "red" / "x").mkdir(parents=True)
    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "red" / "x" / "r.png")
    red = load_training_images(f"imagefolder:{tmp_path / 'red'}", image_channels=1, image_size=8)
    assert torch.allclose(red, torch.full_like(red, 76 / 127.5 - 1))


def test_torchvision_sets_are_converted_too():
    digits = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    rgb32 = data._conform(digits, 3, 32)
    assert rgb32.shape == (2, 3, 32, 32) and torch.equal(rgb32[:, 0], rgb32[:, 2])
    assert torch.equal(data._conform(digits, 1, 28), digits.float() / 255 * 2 - 1)


def test_unusable_data_fails_clearly(tmp_path, monkeypatch):
    with pytest.raises(DataUnavailableError, match="no such folder"):
        load_training_images(f"imagefolder:{tmp_path / 'missing'}")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("L", (8, 8)).save(flat / "a.png")
    with pytest.raises(DataUnavailableError, match="Put the images in subfolders"):
        load_training_images(f"imagefolder:{flat}")
    with pytest.raises(ValueError, match="unknown data 'svhn'"):
        load_training_images("svhn")

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataUnavailableError, match="fashion-mnist is not in .* could not be downloaded.*imagefolder"):
        load_training_images("fashion-mnist", root=tmp_path)
    assert main(["train", "--preset", "tiny", "--data", "fashion-mnist", "--data-dir", str(tmp_path),
                 "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 1


def test_train_and_sample_on_your_own_rgb_images(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs")
    ckpt = tmp_path / "rgb.safetensors"
    assert main(["train", "--preset", "tiny", "--data", f"imagefolder:{folder}", "--image-channels", "3",
                 "--image-size", "32", "--steps", "3", "--out-dir", str(tmp_path / "run"), "--no-progress",
                 "--export", str(ckpt)]) == 0
    loaded = load_checkpoint(ckpt)
    assert (loaded.config.image_channels, loaded.config.image_size) == (3, 32)
    assert main(["sample", "--checkpoint", str(ckpt), "--n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.mode == "RGB" and grid.size == (2 + 2 * 34, 2 + 2 * 34)   # 2 x 2 images of 32, padded
    with pytest.raises(SystemExit, match="MNIST classifier; this checkpoint draws 3x32x32 images"):
        main(["evaluate", "--checkpoint", str(ckpt), "--n", "4"])
