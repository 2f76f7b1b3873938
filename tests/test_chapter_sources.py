"""The chapters' sources as a reader meets them: code that fits a page without scrolling sideways."""

import re
from pathlib import Path

import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.md"))
CODE_WIDTH = 88          # characters: black's default, "near 80"; the site's code column and an A4 page hold it


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit(path):
    """Every line of every code cell is at most CODE_WIDTH characters (issue 25): on the site, in the PDF and in
    a notebook next to a plot, a longer line scrolls sideways or is cut."""
    # the cell's options (a YAML block between --- lines, or :tag: lines) are not shown as code: skip them
    cells = re.findall(r"```\{code-cell\} ipython3\n(?:---\n.*?\n---\n|(?::[a-z_-]+:[^\n]*\n)+)?(.*?)```",
                       path.read_text(), re.S)
    assert cells, "no code cells found"
    long = [line.strip()[:60] for cell in cells for line in cell.split("\n") if len(line) > CODE_WIDTH]
    assert not long, f"{len(long)} code lines over {CODE_WIDTH} characters, e.g. {long[:3]}"
