"""The form of the book's implementation exercises: the learner writes a piece, a checker confirms it.

An exercise has three cells. The learner's cell defines a function whose body is a stub,

    def my_p_sample(x_t, t, eps, z):
        your_turn("x_{t-1} from Eq. 11 and sigma_t z")

the folded solution cell defines the same function under another name, and the checker cell runs

    check(my_p_sample, solution=p_sample_solution, test=compare_with_library)

``test(fn)`` runs ``fn`` on the exercise's inputs and raises ``AssertionError`` if it is wrong.
Until the learner's function is written, :func:`check` says so and runs the test on the solution
instead, so the notebook runs from top to bottom (and the book's test suite checks every
solution); once it is written, the learner's own function is tested.
"""

from __future__ import annotations

from typing import Callable


class YourTurn(NotImplementedError):
    """Raised by an exercise's stub: the piece the learner is to write."""


def your_turn(what: str) -> None:
    """The body of an exercise's stub: raise :class:`YourTurn` naming what to write."""
    raise YourTurn(f"your turn: {what}")


def check(yours: Callable, solution: Callable, test: Callable[[Callable], None]) -> str:
    """Run ``test`` on the learner's function; if that is still a stub, on ``solution``. Prints and returns
    the verdict. A wrong answer raises the test's ``AssertionError``, with its message."""
    try:
        test(yours)
    except YourTurn as stub:
        test(solution)
        verdict = f"{stub} (not written yet). The folded solution passes the check."
    else:
        verdict = "Your version passes the check."
    print(verdict)
    return verdict
