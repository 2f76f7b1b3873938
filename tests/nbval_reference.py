"""Give nbval something to compare: write the outputs of the site build into notebooks/*.ipynb.

The committed sources are MyST Markdown, so the .ipynb that jupytext generates
has no outputs, and nbval would have nothing to check the cells tagged
``nbval-check-output`` against. The book build (``make book``) executes every
chapter and keeps the results in its execution cache (jupyter-cache, in
``book/_build/.jupyter_cache``). This script looks each chapter up in that cache
(matched by the exact code and metadata, tags included, of its cells) and writes
the notebook with those outputs to ``notebooks/NN_name.ipynb``, so that
``pytest --nbval-lax`` compares each tagged cell of a second, independent
execution with what the site shows.

Which cells nbval checks is set by cell tags, which nbval reads from the cell
metadata and readers of the site never see: in a chapter's source,

    ```{code-cell} ipython3
    :tags: [nbval-check-output]
    ```

(``nbval-ignore-output``, ``nbval-skip`` and ``raises-exception`` work the same
way). The merged notebook keeps the source's cell metadata, so the tags nbval
reads are the ones in the .md. nbval also still honours a
``# NBVAL_CHECK_OUTPUT`` comment line in a cell; chapters no longer use it, and
this script names any chapter that still does.

    python tests/nbval_reference.py   # run by `make test` after `make book`
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "book" / "_build" / ".jupyter_cache"
CHECK_TAG = "nbval-check-output"        # nbval: compare this cell's outputs with the reference
LEGACY_MARKER = "NBVAL_CHECK_OUTPUT"    # the same as a comment line in the cell (visible to readers)


def main() -> int:
    if not CACHE.exists():
        print(f"error: no execution cache at {CACHE}; run `make book` first", file=sys.stderr)
        return 1
    cache = get_cache(str(CACHE))
    for md in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md")):
        nb = jupytext.read(md)
        try:
            # cell_meta=(): every cell keeps the metadata (the tags) of the source, only outputs come from the cache
            _, merged = cache.merge_match_into_notebook(nb, cell_meta=())
        except KeyError:
            print(f"error: {md.name} has no executed version in the cache (its code changed since the "
                  "last build); run `make book` first", file=sys.stderr)
            return 1
        target = md.with_suffix(".ipynb")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            nbformat.write(merged, f)
        os.replace(tmp, target)
        checked, legacy = checked_cells(merged)
        print(f"{target.relative_to(ROOT)}: reference outputs from the site build; "
              f"nbval checks the outputs of {checked} tagged cell(s)")
        if legacy:
            print(f"  {md.name}: {legacy} cell(s) still marked with a '# {LEGACY_MARKER}' comment; "
                  f"tag them `{CHECK_TAG}` instead", file=sys.stderr)
    return 0


def checked_cells(nb: nbformat.NotebookNode) -> tuple[int, int]:
    """(code cells tagged ``nbval-check-output``, code cells still carrying the comment marker)."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    tagged = sum(CHECK_TAG in cell.metadata.get("tags", []) for cell in code)
    legacy = sum(any(line.strip().lstrip("#").strip() == LEGACY_MARKER for line in cell.source.splitlines()
                     if line.strip().startswith("#")) for cell in code)
    return tagged, legacy


if __name__ == "__main__":
    raise SystemExit(main())
