"""What the PDF needs that the site does not: the exercises' solutions printed, long tables wrapped.

**Solutions.**
On the site a solution's code cell is folded behind "Show solution" (the cell's
``hide-cell`` tag with ``mystnb: code_prompt_show: Show solution``). For LaTeX,
sphinx-jupyterbook-latex drops every ``hide-cell`` cell, because paper cannot
unfold one. That is right for the folded assert-only checks, which are test
machinery, and wrong for a solution, which a reader of the printed book needs
as much as the exercise. So, for the LaTeX builder only and before that drop,
a solution's cell loses its ``hide-cell`` mark and gets a "Solution (code)"
heading above it; every other folded cell is still left out of print.

A solution in prose (an admonition with the ``dropdown`` class) needs nothing:
LaTeX prints an admonition whole.

**Long tables.** Sphinx sets a table of more than 30 rows as a ``longtable``
(it may break across pages) with one unbreakable ``l`` column per column, so a
wide one runs off the page (chapter 11's results table lost two columns). A
scrolling box is the site's answer; on paper each column is given a width in
proportion to its longest entry (``MIN_COLUMN`` to ``MAX_COLUMN`` characters), and
its text wraps.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

#: The fold's label that marks a cell as a solution (the chapters' ``mystnb: code_prompt_show``).
SOLUTION_PROMPT = "Show solution"
HIDDEN = "tag_hide-cell"


def is_solution(node: nodes.Node) -> bool:
    """A code cell folded on the site as a solution."""
    return (isinstance(node, nodes.container) and node.get("nb_element") == "cell_code"
            and HIDDEN in node["classes"] and node.get("prompt_show") == SOLUTION_PROMPT)


class PrintSolutions(SphinxPostTransform):
    """Unfold the solutions' code cells for LaTeX (sphinx-jupyterbook-latex removes folded cells at 400)."""

    default_priority = 390
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        for cell in list(self.document.findall(is_solution)):
            cell["classes"].remove(HIDDEN)
            heading = nodes.rubric("", "Solution (code)")
            cell.parent.insert(cell.parent.index(cell), heading)


#: The longest entry, in characters, that still widens its column, and the narrowest column (a number
#: such as "1,964" with the table's padding).
MAX_COLUMN, MIN_COLUMN = 40, 8


class WrapLongTables(SphinxPostTransform):
    """Column widths for LaTeX's longtables (over 30 rows), which otherwise get unbreakable columns."""

    default_priority = 390
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        for table in self.document.findall(nodes.table):
            for group in table.findall(nodes.tgroup):
                rows = list(group.findall(nodes.row))
                colspecs = [c for c in group.children if isinstance(c, nodes.colspec)]
                if len(rows) <= 30 or "colwidths-given" in table["classes"] or not colspecs:
                    continue
                for k, colspec in enumerate(colspecs):
                    cells = [row.children[k] for row in rows if k < len(row.children)]
                    colspec["colwidth"] = max(MIN_COLUMN, min(MAX_COLUMN, max(len(c.astext()) for c in cells)))
                table["classes"].append("colwidths-given")


def setup(app):
    app.add_post_transform(PrintSolutions)
    app.add_post_transform(WrapLongTables)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
