"""The integer primitives of docs/arithmetic.md: rounding, saturation, tables, multipliers."""

import ast
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from moeforge.hls_models.fixed_point import (
    exp_neg, multiplier_shift, requantize, round_shift, saturate, sigmoid_exact, silu_fixed,
)
from moeforge.spec import arith
from moeforge.spec.arith import EXP_D_MAX, GATE_ONE, LOGIT_FRAC, MULT_BITS

I64 = torch.int64


def t(*v):
    return torch.tensor(v, dtype=I64)


def test_round_shift_is_round_half_up():
    # 5/2 = 2.5 → 3, -5/2 = -2.5 → -2, 3/2 = 1.5 → 2, -3/2 → -1, -7/4 = -1.75 → -2
    assert round_shift(t(5, -5, 3, -3), 1).tolist() == [3, -2, 2, -1]
    assert round_shift(t(-7), 2).tolist() == [-2]


# Every shift the device uses: the requantiser's S ∈ [1, 62] (docs/arithmetic.md §1), which holds
# the fixed shifts of the tables, the SiLU and the routed scaling factor (4, 12, 15).
SHIFTS = range(1, 63)


def _halves_and_neighbours(s: int) -> list[int]:
    """k·2^s + 2^(s-1) (exact halves, positive and negative) and the integers either side, as
    far as int64 holds x + 2^(s-1)."""
    lo, hi = -(1 << 63), (1 << 63) - 1 - (1 << (s - 1))
    vals = {k * (1 << s) + (1 << (s - 1)) + d for k in range(-3, 3) for d in (-1, 0, 1)}
    vals |= {-(1 << 47), (1 << 47) - 1, -1, 0, 1}          # the ends of |acc · M| < 2^47
    return sorted(v for v in vals if lo <= v <= hi)


def _exact(v: int, s: int) -> int:
    """Round half up of v / 2^s in rationals: the definition, not the shift formula."""
    return math.floor(Fraction(v, 1 << s) + Fraction(1, 2))


@pytest.mark.parametrize("s", SHIFTS)
def test_round_shift_rounds_half_up_at_every_shift(s):
    v = _halves_and_neighbours(s)
    want = [_exact(x, s) for x in v]
    assert round_shift(torch.tensor(v, dtype=I64), s).tolist() == want
    # the per-channel form (a tensor of shifts) the requantiser of every channel uses
    assert round_shift(torch.tensor(v, dtype=I64), torch.full((len(v),), s, dtype=I64)).tolist() == want


def test_requantize_rounds_half_up_with_per_channel_shifts():
    """One channel per shift S, each with a normalised M: accumulators whose acc · M is an exact
    half of 2^S (positive and negative), through the per-channel requantiser."""
    cols = []
    for sh in SHIFTS:
        if sh <= 15:    # an odd M: acc = 2^(S-1) · M^-1 (mod 2^S) puts acc · M on a half
            m = (1 << 15) + 1
            r = ((1 << (sh - 1)) * pow(m, -1, 1 << sh)) % (1 << sh)
            accs = [r + k * (1 << sh) for k in range(-3, 3)]
        else:           # M = 2^15: acc = k · 2^(S-16), k odd, gives acc · M = k · 2^(S-1)
            m = 1 << 15
            ks = [k for k in (-1, 1, -3, 3, -5, 5) if (k + 1) << (sh - 1) < 1 << 63]
            accs = [k * (1 << (sh - 16)) for k in (ks * 3)[:6]]   # as many as int64 holds
        assert all((a * m) % (1 << sh) == 1 << (sh - 1) for a in accs)   # exact halves
        cols.append((sh, m, accs))
    shift = torch.tensor([c[0] for c in cols], dtype=I64)
    mult = torch.tensor([c[1] for c in cols], dtype=I64)
    acc = torch.tensor([c[2] for c in cols], dtype=I64).T            # 6 tokens × 62 channels
    lim = 1 << 31
    want = [[max(-lim, min(lim - 1, _exact(a * m, sh))) for a, (sh, m, _) in zip(row, cols)]
            for row in acc.tolist()]
    assert requantize(acc, mult, shift, 32).tolist() == want


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


# --- one source for the arithmetic's numbers -------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("moeforge", "hls_models", "rtl", "sim", "host_runtime", "fpga_boards")


def test_spec_arith_is_plain_python():
    """`moeforge.spec.arith` imports nothing (no torch, no Amaranth, nothing of the project)
    and every name it exports is an int."""
    tree = ast.parse((ROOT / "moeforge" / "spec" / "arith.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [getattr(n, "module", None) for n in imports] == ["__future__"]
    assert all(type(getattr(arith, name)) is int for name in arith.__all__)


def test_no_arithmetic_number_declared_twice():
    """No module of the package assigns a name of `moeforge.spec.arith` (``MULT_BITS = 16`` in
    the RTL, say): the golden model and the RTL import the one definition."""
    names = set(arith.__all__)
    found = []
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "moeforge" / "spec" / "arith.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {t.id}" for t in targets
                          if isinstance(t, ast.Name) and t.id in names]
    assert not found, "declared again: " + ", ".join(found)
