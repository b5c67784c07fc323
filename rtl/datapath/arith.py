"""Amaranth expressions for the integer primitives of docs/arithmetic.md.

Shared by every unit so that `rq_b` is written once. These build combinational
expressions; units put registers around them where timing needs it.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Mux, signed, unsigned

__all__ = ["saturate", "round_shift", "requant", "times_table"]


def saturate(value, bits: int):
    """Clamp a signed value to the signed `bits`-bit range (sat_b)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if value.shape().signed and value.shape().width <= bits:
        return value
    if not value.shape().signed and value.shape().width < bits:
        return value
    return Mux(value > hi, Const(hi, signed(bits)), Mux(value < lo, Const(lo, signed(bits)), value))


def round_shift(value, shift, *, max_shift: int | None = None):
    """rshift(v, s) = (v + 2^(s-1)) >> s for s >= 1, as ((v >> (s-1)) + 1) >> 1.

    `shift` may be a constant or a signal; shift amounts at or above the value's width
    give 0 or -1 before rounding, as the floor shift does, so they are clamped to keep
    the barrel shifter no wider than the value.
    """
    width = value.shape().width
    if isinstance(shift, int):
        if shift < 1:
            raise ValueError(f"shift must be at least 1, not {shift}")
        t = min(shift - 1, width - 1)
        return ((value >> t) + 1) >> 1
    limit = width - 1 if max_shift is None else min(width - 1, max_shift - 1)
    s_minus_1 = (shift - 1).as_unsigned()[:len(shift)]
    t = Mux((shift == 0) | (shift > limit), limit, s_minus_1)  # S = 0 lies outside the spec
    return ((value >> t) + 1) >> 1


def requant(acc, mult, shift, out_bits: int):
    """rq_b(acc, M, S) = sat_b(rshift(acc · M, S)); `mult` unsigned, `shift` >= 1."""
    if isinstance(mult, int):
        mult = Const(mult, unsigned(max(1, mult.bit_length())))
    prod = acc.as_signed() * mult.as_unsigned()
    return saturate(round_shift(prod, shift), out_bits)


def times_table(index, count: int, factor: int, width: int):
    """``index · factor`` for ``index < count``, read from a table of `width`-bit constants
    instead of multiplied: Yosys spends an ECP5 multiplier on each such product, and the 85F
    build's critical path ran through one (the expert cache's fetch address into the on-chip
    store, 17.9 ns)."""
    return Array(Const(i * factor, width) for i in range(count))[index]
