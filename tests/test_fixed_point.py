"""The integer primitives of docs/arithmetic.md: rounding, saturation, tables, multipliers."""

import math

import pytest
import torch

from moeforge.hls_models.fixed_point import (
    EXP_D_MAX, GATE_ONE, LOGIT_FRAC, MULT_BITS, exp_neg, multiplier_shift, requantize,
    round_shift, saturate, sigmoid_exact, silu_fixed,
)

I64 = torch.int64


def t(*v):
    return torch.tensor(v, dtype=I64)


def test_round_shift_is_round_half_up():
    # 5/2 = 2.5 → 3, -5/2 = -2.5 → -2, 3/2 = 1.5 → 2, -3/2 → -1, -7/4 = -1.75 → -2
    assert round_shift(t(5, -5, 3, -3), 1).tolist() == [3, -2, 2, -1]
    assert round_shift(t(-7), 2).tolist() == [-2]


def test_requantize_saturates_at_int8_limits():
    big = t(1 << 30, -(1 << 30))
    assert requantize(big, 1 << 15, 15, 8).tolist() == [127, -128]
    assert saturate(t(200, -200, 5), 8).tolist() == [127, -128, 5]


@pytest.mark.parametrize("m", [1e-6, 0.0123, 0.5, 1.0, 3.7, 1234.5])
def test_multiplier_shift_normalised_and_close(m):
    M, S = multiplier_shift(m)
    assert (1 << (MULT_BITS - 1)) <= M.item() < (1 << MULT_BITS)
    assert 1 <= S.item() <= 62
    assert abs(M.item() / 2 ** S.item() - m) / m <= 2 ** -MULT_BITS


def test_multiplier_shift_rejects_too_large_and_flushes_tiny():
    with pytest.raises(ValueError, match="too large"):
        multiplier_shift(1e6)
    M, S = multiplier_shift(1e-30)
    assert M.item() == 0


def test_exp_table_accuracy_and_range():
    d = torch.arange(0, EXP_D_MAX + 50, 53, dtype=I64)
    e = exp_neg(d)
    ref = torch.exp(-((d + 8) >> 4).double() / 4096) * GATE_ONE  # the argument is rounded to 2^-12
    inside = d < EXP_D_MAX
    assert (e[inside] - ref[inside]).abs().max().item() <= 1.5  # two rounded tables + rounding
    assert (e[~inside] == 0).all()
    assert exp_neg(t(0)).item() == GATE_ONE
    assert (e[1:] <= e[:-1] + 1).all()  # non-increasing up to one LSB of table rounding


def test_sigmoid_exact_accuracy_and_symmetry():
    one = 1 << LOGIT_FRAC
    L = torch.arange(-20 * one, 20 * one, 599, dtype=I64)
    s = sigmoid_exact(L)
    ref = torch.sigmoid(L.double() / one) * GATE_ONE
    assert (s - ref).abs().max().item() <= 2.0  # 1.5 LSB of exp + rounding the argument to 2^-12
    assert (s[1:] >= s[:-1] - 1).all()
    assert sigmoid_exact(t(0)).item() == GATE_ONE // 2


def test_silu_table_accuracy():
    g = torch.arange(-12 * 4096, 12 * 4096, 13, dtype=I64)
    y = silu_fixed(g).double() / 4096
    x = g.double() / 4096
    ref = x * torch.sigmoid(x)
    # LUT step 1/64: |Δσ| ≤ 0.25/128, so |ΔSiLU| ≤ |x|/512 + rounding
    assert ((y - ref).abs() <= x.abs() / 512 + 2 / 4096 + x.abs() * math.exp(-8)).all()
