"""ROM contents and constants of the router's EXP unit, from `hls_models.fixed_point` (one source).

``EXP(d)`` for ``d >= 0`` in units 2^-16 (docs/arithmetic.md §3.2)::

    a = rshift(d, EXP_ARG_SHIFT)            # (d + 8) >> 4: the argument in units 2^-12
    EXP(d) = rshift(HI[a >> 7] * LO[a & 127], 15)   if a < EXP_A_LIMIT (16.0)
           = 0                                      otherwise

`exp_hi_rom` (512 entries, ``HI[0] = 32768``) and `exp_lo_rom` (128 entries) are the two tables
as plain lists of ints, unsigned 16 bits each (`EXP_ROM_BITS`).
"""

from __future__ import annotations

from moeforge.hls_models import fixed_point as fp

__all__ = ["EXP_ARG_SHIFT", "EXP_HI_SHIFT", "EXP_HI_SIZE", "EXP_LO_SIZE", "EXP_A_LIMIT",
           "EXP_ROM_BITS", "GATE_FRAC", "GATE_ONE", "exp_hi_rom", "exp_lo_rom"]

EXP_ARG_SHIFT = fp.EXP_ARG_SHIFT            # 4: 2^-16 → 2^-12
EXP_HI_SHIFT = fp.EXP_HI_SHIFT              # 7: a >> 7 indexes HI
EXP_HI_SIZE = fp.EXP_HI_SIZE                # 512
EXP_LO_SIZE = fp.EXP_LO_SIZE                # 128
EXP_A_LIMIT = EXP_HI_SIZE << EXP_HI_SHIFT   # 65536: from here EXP = 0
GATE_FRAC = fp.GATE_FRAC                    # 15
GATE_ONE = fp.GATE_ONE                      # 32768
EXP_ROM_BITS = 16                           # every entry is at most 32768


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
