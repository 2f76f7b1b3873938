"""The chapters' sources (notebooks/NN_name.md, MyST Markdown), read the one way the tests share."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: Every chapter, in the book's order (book/_toc.yml takes the same glob).
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))

# a code cell: its options (a YAML block between --- lines, or :key: value lines), then its source
_CELL = re.compile(r"```\{code-cell\} ipython3\n(?:---\n(?P<yaml>.*?)\n---\n|(?P<short>(?::[a-z_-]+:[^\n]*\n)+))?"
                   r"(?P<source>.*?)```", re.S)


@dataclass
class CodeCell:
    options: dict      # the cell's metadata: tags, mystnb (figure caption, code_prompt_show, ...)
    source: str

    @property
    def tags(self) -> list[str]:
        return list(self.options.get("tags", []))

    @property
    def figure(self) -> dict:
        return (self.options.get("mystnb") or {}).get("figure") or {}

    def shows(self) -> str | None:
        """The name of the function whose call is the cell's last statement (what the cell displays), if any."""
        try:
            body = ast.parse(self.source).body
        except SyntaxError:
            return None
        if body and isinstance(body[-1], ast.Expr) and isinstance(body[-1].value, ast.Call):
            func = body[-1].value.func
            return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        return None


def code_cells(path: Path) -> list[CodeCell]:
    cells = []
    for m in _CELL.finditer(path.read_text()):
        if m["yaml"] is not None:
            options = yaml.safe_load(m["yaml"]) or {}
        elif m["short"]:
            options = {k: yaml.safe_load(v) for k, v in re.findall(r"^:([a-z_-]+):\s*(.*)$", m["short"], re.M)}
        else:
            options = {}
        cells.append(CodeCell(options, m["source"]))
    return cells


def is_player(cell: CodeCell) -> bool:
    """A cell that shows a kernel-free player (ddpm_lib.player: a slider on the site, a sheet of frames in print):
    its last statement calls a function named ...player."""
    return (cell.shows() or "").endswith("player")


def is_solution(cell: CodeCell) -> bool:
    """A solution's code cell: folded on the site behind "Show solution", printed in the PDF."""
    return "hide-cell" in cell.tags and (cell.options.get("mystnb") or {}).get("code_prompt_show") == "Show solution"
