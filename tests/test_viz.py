"""Tests for ddpm_lib.viz: grids, PNG files, schedule plots, histograms and the kernel-free player."""

import base64
import io
import math
import os
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddpm_lib import viz  # noqa: E402
from ddpm_lib.player import Player, animation_player, sheet_columns  # noqa: E402
from ddpm_lib.data import from_model_range  # noqa: E402
from ddpm_lib.schedule import make_schedule  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _three_uint8_images():
    """Three 2x3 uint8 images whose pixels are all different."""
    return torch.arange(18, dtype=torch.uint8).reshape(3, 2, 3) * 10


# --- image_grid --------------------------------------------------------------
def test_image_grid_layout_and_values_for_known_input():
    x = _three_uint8_images()
    grid = viz.image_grid(x, nrow=2, padding=1, pad_value=0.25)
    # 2 columns, ceil(3/2) = 2 rows; each cell 2x3 plus 1-pixel gaps all round.
    assert grid.shape == (2 * (2 + 1) + 1, 2 * (3 + 1) + 1)
    assert grid.dtype == np.float32
    expected = x.numpy().astype(np.float32) / 255.0
    np.testing.assert_allclose(grid[1:3, 1:4], expected[0])
    np.testing.assert_allclose(grid[1:3, 5:8], expected[1])
    np.testing.assert_allclose(grid[4:6, 1:4], expected[2])
    # the unused fourth cell and every gap hold pad_value
    assert np.all(grid[4:6, 5:8] == 0.25)
    assert np.all(grid[0, :] == 0.25) and np.all(grid[3, :] == 0.25) and np.all(grid[:, 4] == 0.25)


def test_image_grid_maps_model_range_to_unit_range_and_clips():
    x = torch.tensor([[-1.0, 0.0], [1.0, 3.0]])  # one (H, W) image
    grid = viz.image_grid(x, padding=0)
    np.testing.assert_allclose(grid, [[0.0, 0.5], [1.0, 1.0]])


def test_image_grid_accepts_all_documented_shapes_and_numpy():
    x = torch.rand(5, 1, 4, 4) * 2 - 1
    a = viz.image_grid(x, nrow=3)
    np.testing.assert_array_equal(a, viz.image_grid(x[:, 0], nrow=3))
    np.testing.assert_array_equal(a, viz.image_grid(x.numpy(), nrow=3))
    np.testing.assert_array_equal(a, viz.image_grid(x.requires_grad_(True), nrow=3))
    assert viz.image_grid(x[0, 0]).shape == (4 + 4, 4 + 4)
    # nrow larger than the batch: a single row of N images
    assert viz.image_grid(x, nrow=100, padding=0).shape == (4, 5 * 4)


def test_image_grid_rgb_gives_trailing_channel_axis():
    x = torch.zeros(2, 3, 4, 4)
    assert viz.image_grid(x, nrow=2, padding=0).shape == (4, 8, 3)


@pytest.mark.parametrize(
    "bad, err",
    [
        (torch.zeros(2, 2, 4, 4), ValueError),   # two channels
        (torch.zeros(1, 1, 1, 4, 4), ValueError),  # 5-D
        (torch.zeros(0, 4, 4), ValueError),      # empty batch
        (torch.zeros(2, 4, 4, dtype=torch.bool), TypeError),
    ],
)
def test_image_grid_rejects_bad_input(bad, err):
    with pytest.raises(err):
        viz.image_grid(bad)


def test_image_grid_rejects_bad_nrow():
    with pytest.raises(ValueError, match="nrow"):
        viz.image_grid(torch.zeros(2, 4, 4), nrow=0)


# --- show_images ---------------------------------------------------------------
def test_show_images_draws_the_grid_on_the_given_axis():
    fig, ax = plt.subplots()
    x = _three_uint8_images()
    out = viz.show_images(x, nrow=3, title="three", ax=ax)
    assert out is ax
    assert ax.get_title() == "three"
    (img,) = ax.get_images()
    np.testing.assert_array_equal(img.get_array(), viz.image_grid(x, nrow=3))
    assert img.get_clim() == (0.0, 1.0)


def test_show_images_makes_a_figure_when_no_axis():
    before = len(plt.get_fignums())
    ax = viz.show_images(torch.zeros(4, 1, 28, 28), nrow=2)
    assert len(plt.get_fignums()) == before + 1
    assert len(ax.get_images()) == 1


