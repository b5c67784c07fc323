"""In-order, bit-exact scoreboard: the RTL's outputs against the golden model's.

Each *token* is one output beat (a sequence of lane values, or one int); tokens are compared
in order with ``==`` on Python ints, no tolerance. The first difference fails the test with an
`AssertionError` naming the token (beat index), element (lane), expected and actual value and
the cycle. Fewer outputs than expected is a failure too (`Scoreboard.finish`), as is an output
nobody expected.

Typical use in a cocotb test::

    sb = Scoreboard("requantiser")
    sb.add_expected_many(golden_rows)                 # e.g. a 2-D int64 tensor
    sink = StreamSink(dut, "o_stream", dut.clk, callback=lambda b: sb.add_received(
        unpack_signed(b.payload, 8, lanes), cycle=b.cycle))
    ...
    sb.finish()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

__all__ = ["Scoreboard"]


def _as_ints(values, what: str) -> list[int]:
    if hasattr(values, "tolist"):                 # torch / numpy tensors and scalars
        values = values.tolist()
    if isinstance(values, int):
        values = [values]
    out = list(values)
    for i, v in enumerate(out):
        if not isinstance(v, int):
            raise TypeError(f"{what} element {i} is {v!r}: bit-exact comparison needs integers")
    return out


class Scoreboard:
    """Compare received tokens with expected tokens, in order, bit-exact.

    Parameters
    ----------
    name : str
        Named in every failure message (the unit under test).

    Attributes
    ----------
    matched : int
        Tokens received and equal to their expectation so far.
    """

    def __init__(self, name: str):
        self.name = name
        self._expected: deque[list[int]] = deque()
        self.matched = 0
        self.expected_total = 0

    @property
    def pending(self) -> int:
        """Expected tokens not received yet."""
        return len(self._expected)

    def add_expected(self, values) -> None:
        """Queue one expected token (a sequence of lane values, a tensor row, or an int)."""
        self._expected.append(_as_ints(values, f"{self.name}: expected token {self.expected_total}"))
        self.expected_total += 1

    def add_expected_many(self, tokens: Iterable) -> None:
        """Queue expected tokens in order (e.g. the rows of a 2-D tensor)."""
        if hasattr(tokens, "tolist"):
            tokens = tokens.tolist()
        for t in tokens:
            self.add_expected(t)

    def add_received(self, values, *, cycle: int | None = None) -> None:
        """Compare one received token with the oldest expected one.

        Raises
        ------
        AssertionError
            On the first differing element, a token of the wrong length, or a token nobody
            expected.
        """
        index = self.matched
        at = "" if cycle is None else f" (cycle {cycle})"
        actual = _as_ints(values, f"{self.name}: received token {index}")
        if not self._expected:
            raise AssertionError(f"{self.name}: unexpected token {index}{at}: {actual}; only "
                                 f"{self.expected_total} tokens were expected")
        expected = self._expected.popleft()
        if len(actual) != len(expected):
            raise AssertionError(f"{self.name}: token {index}{at} has {len(actual)} elements, "
                                 f"expected {len(expected)}")
        diffs = [i for i, (e, a) in enumerate(zip(expected, actual)) if e != a]
        if diffs:
            first = diffs[0]
            raise AssertionError(
                f"{self.name}: mismatch at token {index}, element {first}{at}: "
                f"expected {expected[first]}, got {actual[first]} "
                f"({len(diffs)} of {len(expected)} elements differ in this token; "
                f"{self.matched} tokens matched before it)\n"
                f"  expected {expected}\n  actual   {actual}")
        self.matched += 1

    def compare(self, expected: Iterable, received: Iterable, *,
                cycles: Iterable[int] | None = None) -> None:
        """Queue all of `expected`, check all of `received` in order, then `finish`."""
        self.add_expected_many(expected)
        if hasattr(received, "tolist"):
            received = received.tolist()
        received = list(received)
        cycles = [None] * len(received) if cycles is None else list(cycles)
        for values, cycle in zip(received, cycles, strict=True):
            self.add_received(values, cycle=cycle)
        self.finish()

    def finish(self) -> None:
        """Fail unless every expected token was received (nothing lost).

        Raises
        ------
        AssertionError
            ``<name>: received k of n expected tokens; token k (expected [...]) never arrived``.
        """
        if self._expected:
            raise AssertionError(
                f"{self.name}: received {self.matched} of {self.expected_total} expected tokens; "
                f"token {self.matched} (expected {self._expected[0]}) never arrived")
