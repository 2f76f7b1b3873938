"""The whole book as one PDF (`make pdf`): every chapter in it, in order, every page renders, and what the site
folds or plays is on paper: the exercises' solutions printed, each player as a sheet of its frames.

The PDF needs TeX Live, which is not a Python package (the Makefile's `pdf` target names the Debian
packages), so these tests run where `make pdf` has been run and say so where it has not.
"""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from _chapters import CHAPTERS, ROOT, code_cells, is_player, is_solution

PDF = ROOT / "book" / "_build" / "latex" / "ddpm-book.pdf"

pytestmark = [
    pytest.mark.skipif(not PDF.exists(), reason=f"no {PDF.relative_to(ROOT)}: run `make pdf` (needs TeX Live)"),
    pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (pdftoppm, pdftotext)"),
]


def title_words(path) -> str:
    """The chapter title up to its first maths or colon: what LaTeX prints as plain words."""
    title = next(line[2:] for line in path.read_text().splitlines() if line.startswith("# "))
    return re.split(r"[$:]", title)[0].strip()


def pdf_text(layout: bool = True) -> str:
    return subprocess.run(["pdftotext", *(["-layout"] if layout else []), str(PDF), "-"], capture_output=True,
                          text=True, check=True).stdout


def test_every_chapter_is_in_the_pdf_in_order():
    text = pdf_text()
    starts = []
    for number, path in enumerate(CHAPTERS, 1):
        heading = re.search(rf"Chapter {number}\.\s+{re.escape(title_words(path))}", text)
        assert heading, f"chapter {number} ({path.stem}, '{title_words(path)}') is not in the PDF"
        starts.append(heading.start())
    assert starts == sorted(starts), "the chapters are out of order"


def test_every_page_renders(tmp_path):
    pages = int(re.search(r"^Pages:\s+(\d+)", subprocess.run(["pdfinfo", str(PDF)], capture_output=True,
                                                             text=True, check=True).stdout, re.M)[1])
    assert pages > 10 * len(CHAPTERS), f"{pages} pages for {len(CHAPTERS)} chapters"
    subprocess.run(["pdftoppm", "-r", "10", "-png", str(PDF), str(tmp_path / "p")], check=True)
    images = sorted(tmp_path.glob("p-*.png"))
    assert len(images) == pages
    inked = [np.asarray(Image.open(p).convert("L")).min() < 128 for p in images]
    # the book class leaves some left-hand pages blank before a chapter; the rest carry text or figures
    assert sum(inked) > 0.9 * pages, f"only {sum(inked)} of {pages} pages have anything on them"


def test_the_solutions_that_the_site_folds_are_printed():
    """Each solution's code cell (folded behind "Show solution" on the site) is printed under a "Solution (code)"
    heading (book/_ext/print_book.py); the folded checks are not."""
    text = pdf_text()
    solutions = [cell for path in CHAPTERS for cell in code_cells(path) if is_solution(cell)]
    assert len(solutions) >= len(CHAPTERS)
    assert text.count("Solution (code)") == len(solutions)
    for cell in solutions:
        first = next(line.strip() for line in cell.source.splitlines() if line.strip())
        assert first[:40] in text, f"a solution is not printed: {first!r}"
    checks = [next((line.strip() for line in cell.source.splitlines() if line.strip().startswith("assert")), "")
              for path in CHAPTERS for cell in code_cells(path) if "hide-cell" in cell.tags and not is_solution(cell)]
    checks = [line for line in checks if len(line) >= 25]
    assert checks and not [line for line in checks if line[:40] in text], "a folded check is printed"


def test_every_player_is_printed_as_a_captioned_sheet_of_frames():
    """A player cannot play on paper: the PDF shows its sheet of frames (ddpm_lib.player), a picture at least
    400 pixels wide on the page of the player's figure caption."""
    pages = pdf_text(layout=False).replace("\u2019", "'").split("\f")      # LaTeX prints ' as a right quote
    players = [cell for path in CHAPTERS for cell in code_cells(path) if is_player(cell)]
    assert players
    for cell in players:
        words = re.split(r"[$({]", cell.figure["caption"])[0].strip()
        found = [k for k, page in enumerate(pages, 1)
                 if re.search(rf"Fig\. \d+\.\d+: {re.escape(words)}", " ".join(page.split()))]
        assert found, f"no printed figure for the player {words!r}"
        listing = subprocess.run(["pdfimages", "-list", "-f", str(found[0]), "-l", str(found[0]), str(PDF)],
                                 capture_output=True, text=True, check=True).stdout.splitlines()[2:]
        widths = [int(row.split()[3]) for row in listing]
        assert any(w >= 400 for w in widths), f"page {found[0]} has the caption {words!r} but no sheet: {widths}"


def test_no_table_or_figure_runs_off_the_page():
    """LaTeX's log names every line set wider than the page; a table's ("in alignment") was chapter 11's results
    table losing two columns before book/_ext/print_book.py gave long tables wrapping columns. A few points over
    are invisible; a column off the page is tens of points. A figure as tall as the page pushed its caption into
    the footer ("Float too large") until images were held to 80% of the page's height (book/_config.yml)."""
    log = PDF.with_suffix(".log").read_text(errors="replace")
    wide = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\) in alignment", log)]
    assert not [w for w in wide if w > 10], f"tables wider than the page by {sorted(wide)[-3:]} pt"
    assert "Float too large" not in log, re.findall(r"Float too large.*", log)
