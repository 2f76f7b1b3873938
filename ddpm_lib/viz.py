"""Plotting helpers shared by the chapters.

Everything here works headless (the Agg backend) and none of it needs a live
Jupyter kernel to *view* the result:

* :func:`image_grid`      -- a batch of images -> one 2-D numpy array in [0, 1]
* :func:`show_images`     -- draw such a grid on a matplotlib axis
* :func:`save_png`        -- write a grid to a PNG file, atomically
* :func:`plot_schedule`   -- beta_t, alpha_bar_t and log SNR(t) of several schedules
* :func:`noise_histogram` -- pixel histogram with the N(0, 1) density for reference
* :func:`frames_player`   -- a kernel-free slider/player over batches of images

Images may be given as float tensors/arrays in the model range [-1, 1] (what
the networks see, see :func:`ddpm_lib.data.to_model_range`) or as uint8 in
{0..255} (what :func:`ddpm_lib.data.load_mnist` returns), with shape
(N, 1, H, W), (N, H, W) or (H, W). Values outside [-1, 1] are clipped for
display only.

:func:`frames_player` is the static-site counterpart of an ``ipywidgets``
slider: the frames are rendered once, embedded as PNGs in an HTML/JavaScript
player (matplotlib's ``to_jshtml``), and the page needs no kernel to scrub
through them; in print, a sheet of some of its frames stands in
(:mod:`ddpm_lib.player`).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ._io import atomic_write_bytes
from .player import animation_player

__all__ = [
    "image_grid",
    "show_images",
    "save_png",
    "plot_schedule",
    "noise_histogram",
    "frames_player",
]



# ---------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------
def _to_numpy(x) -> np.ndarray:
    """A torch tensor (any device, with or without grad) or array-like -> numpy."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _to_unit_range(x) -> np.ndarray:
    """Images -> float32 numpy array (N, H, W) or (N, H, W, 3) with values in [0, 1].

    uint8 is read as {0..255}; any other dtype as the model range [-1, 1].
    """
    a = _to_numpy(x)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"images must be uint8 or floating point, got dtype {a.dtype}")
    else:
        a = (a.astype(np.float32) + 1.0) / 2.0
    a = np.clip(a, 0.0, 1.0)
    if a.ndim == 2:  # one image (H, W)
        a = a[None]
    elif a.ndim == 4:  # (N, C, H, W)
        c = a.shape[1]
        if c == 1:
            a = a[:, 0]
        elif c == 3:
            a = a.transpose(0, 2, 3, 1)
        else:
            raise ValueError(f"expected 1 or 3 channels in (N, C, H, W), got shape {a.shape}")
    elif a.ndim != 3:
        raise ValueError(f"expected images of shape (N, 1, H, W), (N, H, W) or (H, W), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("got an empty batch of images")
    return a


def image_grid(x, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch of images into one array, ``nrow`` images per row.

    ``x``: float images in [-1, 1] or uint8 in {0..255}, shape (N, 1, H, W),
    (N, H, W) or (H, W). Returns a float32 numpy array with values in [0, 1]
    (0 = black, 1 = white) of shape
    ``(rows * (H + padding) + padding, cols * (W + padding) + padding)`` with
    ``cols = min(nrow, N)`` and ``rows = ceil(N / cols)`` -- the layout of
    ``torchvision.utils.make_grid``. Gaps and unused cells are ``pad_value``.
    Three-channel input gives a trailing RGB axis.
    """
    if int(nrow) < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    if int(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    a = _to_unit_range(x)
    n, h, w = a.shape[:3]
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    p = int(padding)
    grid = np.full((rows * (h + p) + p, cols * (w + p) + p, *a.shape[3:]), pad_value, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = p + r * (h + p), p + c * (w + p)
        grid[top : top + h, left : left + w] = a[i]
    return grid


def show_images(x, nrow: int = 8, title: str | None = None, ax=None, padding: int = 2):
    """Draw a batch of images as one grid (see :func:`image_grid`) and return the axis.

    If ``ax`` is None a new figure is made, sized to the grid; call
    ``plt.show()`` afterwards in a notebook.
    """
    grid = image_grid(x, nrow=nrow, padding=padding)
    if ax is None:
        import matplotlib.pyplot as plt

        height, width = grid.shape[:2]
        scale = 1.0 / 40.0  # inches per pixel: a 28-pixel digit is ~0.7 inch
        _, ax = plt.subplots(figsize=(max(2.0, width * scale), max(1.2, height * scale + (0.4 if title else 0.0))))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def save_png(x, path: str | os.PathLike, nrow: int = 8, padding: int = 2) -> Path:
    """Write the grid of ``x`` (see :func:`image_grid`) to ``path`` as an 8-bit PNG.

    The file is written atomically (:func:`ddpm_lib._io.atomic_write_bytes`), so a
    reader never sees a half-written PNG.
    Pixel values are ``round(255 * grid)``: uint8 input comes back unchanged and
    model-range input maps like :func:`ddpm_lib.data.from_model_range`.
    Returns the path.
    """
    from PIL import Image

    path = Path(path)
    grid = image_grid(x, nrow=nrow, padding=padding)
    pixels = np.rint(grid * 255.0).astype(np.uint8)
    image = Image.fromarray(pixels)  # uint8 (H, W) -> mode "L", (H, W, 3) -> "RGB"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------
# Schedules and histograms
# ---------------------------------------------------------------------------
def _density(x, bins: int, value_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of all values of ``x`` normalised as a density over *all* values.

    Values outside ``value_range`` count in the normalisation but are not
    drawn, so the bars always show the true fraction of pixels per unit.
    """
    values = _to_numpy(x).astype(np.float64).ravel()
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    width = edges[1] - edges[0]
    return counts / (max(len(values), 1) * width), edges


def plot_schedule(schedules: Mapping[str, object], axes=None, title: str | None = "Noise schedules"):
    """Plot beta_t, alpha_bar_t and log SNR(t) against t for several schedules.

    ``schedules``: ``{label: DiffusionSchedule}`` (anything with ``betas``,
    ``alpha_bars`` and ``snr`` tensors). t runs over the paper's 1..T. SNR is
    alpha_bar_t / (1 - alpha_bar_t), the signal-to-noise ratio of q(x_t | x_0);
    its natural log is plotted. Returns the figure; pass three ``axes`` to draw
    into an existing figure.
    """
    if not schedules:
        raise ValueError("pass at least one schedule, e.g. {'linear': make_schedule('linear')}")
    if axes is None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(9, 3.3), layout="constrained")
    else:
        if len(axes) != 3:
            raise ValueError(f"need 3 axes (beta, alpha_bar, log SNR), got {len(axes)}")
        fig = axes[0].figure
    ax_beta, ax_ab, ax_snr = axes
    for label, s in schedules.items():
        betas = _to_numpy(s.betas).astype(np.float64)
        t = np.arange(1, len(betas) + 1)
        ax_beta.plot(t, betas, label=label)
        ax_ab.plot(t, _to_numpy(s.alpha_bars), label=label)
        ax_snr.plot(t, np.log(_to_numpy(s.snr)), label=label)
    ax_beta.set(title=r"$\beta_t$ (Eq. 2)", xlabel="t", yscale="log")
    ax_ab.set(title=r"$\bar\alpha_t = \prod_{s\leq t}(1-\beta_s)$", xlabel="t", ylim=(0, 1.02))
    ax_snr.set(title=r"$\log\,\mathrm{SNR}(t) = \log\frac{\bar\alpha_t}{1-\bar\alpha_t}$", xlabel="t")
    ax_snr.axhline(0.0, color="0.6", lw=0.8, ls="--")
    for ax in axes:
        ax.grid(alpha=0.3)
    ax_ab.legend()
    if title:
        fig.suptitle(title)
    return fig


def noise_histogram(ax, x, bins: int = 60, value_range: tuple[float, float] = (-4.0, 4.0), reference: bool = True,
                    ylim: tuple[float, float] | None = None, title: str | None = None):
    """Histogram (as a density) of all values in ``x`` on ``ax``, with the N(0, 1) density.

    ``x`` is used as is (no rescaling), so pass model-range images or noise.
    The standard normal curve shows where the forward process is heading:
    x_T is (almost) N(0, I). Values outside ``value_range`` are not drawn. Returns ``ax``.
    """
    density, edges = _density(x, bins, value_range)
    ax.stairs(density, edges, fill=True, color="C0", alpha=0.75, label="pixels")
    if reference:
        grid = np.linspace(value_range[0], value_range[1], 400)
        ax.plot(grid, np.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi), color="C3", lw=1.5, label="N(0, 1)")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlim(value_range)
    if ylim is not None:
        ax.set_ylim(ylim)
    ax.set_xlabel("pixel value")
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


