"""The exercise checker (ddpm_lib.exercises): a stub falls back to the solution, a learner's version is tested,
and a wrong answer fails loudly, whether it is the learner's or (a bug in the book) the solution's."""

import pytest

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
