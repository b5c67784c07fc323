"""Argument types of the command line: numbers checked against their range while parsing.

A value out of range is argparse's usage error (one line, exit 2) before anything is built,
so a bad ``--stall`` can never be reported as a hardware mismatch.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["int_in", "float_in", "MAX_TOKENS"]

# The most tokens one command accepts: large enough for any measurement, small enough that the
# golden model's tensors for it fit in memory (d_model 4096 · 4 bytes · 2^20 = 16 GiB is too
# much; 2^18 tokens of a d_model-4096 layer is 4 GiB of float32).
MAX_TOKENS = 1 << 18


def int_in(lo: int, hi: int):
    """An argparse type: an integer in ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], not {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], not {value}")
        return value
    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, *, hi_open: bool = False):
    """An argparse type: a finite number in ``[lo, hi]`` (``[lo, hi)`` with `hi_open`)."""
    interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, not {text!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (hi_open and value == hi):
            raise argparse.ArgumentTypeError(f"must be in {interval}, not {text}")
        return value
    parse.__name__ = "number"
    return parse
