"""Every chapter as a plain Jupyter notebook to download, and all of them in one zip.

The chapters' sources are MyST Markdown (``notebooks/NN_name.md``), which only opens as a
notebook where jupytext is installed. This extension writes, when the HTML build finishes,

* ``_notebooks/NN_name.ipynb``: each chapter converted by jupytext, without outputs (the
  learner runs it), its cells' tags and metadata kept;
* ``_notebooks/ddpm-book-notebooks.zip``: all of them, with a README that says where they run
  (inside a clone of the repository: they import ``ddpm_lib`` and read ``checkpoints/``);

and adds both to the download menu of every chapter page (sphinx-book-theme's "download
this page" group), before the ``.md`` source and the print button. Where ``make pdf`` has
built the whole book as one PDF (``book/_build/latex/ddpm-book.pdf``), the menu offers it too,
as ``_notebooks/ddpm-book.pdf``; where it has not, nothing links to it.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

from sphinx.application import Sphinx

FOLDER = "_notebooks"
ZIP_NAME = "ddpm-book-notebooks.zip"
CHAPTERS = "notebooks/"           # the docnames of the chapters: notebooks/NN_name
PDF_NAME = "ddpm-book.pdf"
BUILT_PDF = Path("book") / "_build" / "latex" / PDF_NAME   # what `make pdf` writes, under the source root
ZIP_README = """\
The chapters of "Denoising diffusion, by hand" as Jupyter notebooks, without outputs.

They import the book's library (ddpm_lib) and read its checkpoints, so they run inside a
clone of the book's repository: put them in its notebooks/ folder (or run `make notebooks`
there, which writes the same files), install with `make venv`, and open them in JupyterLab.
The chapter "Run it yourself" on the site has the details.
"""


def chapter_docnames(app: Sphinx) -> list[str]:
    """The chapters the build read, in order of their file names."""
    return sorted(d for d in app.env.found_docs if d.startswith(CHAPTERS))


def built_pdf(app: Sphinx) -> Path | None:
    """The whole book as one PDF, if ``make pdf`` has built it."""
    path = Path(app.srcdir) / BUILT_PDF
    return path if path.is_file() else None


def as_notebook(source: Path) -> str:
    """The chapter's MyST Markdown as an ``.ipynb`` document (JSON text), without outputs."""
    import jupytext

    return jupytext.writes(jupytext.read(source), fmt="ipynb")


def _add_menu_items(app: Sphinx, pagename: str, templatename, context, doctree) -> None:
    """Put the chapter's notebook and the zip of all chapters first in the page's download menu."""
    if not pagename.startswith(CHAPTERS):
        return
    group = next((b for b in context.get("header_buttons", []) if b.get("label") == "download-buttons"), None)
    if group is None:
        return
    pathto, name = context["pathto"], pagename[len(CHAPTERS):]
    group["buttons"][:0] = [
        {"type": "link", "url": pathto(f"{FOLDER}/{name}.ipynb", 1), "text": ".ipynb", "icon": "fas fa-code",
         "tooltip": "Download this chapter as a Jupyter notebook", "label": "download-notebook-button"},
        {"type": "link", "url": pathto(f"{FOLDER}/{ZIP_NAME}", 1), "text": "all (.zip)", "icon": "fas fa-file-zipper",
         "tooltip": "Download every chapter as a notebook, in one zip", "label": "download-all-notebooks-button"},
    ]
    if built_pdf(app) is not None:
        group["buttons"].insert(2, {
            "type": "link", "url": pathto(f"{FOLDER}/{PDF_NAME}", 1), "text": "book (.pdf)", "icon": "fas fa-file-pdf",
            "tooltip": "Download the whole book as one PDF", "label": "download-book-pdf-button"})


def _write_notebooks(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    folder = Path(app.outdir) / FOLDER
    folder.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ddpm-book-notebooks/README.txt", ZIP_README)
        for docname in chapter_docnames(app):
            name = Path(docname).name
            text = as_notebook(Path(app.srcdir) / f"{docname}.md")
            (folder / f"{name}.ipynb").write_text(text, encoding="utf8")
            archive.writestr(f"ddpm-book-notebooks/{name}.ipynb", text)
    (folder / ZIP_NAME).write_bytes(buffer.getvalue())
    pdf, copy = built_pdf(app), folder / PDF_NAME
    if pdf is None:
        copy.unlink(missing_ok=True)              # an earlier build's copy: nothing links to it now
    else:
        partial = copy.with_suffix(".pdf.partial")
        shutil.copyfile(pdf, partial)
        os.replace(partial, copy)                 # readers never see half a file


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", _add_menu_items, priority=502)   # after the theme fills its menus (501)
    app.connect("build-finished", _write_notebooks)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
