"""The PDF prints the exercises' solutions that the site folds.

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
        for cell in [n for n in self.document.findall(is_solution)]:
            cell["classes"].remove(HIDDEN)
            heading = nodes.rubric("", "Solution (code)")
            cell.parent.insert(cell.parent.index(cell), heading)


def setup(app):
    app.add_post_transform(PrintSolutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
