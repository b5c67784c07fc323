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

A bench run by ``moeforge sim`` counts instead of stopping (``Scoreboard(name, stop=False)``):
every token is compared, `mismatches` counts the differing elements and `finish` raises the
first failure with the totals. What it compared goes into the bench's summary, and `verdict`
turns the summary into the run's result: a run passes only when this run's summary says every
expected token and element was compared and none differed.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Scoreboard", "Verdict", "verdict", "read_summary"]


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
    stop : bool
        Raise `AssertionError` at the first failure (default). With False, count: every token
        is compared, the first failure is kept in `failure` and `finish` raises it with the
        totals, so a summary can say how many elements differ.

    Attributes
    ----------
    matched : int
        Tokens received and equal to their expectation so far.
    compared : int
        Tokens received that had an expectation (equal or not).
    elements : int
        Elements of the expected tokens that were compared.
    mismatches : int
        Compared elements that differ (all of a token's elements if its length is wrong).
    unexpected : int
        Tokens received when none was expected.
    failure : str or None
        The first failure's message (counting mode).
    """

    def __init__(self, name: str, *, stop: bool = True):
        self.name = name
        self.stop = stop
        self._expected: deque[list[int]] = deque()
        self.matched = 0
        self.expected_total = 0
        self.compared = 0
        self.elements = 0
        self.mismatches = 0
        self.unexpected = 0
        self.failure: str | None = None

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

    def _fail(self, message: str) -> None:
        if self.stop:
            raise AssertionError(message)
        if self.failure is None:
            self.failure = message

    def add_received(self, values, *, cycle: int | None = None) -> None:
        """Compare one received token with the oldest expected one.

        Raises
        ------
        AssertionError
            On the first differing element, a token of the wrong length, or a token nobody
            expected (unless counting: then the failure is recorded and comparison goes on).
        """
        index = self.compared + self.unexpected
        at = "" if cycle is None else f" (cycle {cycle})"
        actual = _as_ints(values, f"{self.name}: received token {index}")
        if not self._expected:
            self.unexpected += 1
            self._fail(f"{self.name}: unexpected token {index}{at}: {actual}; only "
                       f"{self.expected_total} tokens were expected")
            return
        expected = self._expected.popleft()
        self.compared += 1
        self.elements += len(expected)
        if len(actual) != len(expected):
            self.mismatches += len(expected)
            self._fail(f"{self.name}: token {index}{at} has {len(actual)} elements, "
                       f"expected {len(expected)}")
            return
        diffs = [i for i, (e, a) in enumerate(zip(expected, actual)) if e != a]
        if diffs:
            self.mismatches += len(diffs)
            first = diffs[0]
            self._fail(
                f"{self.name}: mismatch at token {index}, element {first}{at}: "
                f"expected {expected[first]}, got {actual[first]} "
                f"({len(diffs)} of {len(expected)} elements differ in this token; "
                f"{self.matched} tokens matched before it)\n"
                f"  expected {expected}\n  actual   {actual}")
            return
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
        """Fail unless every expected token was received (nothing lost) and, when counting,
        unless every comparison matched.

        Raises
        ------
        AssertionError
            ``<name>: received k of n expected tokens; token k (expected [...]) never arrived``,
            or (counting) the first failure followed by the totals.
        """
        if self._expected:
            self._fail(f"{self.name}: received {self.compared} of {self.expected_total} expected "
                       f"tokens; token {self.compared} (expected {self._expected[0]}) never arrived")
        if self.failure is not None:
            raise AssertionError(
                f"{self.failure}\n  in all: {self.mismatches} of {self.elements} elements differ "
                f"in {self.compared} of {self.expected_total} tokens compared"
                + (f", {self.unexpected} tokens nobody expected" if self.unexpected else ""))


def read_summary(path: str | Path):
    """The bench summary at `path`: ``None`` if there is none, the parsed JSON otherwise (or the
    text itself when it is not JSON, which `verdict` reports as malformed)."""
    p = Path(path)
    if not p.is_file():
        return None
    text = p.read_text(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Verdict:
    """The result of a run, computed only from what its bench compared.

    ``compared`` and ``mismatches`` are ``None`` unless the summary is this run's;
    ``problems`` says, one phrase each, why the run did not pass (empty when it passed).
    """

    passed: bool
    compared: dict | None
    expected: dict
    mismatches: int | None
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """This run's summary says every expected token and element was compared."""
        return self.compared is not None and self.compared == self.expected

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def verdict(summary, *, nonce: str, tokens: int, elements: int, sim_ok: bool,
            failure: str | None = None) -> Verdict:
    """Decide a run from its bench's `summary` (as `read_summary` returns it).

    The run passes only if the simulation ended well, the summary exists and carries this
    run's `nonce`, it compared exactly `tokens` (> 0) tokens and `elements` elements, none
    differed and no token came that nobody expected. Nothing is assumed for a missing count.
    """
    expected = {"tokens": tokens, "elements": elements}
    problems: list[str] = []
    compared = mismatches = None
    if tokens < 1 or elements < 1:
        problems.append(f"nothing to compare: {tokens} tokens, {elements} elements expected")
    if summary is None:
        problems.append("the bench wrote no summary: nothing was compared")
    elif not isinstance(summary, dict):
        problems.append("the bench's summary is not a JSON object: nothing can be trusted of it")
    elif summary.get("nonce") != nonce:
        problems.append(f"the summary is not this run's (nonce {summary.get('nonce')!r}, this run "
                        f"{nonce!r}): nothing of this run was compared")
    else:
        c = summary.get("compared")
        m, u = summary.get("mismatches"), summary.get("unexpected", 0)
        if not (isinstance(c, dict) and _count(c.get("tokens")) and _count(c.get("elements"))
                and _count(m) and _count(u)):
            problems.append("the summary has no valid counts of compared tokens, elements and "
                            "mismatches")
        else:
            compared = {"tokens": c["tokens"], "elements": c["elements"]}
            mismatches = m
            if compared["tokens"] == 0:
                problems.append(f"no output token was compared ({tokens} expected)")
            elif compared["tokens"] != tokens:
                problems.append(f"{compared['tokens']} of {tokens} output tokens were compared")
            elif compared["elements"] != elements:
                problems.append(f"{compared['elements']} of {elements} output elements were compared")
            if u:
                problems.append(f"{u} output tokens came that nobody expected")
            if m:
                problems.append(f"{m} of {compared['elements']} compared elements differ")
    if not sim_ok:
        first = (failure or "").strip().splitlines()
        problems.append("the simulation failed" + (f": {first[0]}" if first else ""))
    return Verdict(passed=not problems, compared=compared, expected=expected,
                   mismatches=mismatches, problems=tuple(problems))