# ---------------------------------------------------------------------------
# Kernel-free player
# ---------------------------------------------------------------------------
def frames_player(
    frames: Sequence,
    labels: Sequence[str] | None = None,
    *,
    nrow: int = 8,
    histogram: bool = False,
    hist_range: tuple[float, float] = (-4.0, 4.0),
    hist_bins: int = 60,
    hist_ylim: tuple[float, float] | None = (0.0, 1.0),
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 72,
    **player_options,
):
    """A slider/player over batches of images that works without a kernel (:mod:`ddpm_lib.player`).

    ``frames``: a sequence of image batches (anything :func:`image_grid`
    takes), one per frame; ``labels``: one caption per frame (e.g. ``"t = 250"``).
    With ``histogram=True`` each frame also shows :func:`noise_histogram` of
    that frame's raw values (so pass model-range images), ``hist_bins`` bins
    over ``hist_range``, y axis fixed to ``hist_ylim`` so frames compare.

    Keep it light: a few dozen frames of a small figure at ``dpi=72`` is a few
    hundred kB. ``player_options`` go to :func:`ddpm_lib.player.animation_player`
    (``interval``, ``default_mode``, ``max_frames``, ``colors``, ``sheet_frames``:
    the frames printed side by side in the PDF, ...). Give the cell a figure caption
    (``mystnb: figure: caption``): the site shows it under the player, the PDF
    under the sheet.

    Returns a :class:`ddpm_lib.player.Player`; make it the last expression of a
    cell so that it is the cell's output.
    """
    from matplotlib.figure import Figure

    frames = list(frames)
    n = len(frames)
    if n == 0:
        raise ValueError("frames is empty")
    labels = [f"frame {i}" for i in range(n)] if labels is None else [str(s) for s in labels]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} frames; pass one per frame")
    grids = [image_grid(f, nrow=nrow) for f in frames]
    hists = [_density(f, hist_bins, hist_range)[0] for f in frames] if histogram else None

    if figsize is None:
        height, width = grids[0].shape[:2]
        img_w = min(5.0, max(1.6, 2.2 * width / height))
        figsize = (img_w + (2.8 if histogram else 0.0), 2.4)
    # A figure that pyplot does not manage: nothing else is displayed in the
    # notebook, and it works under any backend (Agg included).
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    if histogram:
        width_ratios = [figsize[0] - 2.8, 2.8]
        ax_img, ax_hist = fig.subplots(1, 2, width_ratios=width_ratios)
    else:
        ax_img, ax_hist = fig.subplots(1, 1), None
    image = ax_img.imshow(grids[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_img.set_axis_off()
    frame_label = ax_img.set_title(labels[0], fontsize="medium")
    if title:
        fig.suptitle(title, fontsize="medium")

    def draw(i):
        image.set_data(grids[i])
        frame_label.set_text(labels[i])
        if ax_hist is not None:
            bars.set_data(values=hists[i])
        return (image,)

    if ax_hist is not None:
        noise_histogram(ax_hist, frames[0], bins=hist_bins, value_range=hist_range, ylim=hist_ylim)
        bars = ax_hist.patches[0]  # the StepPatch drawn by ax.stairs

    return animation_player(fig, draw, n, **player_options)
