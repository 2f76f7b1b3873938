"""The whole book as one PDF (`make pdf`): every chapter in it, in order, and every page renders.

The PDF needs TeX Live, which is not a Python package (the Makefile's `pdf` target names the Debian
packages), so these tests run where `make pdf` has been run and say so where it has not.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PDF = ROOT / "book" / "_build" / "latex" / "ddpm-book.pdf"
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))

pytestmark = [
    pytest.mark.skipif(not PDF.exists(), reason=f"no {PDF.relative_to(ROOT)}: run `make pdf` (needs TeX Live)"),
    pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (pdftoppm, pdftotext)"),
]


def title_words(path: Path) -> str:
    """The chapter title up to its first maths or colon: what LaTeX prints as plain words."""
    title = next(line[2:] for line in path.read_text().splitlines() if line.startswith("# "))
    return re.split(r"[$:]", title)[0].strip()


def test_every_chapter_is_in_the_pdf_in_order():
    text = subprocess.run(["pdftotext", "-layout", str(PDF), "-"], capture_output=True, text=True,
                          check=True).stdout
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
