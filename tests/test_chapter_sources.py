"""The chapters' sources as a reader meets them: code that fits a page without scrolling sideways, and every
player captioned like a figure."""

import pytest

from _chapters import CHAPTERS, code_cells, is_player

CODE_WIDTH = 88          # characters: black's default, "near 80"; the site's code column and an A4 page hold it


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit(path):
    """Every line of every code cell is at most CODE_WIDTH characters (issue 25): on the site, in the PDF and in
    a notebook next to a plot, a longer line scrolls sideways or is cut. (The cell's options are not shown as
    code.)"""
    cells = code_cells(path)
    assert cells, "no code cells found"
    long = [line.strip()[:60] for cell in cells for line in cell.source.split("\n") if len(line) > CODE_WIDTH]
    assert not long, f"{len(long)} code lines over {CODE_WIDTH} characters, e.g. {long[:3]}"


def test_every_player_is_a_captioned_figure():
    """A player's cell carries a figure caption and name (``mystnb: figure``), as every figure's cell does: the
    site shows the caption under the slider, the PDF under the player's sheet of frames. Seven players in all
    (chapters 1, 4, 7, 9, 10 and 14)."""
    players = {(path.stem, cell.source.strip().splitlines()[-1]): cell.figure
               for path in CHAPTERS for cell in code_cells(path) if is_player(cell)}
    assert len(players) >= 7, f"only {len(players)} players found: {list(players)}"
    bare = [where for where, figure in players.items() if not (figure.get("caption") and figure.get("name"))]
    assert not bare, f"players without a figure caption and name: {bare}"
