"""ROM contents and constants of the router's EXP unit: the tables of `hls_models.fixed_point`,
the constants of `moeforge.spec.arith` (one source each).

``EXP(d)`` for ``d >= 0`` in units 2^-16 (docs/arithmetic.md §3.2)::

    a = rshift(d, EXP_ARG_SHIFT)            # (d + 8) >> 4: the argument in units 2^-12
    EXP(d) = rshift(HI[a >> 7] * LO[a & 127], 15)   if a < EXP_A_LIMIT (16.0)
           = 0                                      otherwise

`exp_hi_rom` (512 entries, ``HI[0] = 32768``) and `exp_lo_rom` (128 entries) are the two tables
as plain lists of ints, unsigned 16 bits each (`EXP_ROM_BITS`).
"""

from __future__ import annotations

from moeforge.hls_models import fixed_point as fp
from moeforge.spec.arith import EXP_HI_SIZE, EXP_LO_SIZE, EXP_ROM_BITS

__all__ = ["exp_hi_rom", "exp_lo_rom"]


def exp_hi_rom() -> list[int]:
    """``round(exp(-i/32) · 2^15)`` for ``i`` in ``[0, 512)``."""
    table = [int(v) for v in fp.exp_hi_table().tolist()]
    assert len(table) == EXP_HI_SIZE and max(table) < (1 << EXP_ROM_BITS) and min(table) >= 0
    return table


def exp_lo_rom() -> list[int]:
    """``round(exp(-j/4096) · 2^15)`` for ``j`` in ``[0, 128)``."""
    table = [int(v) for v in fp.exp_lo_table().tolist()]
    assert len(table) == EXP_LO_SIZE and max(table) < (1 << EXP_ROM_BITS) and min(table) >= 0
    return table