# --- save_png ------------------------------------------------------------------
def test_save_png_round_trip_uint8_is_exact(tmp_path):
    x = torch.randint(0, 256, (6, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path = viz.save_png(x, tmp_path / "sub" / "grid.png", nrow=3)
    assert path == tmp_path / "sub" / "grid.png"
    with Image.open(path) as im:
        assert im.mode == "L"
        back = np.array(im)
    assert back.shape == viz.image_grid(x, nrow=3).shape
    # each cell comes back bit for bit
    for i in range(6):
        r, c = divmod(i, 3)
        cell = back[2 + r * 30 : 2 + r * 30 + 28, 2 + c * 30 : 2 + c * 30 + 28]
        np.testing.assert_array_equal(cell, x[i].numpy())
    # only the final file is left behind: no temporary files
    assert os.listdir(path.parent) == ["grid.png"]


def test_save_png_model_range_matches_from_model_range(tmp_path):
    x = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    path = viz.save_png(x, tmp_path / "f.png", nrow=2, padding=0)
    with Image.open(path) as im:
        back = np.array(im)
    expected = np.concatenate(list(from_model_range(x).numpy()), axis=1)
    np.testing.assert_array_equal(back, expected)


def test_save_png_overwrites_atomically(tmp_path):
    path = tmp_path / "g.png"
    path.write_bytes(b"old")
    viz.save_png(torch.zeros(1, 4, 4, dtype=torch.uint8), path)
    with Image.open(path) as im:
        assert im.size == (8, 8)
    assert sorted(os.listdir(tmp_path)) == ["g.png"]


def test_save_png_leaves_nothing_when_it_fails(tmp_path):
    with pytest.raises(ValueError):
        viz.save_png(torch.zeros(2, 2, 4, 4), tmp_path / "bad.png")
    assert os.listdir(tmp_path) == []


# --- plot_schedule -------------------------------------------------------------
def test_plot_schedule_draws_each_schedule_on_three_panels():
    schedules = {"linear": make_schedule("linear", 100), "cosine": make_schedule("cosine", 100)}
    fig = viz.plot_schedule(schedules)
    axes = fig.axes
    assert len(axes) == 3
    for ax in axes:
        assert len(ax.get_lines()) >= 2
    beta_line = axes[0].get_lines()[0]
    np.testing.assert_array_equal(beta_line.get_xdata(), np.arange(1, 101))
    np.testing.assert_allclose(beta_line.get_ydata(), schedules["linear"].betas.numpy())
    np.testing.assert_allclose(axes[1].get_lines()[1].get_ydata(), schedules["cosine"].alpha_bars.numpy())
    snr = schedules["cosine"].snr.numpy()
    np.testing.assert_allclose(axes[2].get_lines()[1].get_ydata(), np.log(snr))
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["linear", "cosine"]


def test_plot_schedule_needs_a_schedule():
    with pytest.raises(ValueError):
        viz.plot_schedule({})


# --- noise_histogram -----------------------------------------------------------
def test_noise_histogram_is_a_density_matching_the_normal():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    fig, ax = plt.subplots()
    viz.noise_histogram(ax, x, bins=40, value_range=(-4.0, 4.0))
    (bars,) = ax.patches
    density, edges = bars.get_data().values, bars.get_data().edges
    width = edges[1] - edges[0]
    # mass inside [-4, 4] is P(|z| < 4) = 0.99994
    assert abs(density.sum() * width - math.erf(4 / math.sqrt(2))) < 1e-3
    centres = (edges[:-1] + edges[1:]) / 2
    pdf = np.exp(-0.5 * centres**2) / math.sqrt(2 * math.pi)
    assert np.max(np.abs(density - pdf)) < 0.01
    # the N(0, 1) reference curve is drawn
    assert len(ax.get_lines()) == 1


def test_noise_histogram_counts_out_of_range_values_in_the_normalisation():
    fig, ax = plt.subplots()
    x = np.array([0.1, 0.1, 10.0, 10.0])  # half the values are outside the range
    viz.noise_histogram(ax, x, bins=2, value_range=(0.0, 1.0), reference=False)
    np.testing.assert_allclose(ax.patches[0].get_data().values, [1.0, 0.0])
    assert ax.get_lines() == []


# --- frames_player -------------------------------------------------------------
def _frames(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    return [x0 + 0.3 * k * torch.randn(x0.shape, generator=g) for k in range(n)]


def _embedded_pngs(html):
    return re.findall(r'"data:image/png;base64,(.*?)"', html, flags=re.S)


@pytest.mark.parametrize("histogram", [False, True])
def test_frames_player_embeds_one_png_per_frame(histogram):
    n = 7
    figs_before = plt.get_fignums()
    html = viz.frames_player(_frames(n), [f"t = {k}" for k in range(n)], nrow=4, histogram=histogram)
    assert isinstance(html, Player)
    text = html.html
    pngs = _embedded_pngs(text)
    assert len(pngs) == n
    assert f"new Array({n})" in text
    assert text.count("<img ") == 1            # one <img> element that the script flips through
    assert 'type="range"' in text              # the slider
    assert "http://" not in text and "https://" not in text and "//maxcdn" not in text   # nothing from the web
    decoded = [base64.b64decode(p.replace("\\\n", "")) for p in pngs]
    sizes = set()
    for data in decoded:
        with Image.open(io.BytesIO(data)) as im:
            sizes.add(im.size)
    assert len(sizes) == 1                     # every frame has the same size
    assert len(set(decoded)) == n              # and the frames differ
    assert plt.get_fignums() == figs_before    # no stray pyplot figure is left to display


def test_frames_player_stays_small():
    html = viz.frames_player(_frames(25), [str(k) for k in range(25)], nrow=4, histogram=True)
    assert len(html.html) < 2_000_000


def test_frames_player_stores_palette_frames_smaller_and_alike():
    """colors=64: every frame a palette PNG of at most 64 colours, the player smaller than with full-colour frames,
    and each frame close to its full-colour version (mean absolute difference under 2 of 255 grey levels)."""
    n, labels = 6, [f"t = {k}" for k in range(6)]
    full = viz.frames_player(_frames(n), labels, nrow=4, histogram=True, colors=None).html
    small = viz.frames_player(_frames(n), labels, nrow=4, histogram=True, colors=64).html
    assert len(small) < 0.7 * len(full)
    for a, b in zip(_embedded_pngs(full), _embedded_pngs(small)):
        with Image.open(io.BytesIO(base64.b64decode(a.replace("\\\n", "")))) as im_a, \
                Image.open(io.BytesIO(base64.b64decode(b.replace("\\\n", "")))) as im_b:
            assert im_b.mode == "P" and len(im_b.getcolors(256)) <= 64
            pa, pb = (np.asarray(im.convert("L"), dtype=float) for im in (im_a, im_b))
            assert pa.shape == pb.shape and np.abs(pa - pb).mean() < 2
    with pytest.raises(ValueError, match="colors must be between 2 and 256"):
        viz.frames_player(_frames(2), colors=1)


def test_frames_player_gives_the_html_and_a_printed_sheet_of_its_frames():
    """A cell's output gets both: text/html (the site, JupyterLab) and image/png (the PDF); the sheet is the
    frames evenly spread from first to last, each as the player draws it, tiled with white gaps."""
    from IPython.core.formatters import DisplayFormatter

    n, labels = 11, [f"t = {k}" for k in range(11)]
    player = viz.frames_player(_frames(n), labels, nrow=4, colors=None, sheet_frames=4)
    bundle, _ = DisplayFormatter().format(player)
    assert bundle["text/html"] == player.html and bundle["image/png"] == player.sheet
    assert player.shown == [0, 3, 7, 10] and "11 frames" in bundle["text/plain"]
    with Image.open(io.BytesIO(player.sheet)) as im:
        sheet = np.asarray(im.convert("RGB"))
    one = viz.frames_player(_frames(n)[:1], labels[:1], nrow=4, colors=None, sheet_frames=1)
    with Image.open(io.BytesIO(one.sheet)) as im:
        first = np.asarray(im.convert("RGB"))          # frame 0 alone, drawn the same way
    h, w = first.shape[:2]
    cols = sheet_columns(4, w, h)
    gap = (sheet.shape[1] - cols * w) // max(cols - 1, 1)
    assert sheet.shape == ((4 // cols) * h + (4 // cols - 1) * gap, cols * w + (cols - 1) * gap, 3)
    np.testing.assert_array_equal(sheet[:h, :w], first)     # the first tile is frame 0
    assert (sheet[:, w:w + gap] == 255).all()                  # white between the tiles
    # every frame when there are fewer than sheet_frames; a palette sheet by default
    small = viz.frames_player(_frames(3), sheet_frames=8)
    assert small.shown == [0, 1, 2]
    with Image.open(io.BytesIO(small.sheet)) as im:
        assert im.mode == "P" and len(im.getcolors(256)) <= 64


def test_sheet_columns_aim_at_a_page_shaped_sheet():
    assert sheet_columns(8, 300, 100) == 2      # wide frames: two columns of four, 600 x 400
    assert sheet_columns(8, 100, 100) == 4      # squares: 4 x 2 (2.0) is nearer 1.5 than 3 x 3 (1.0) on a log scale
    assert sheet_columns(6, 100, 300) == 6      # tall frames: one row, 600 x 300
    assert sheet_columns(1, 100, 100) == 1


def test_animation_player_plays_any_figure_and_leaves_it_at_frame_0():
    """The generic player (chapter 4's Langevin particles): a scatter whose points move."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2), dpi=50)
    ax = fig.subplots()
    points = [np.full((5, 2), k, dtype=float) for k in range(4)]
    dots = ax.scatter(*points[0].T)
    ax.set(xlim=(-1, 4), ylim=(-1, 4))

    def draw(i):
        dots.set_offsets(points[i])

    player = animation_player(fig, draw, 4, sheet_frames=2)
    assert len(_embedded_pngs(player.html)) == 4 and player.shown == [0, 3]
    np.testing.assert_array_equal(dots.get_offsets(), points[0])
    with pytest.raises(ValueError, match="sheet_frames"):
        animation_player(fig, draw, 4, sheet_frames=0)


def test_frames_player_checks_its_arguments():
    with pytest.raises(ValueError, match="empty"):
        viz.frames_player([])
    with pytest.raises(ValueError, match="labels"):
        viz.frames_player(_frames(3), ["a", "b"])
    with pytest.raises(ValueError, match="max_frames"):
        viz.frames_player(_frames(5), max_frames=4)


def test_frames_player_refuses_to_drop_frames_silently():
    with pytest.raises(RuntimeError, match="embedded"):
        viz.frames_player(_frames(6), embed_limit_mb=1e-9)
