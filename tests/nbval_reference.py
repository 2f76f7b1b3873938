"""Give nbval something to compare: write the outputs of the site build into notebooks/*.ipynb.

The committed sources are MyST Markdown, so the .ipynb that jupytext generates
has no outputs, and nbval would have nothing to check the cells marked
``# NBVAL_CHECK_OUTPUT`` against. The book build (``make book``) executes every
chapter and keeps the results in its execution cache (jupyter-cache, in
``book/_build/.jupyter_cache``). This script looks each chapter up in that cache
(matched by the exact code of its cells) and writes the notebook with those
outputs to ``notebooks/NN_name.ipynb``, so that ``pytest --nbval-lax`` compares
each marked cell of a second, independent execution with what the site shows.

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


def main() -> int:
    if not CACHE.exists():
        print(f"error: no execution cache at {CACHE}; run `make book` first", file=sys.stderr)
        return 1
    cache = get_cache(str(CACHE))
    for md in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md")):
        nb = jupytext.read(md)
        try:
            _, merged = cache.merge_match_into_notebook(nb)
        except KeyError:
            print(f"error: {md.name} has no executed version in the cache (its code changed since the "
                  "last build); run `make book` first", file=sys.stderr)
            return 1
        target = md.with_suffix(".ipynb")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            nbformat.write(merged, f)
        os.replace(tmp, target)
        print(f"{target.relative_to(ROOT)}: reference outputs from the site build")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
