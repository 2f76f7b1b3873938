"""The exercise checker (ddpm_lib.exercises): a stub falls back to the solution, a learner's version is tested,
and a wrong answer fails loudly, whether it is the learner's or (a bug in the book) the solution's."""

import re

import pytest

from _chapters import CHAPTERS
from ddpm_lib.exercises import YourTurn, check, your_turn


def stub(x):
    your_turn("double x")


def solution(x):
    return 2 * x


def _doubles(fn):
    assert fn(3) == 6, f"expected 6, got {fn(3)}"


def test_a_stub_is_reported_and_the_solution_checked(capsys):
    verdict = check(stub, solution, _doubles)
    assert verdict.startswith("your turn: double x (not written yet)") and "solution passes" in verdict
    assert capsys.readouterr().out.strip() == verdict
    with pytest.raises(YourTurn, match="your turn: double x"):
        stub(1)


def test_the_learners_version_is_the_one_tested():
    assert check(lambda x: x + x, solution, _doubles) == "Your version passes the check."
    with pytest.raises(AssertionError, match="expected 6, got 9"):
        check(lambda x: 3 * x, solution, _doubles)
    with pytest.raises(AssertionError, match="expected 6, got 4"):       # a wrong solution is not hidden either
        check(stub, lambda x: x + 1, _doubles)




@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_a_derivation_and_an_implementation_to_write(path):
    """Each chapter's exercises ask the learner to derive a result (an exercise followed by a folded worked
    solution) and to write code (a stub that calls your_turn, its folded solution, and a check() that runs the
    learner's version against a test, falling back to the solution so that the book still executes)."""
    text = path.read_text()
    exercises = text[text.index("\n## Exercises\n"):]
    assert re.search(r":::\{admonition\} Exercise \d+\.\d+\n", exercises), "no exercise"
    assert re.search(r":::\{admonition\} Solution\n:class: dropdown\n", exercises), "no worked derivation"
    stub = re.search(r"```\{code-cell\} ipython3\ndef (my_\w+)\(.*?\n    your_turn\(", exercises, re.S)
    assert stub, "no stub for the learner to write (def my_...: your_turn(...))"
    assert re.search(rf"^check\(\s*{stub.group(1)},\s*solution=\w+,\s*test=\w+,?\s*\)$", exercises, re.M), (
        f"{stub.group(1)} is never checked: call check({stub.group(1)}, solution=..., test=...)")
