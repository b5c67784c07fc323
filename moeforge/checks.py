"""The argument checks every layer shares: an integer in a range, one of a set of choices.

A leaf module (it imports nothing): the config raises its `ConfigError` from the same problem
text (`int_problem`, `choice_problem`), the RTL units, the golden model and the specification
raise `TypeError`/`ValueError` through `check_int` and `check_choice`.
"""

__all__ = ["int_problem", "choice_problem", "check_int", "check_choice"]


def int_problem(value, lo: int, hi: int):
    """What is wrong with `value` as an integer (not a bool) in ``[lo, hi]``: ``(exception
    type, message)``, or None when nothing is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return TypeError, f"must be an integer in [{lo}, {hi}], not {value!r}"
    if not lo <= value <= hi:
        return ValueError, f"must be in [{lo}, {hi}], not {value!r}"
    return None


def choice_problem(value, choices):
    """What is wrong with `value` as one of `choices`: a message, or None."""
    if value not in choices:
        return f"must be one of {', '.join(choices)}; not {value!r}"
    return None


def check_int(name: str, value, lo: int, hi: int) -> None:
    """`value` is an integer (not a bool) in ``[lo, hi]``.

    Raises
    ------
    TypeError
        If it is not an integer.
    ValueError
        If it is outside ``[lo, hi]``; the message names `name` and the range.
    """
    problem = int_problem(value, lo, hi)
    if problem is not None:
        error, message = problem
        raise error(f"{name} {message}")


def check_choice(name: str, value, choices) -> None:
    """`value` is one of `choices`; otherwise a `ValueError` naming `name` and the choices."""
    problem = choice_problem(value, choices)
    if problem is not None:
        raise ValueError(f"{name} {problem}")
