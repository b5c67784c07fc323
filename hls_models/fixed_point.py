"""The device's integer primitives, exactly as docs/arithmetic.md states them.

Every function takes and returns int64 tensors and is exact: the RTL must produce
the same integers. The widths and formats they use are `moeforge.spec.arith`'s; the tables
built here (exp, sigmoid) are the ones the RTL's ROMs hold.
"""

from __future__ import annotations

import math

import torch

from moeforge.spec.arith import (EXP_A_LIMIT, EXP_ARG_SHIFT, EXP_HI_SHIFT, EXP_HI_SIZE, EXP_LO_SIZE, GATE_FRAC,
                                 GATE_ONE, LOGIT_FRAC, MULT_BITS, SHIFT_MAX, SHIFT_MIN, SIG_SIZE, SIG_STEP_SHIFT,
                                 SILU_FRAC, X_BITS)

__all__ = [
    "saturate", "round_shift", "requantize", "narrow_input", "multiplier_shift",
    "exp_hi_table", "exp_lo_table", "sigmoid_lut", "exp_neg", "sigmoid_exact", "silu_fixed",
    "quantize_symmetric", "fwht_blocks",
]


def saturate(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Clamp to the signed `bits`-bit range."""
    return x.clamp(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def round_shift(x: torch.Tensor, shift) -> torch.Tensor:
    """(x + 2^(shift-1)) >> shift with an arithmetic shift: round half up. shift >= 1."""
    if isinstance(shift, torch.Tensor):
        return (x + (torch.ones_like(shift) << (shift - 1))) >> shift
    return (x + (1 << (shift - 1))) >> shift


def requantize(acc: torch.Tensor, mult, shift, bits: int) -> torch.Tensor:
    """sat_bits(round_shift(acc * mult, shift)): the one requantiser of the device."""
    return saturate(round_shift(acc * mult, shift), bits)


def narrow_input(x_in: torch.Tensor, x_shift: int) -> torch.Tensor:
    """The experts' int8 tokens from the device's input tokens: ``sat_8(rshift(x_in, S_x))``
    with a wide input, the tokens themselves when ``S_x = 0`` (the int8-only input)."""
    return saturate(round_shift(x_in, x_shift), X_BITS) if x_shift else x_in


def multiplier_shift(real: torch.Tensor | float, max_shift: int = SHIFT_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode positive reals m as (M, S) with M in [2^15, 2^16) and m ≈ M / 2^S.

    Reals too small for `max_shift` encode as M = 0 (the output is then 0); reals that
    would need S < 1 raise, because the accumulator cannot be scaled up losslessly.
    """
    m = torch.as_tensor(real, dtype=torch.float64)
    if (m < 0).any() or not torch.isfinite(m).all():
        raise ValueError("requantisation multipliers must be finite and non-negative")
    exp = torch.where(m > 0, torch.floor(torch.log2(torch.where(m > 0, m, 1.0))), 0.0)
    shift = (MULT_BITS - 1 - exp).to(torch.int64)
    mult = torch.round(m * torch.pow(2.0, shift.to(torch.float64))).to(torch.int64)
    carry = mult >= (1 << MULT_BITS)
    mult = torch.where(carry, mult >> 1, mult)
    shift = torch.where(carry, shift - 1, shift)
    if ((shift < SHIFT_MIN) & (m > 0)).any():
        bad = m[(shift < SHIFT_MIN) & (m > 0)].max().item()
        raise ValueError(f"requantisation multiplier {bad:g} is too large (needs a shift below 1)")
    tiny = (shift > max_shift) | (m == 0)
    mult = torch.where(tiny, 0, mult)
    shift = torch.where(tiny, max_shift, shift)
    return mult, shift


def quantize_symmetric(x: torch.Tensor, scale, bits: int = X_BITS) -> torch.Tensor:
    """round-half-even(x / scale), saturated: the host-side float to int conversion."""
    return saturate(torch.round(x.to(torch.float64) / torch.as_tensor(scale, dtype=torch.float64)),
                    bits).to(torch.int64)


def _table(values) -> torch.Tensor:
    return torch.tensor([int(round(v)) for v in values], dtype=torch.int64)


# The exp tables' steps: LO steps by the rounded argument's unit (1/4096), HI by 2^EXP_HI_SHIFT of them (1/32).
_EXP_LO_STEPS = 1 << (LOGIT_FRAC - EXP_ARG_SHIFT)
_EXP_HI_STEPS = _EXP_LO_STEPS >> EXP_HI_SHIFT


def exp_hi_table() -> torch.Tensor:
    """round(exp(-i/32) * 2^15) for i in [0, 512)."""
    return _table(math.exp(-i / _EXP_HI_STEPS) * GATE_ONE for i in range(EXP_HI_SIZE))


def exp_lo_table() -> torch.Tensor:
    """round(exp(-j/4096) * 2^15) for j in [0, 128)."""
    return _table(math.exp(-j / _EXP_LO_STEPS) * GATE_ONE for j in range(EXP_LO_SIZE))


def sigmoid_lut() -> torch.Tensor:
    """round(sigmoid((i + 0.5)/64) * 2^15) for i in [-512, 512), stored from index -512."""
    step = 1 << (SILU_FRAC - SIG_STEP_SHIFT)
    return _table(GATE_ONE / (1 + math.exp(-(i + 0.5) / step)) for i in range(-SIG_SIZE // 2, SIG_SIZE // 2))


_EXP_HI = exp_hi_table()
_EXP_LO = exp_lo_table()
_SIG = sigmoid_lut()


def exp_neg(d: torch.Tensor) -> torch.Tensor:
    """exp(-d) in Q1.15 for d >= 0 in units 2^-16.

    a = rshift(d, 4) (the argument rounded to 2^-12); HI[a >> 7] · LO[a & 127], rounded
    >> 15; 0 when a >= 16.0.
    """
    a = round_shift(d.to(torch.int64), EXP_ARG_SHIFT) if EXP_ARG_SHIFT else d.to(torch.int64)
    inside = a < EXP_A_LIMIT
    a = torch.where(inside, a, 0)
    hi = _EXP_HI[a >> EXP_HI_SHIFT]
    lo = _EXP_LO[a & (EXP_LO_SIZE - 1)]
    return torch.where(inside, round_shift(hi * lo, GATE_FRAC), 0)


def sigmoid_exact(logit: torch.Tensor) -> torch.Tensor:
    """sigmoid of a logit (units 2^-16) in Q1.15 through exp_neg and one rounded division.

    L >= 0: (2^30 + (2^15+e)/2) // (2^15 + e);  L < 0: (e·2^15 + (2^15+e)/2) // (2^15 + e),
    where e = exp_neg(|L|). Used by the router (scores, Qwen2's shared-expert gate).
    """
    e = exp_neg(logit.abs())
    den = GATE_ONE + e
    num = torch.where(logit >= 0, torch.full_like(e, GATE_ONE * GATE_ONE), e * GATE_ONE)
    return torch.div(num + (den >> 1), den, rounding_mode="floor")


def silu_fixed(g: torch.Tensor) -> torch.Tensor:
    """SiLU of g (units 2^-12, int24) by the sigmoid LUT: round_shift(g * sig(g), 15).

    sig(g) = LUT[(g >> 6) + 512] inside [-8, 8), 2^15 at or above 8, 0 below -8.
    """
    idx = g >> SIG_STEP_SHIFT
    half = SIG_SIZE // 2
    sig = torch.where(idx >= half, GATE_ONE, torch.where(idx < -half, 0, _SIG[idx.clamp(-half, half - 1) + half]))
    return round_shift(g * sig, GATE_FRAC)


def fwht_blocks(p: torch.Tensor, block: int) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform of each `block` consecutive values (last dim).

    Butterflies (a, b) → (a + b, a - b) over log2(block) stages, Sylvester order: exact
    integer arithmetic that the RTL repeats stage by stage. Growth: log2(block) bits.
    """
    if block == 1:
        return p
    *lead, n = p.shape
    v = p.reshape(*lead, n // block, block)
    h = 1
    while h < block:
        v = v.reshape(*lead, n // block, block // (2 * h), 2, h)
        a, b = v[..., 0, :], v[..., 1, :]
        v = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return v.reshape(*lead, n)
