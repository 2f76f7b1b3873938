"""A player over precomputed frames that needs no kernel, on screen and in print.

A chapter shows a process step by step (noising, a reverse chain, Langevin
dynamics) as a *player*: the frames are drawn once with matplotlib, embedded as
PNGs in an HTML/JavaScript slider (matplotlib's ``to_jshtml``), and the page
scrubs through them with plain JavaScript: in JupyterLab, and on the static
site where no kernel runs.

Paper cannot scrub, so a :class:`Player` also carries a *sheet*: a few of its
frames, first and last included, side by side in one PNG. A notebook output
holds both (``text/html`` and ``image/png``); the site and JupyterLab show the
HTML, the book's PDF (``make pdf``) prints the sheet. A caption belongs to the
cell, as every figure's does (``mystnb: figure: caption``), so both get it.

* :func:`animation_player` -- any matplotlib figure and a ``draw(i)`` that shows frame i
* :class:`Player`          -- what it returns: the HTML and the sheet
* :func:`sheet_columns`    -- how many frames the sheet puts in a row

:func:`ddpm_lib.viz.frames_player` builds the figure for batches of images.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Callable

__all__ = ["Player", "animation_player", "sheet_columns"]

#: Default ``animation.embed_limit`` (MB): matplotlib drops the frames past it.
EMBED_LIMIT_MB = 50.0
#: The sheet's width over its height that :func:`sheet_columns` aims at: a page's text block, roughly.
SHEET_ASPECT = 1.5

FONT_AWESOME_CDN = re.compile(r"<link\b[^>]*href=[\"']?(?:https?:)?//[^\"'>\s]*font-awesome[^>]*>\s*", re.IGNORECASE)
_EMBEDDED_PNG = re.compile(r'"data:image/png;base64,([^"]+)"')


class Player:
    """A kernel-free player: ``html`` (the slider, every frame embedded) and ``sheet`` (PNG bytes: some frames
    side by side, for print). As a cell's last expression it gives the output both, as ``text/html`` and
    ``image/png``; each reader takes the one it can show."""

    def __init__(self, html: str, sheet: bytes, frames: int, shown: list[int]):
        self.html, self.sheet, self.frames, self.shown = html, sheet, frames, shown

    def _repr_html_(self) -> str:
        return self.html

    def _repr_png_(self) -> bytes:
        return self.sheet

    def __repr__(self) -> str:
        return f"<Player: {self.frames} frames; the printed sheet shows frames {self.shown}>"


def animation_player(
    fig,
    draw: Callable[[int], object],
    n: int,
    *,
    interval: int = 300,
    default_mode: str = "once",
    max_frames: int = 60,
    embed_limit_mb: float = EMBED_LIMIT_MB,
    colors: int | None = 64,
    sheet_frames: int = 8,
    sheet_dpi: int = 100,
) -> Player:
    """A :class:`Player` over the ``n`` frames that ``draw(i)`` draws on ``fig`` (i = 0 .. n-1).

    ``fig``: a matplotlib figure that pyplot does not manage (``matplotlib.figure.Figure``), or one closed with
    ``plt.close(fig)``, so that the notebook shows the player and not the still. ``draw(i)`` changes the
    artists for frame i (titles included: the sheet shows each frame as drawn). ``colors`` (default 64) stores
    each frame as a palette PNG of at most that many colours, about 2.5 times smaller and alike to the eye
    (``None``: full colour). The sheet shows ``sheet_frames`` frames evenly spread from the first to the last,
    drawn at ``sheet_dpi``. Raises if there are more than ``max_frames`` frames, or if matplotlib would drop
    frames because the HTML grows past ``embed_limit_mb``.
    """
    from matplotlib.animation import FuncAnimation

    _check(n, max_frames, embed_limit_mb, colors, sheet_frames)
    anim = FuncAnimation(fig, draw, frames=n, interval=interval, blit=False, repeat=False)
    html = _embedded_html(anim, n, default_mode, embed_limit_mb)
    if colors is not None:
        html = _EMBEDDED_PNG.sub(lambda m: _palette_frame(m, colors), html)
    m = min(sheet_frames, n)
    shown = sorted({round(k * (n - 1) / max(m - 1, 1)) for k in range(m)})
    sheet = _sheet(fig, draw, shown, sheet_dpi)
    draw(0)
    return Player(html, _palette_png(sheet, colors) if colors is not None else sheet, n, shown)


def sheet_columns(k: int, width: float, height: float, aspect: float = SHEET_ASPECT) -> int:
    """How many of ``k`` frames of ``width`` x ``height`` to put in a row so that the sheet's width over its
    height is closest to ``aspect`` (on a log scale; the fewer columns on a tie)."""
    def miss(c):
        return abs(math.log(c * width / (math.ceil(k / c) * height)) - math.log(aspect))
    return min(range(1, k + 1), key=miss)


def _sheet(fig, draw, shown: list[int], dpi: int) -> bytes:
    """Frames ``shown`` of the player, drawn by ``draw`` and tiled row by row into one PNG (white gaps)."""
    import numpy as np
    from PIL import Image

    tiles = []
    for i in shown:
        draw(i)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
        with Image.open(buf) as im:
            tiles.append(np.asarray(im.convert("RGB")))
    h, w = tiles[0].shape[:2]
    cols = sheet_columns(len(tiles), w, h)
    rows, gap = math.ceil(len(tiles) / cols), max(4, dpi // 10)
    canvas = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _palette_frame(match: re.Match, colors: int) -> str:
    """One frame embedded in the HTML again, as a palette PNG."""
    png = base64.b64decode(match.group(1).replace("\\\n", ""))       # to_jshtml breaks lines with "\\\n"
    return '"data:image/png;base64,' + base64.b64encode(_palette_png(png, colors)).decode("ascii") + '"'


def _palette_png(png: bytes, colors: int) -> bytes:
    """A PNG again, as a palette PNG of at most ``colors`` colours."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        palette = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    palette.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _check(n: int, max_frames: int, embed_limit_mb: float, colors: int | None, sheet_frames: int) -> None:
    if colors is not None and not 2 <= colors <= 256:
        raise ValueError(f"colors must be between 2 and 256 (or None: full colour), got {colors}")
    if not embed_limit_mb > 0:
        raise ValueError(f"embed_limit_mb must be positive, got {embed_limit_mb}")
    if sheet_frames < 1:
        raise ValueError(f"sheet_frames must be at least 1 (the printed sheet shows that many), got {sheet_frames}")
    if n == 0:
        raise ValueError("frames is empty")
    if n > max_frames:
        raise ValueError(
            f"{n} frames is more than max_frames={max_frames}; every frame is embedded as a PNG, "
            "so pick fewer timesteps (20-40 is plenty) or raise max_frames on purpose"
        )


def _embedded_html(anim, n: int, default_mode: str, embed_limit_mb: float) -> str:
    """The player's HTML with every frame embedded as a PNG and no request to the web."""
    import matplotlib as mpl

    with mpl.rc_context({"animation.embed_limit": float(embed_limit_mb)}):
        html = anim.to_jshtml(default_mode=default_mode)
    # matplotlib links Font Awesome 4 from a CDN for the buttons' icons: drop the link, so the player makes no
    # request to the web (JupyterLab and the book's theme ship Font Awesome themselves)
    html = FONT_AWESOME_CDN.sub("", html)
    embedded = html.count('"data:image/png;base64,')
    if embedded != n:
        raise RuntimeError(
            f"only {embedded} of {n} frames were embedded (animation.embed_limit={embed_limit_mb} MB); "
            "use fewer or smaller frames, or raise embed_limit_mb"
        )
    return html
