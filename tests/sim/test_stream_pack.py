"""Payload packing helpers of moeforge.sim.stream against Amaranth's own layout encoding."""

import random

import pytest
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from moeforge.rtl.datapath.requantiser import requantiser_input_layout, requantiser_output_layout
from moeforge.sim.stream import (bernoulli_pauses, pack_layout, pack_signed, pack_unsigned,
                                 unpack_layout, unpack_signed, unpack_unsigned)


def test_signed_round_trip_and_lane_order():
    values = [-128, 127, 0, -1, 5]
    word = pack_signed(values, 8)
    assert word & 0xFF == 0x80                      # lane 0 in the low bits
    assert (word >> 8) & 0xFF == 0x7F
    assert unpack_signed(word, 8, 5) == values
    assert unpack_unsigned(pack_unsigned([0, 65535, 3], 16), 16, 3) == [0, 65535, 3]


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match="element 1 = 128 does not fit in signed 8 bits"):
        pack_signed([0, 128], 8)
    with pytest.raises(ValueError, match="element 0 = -1 does not fit in unsigned 16 bits"):
        pack_unsigned([-1], 16)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        pack_signed([1], 0)


def test_pack_layout_matches_amaranth():
    rng = random.Random(3)
    layout = requantiser_input_layout(in_width=32, lanes=3)
    for _ in range(50):
        value = {"acc": [rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(3)],
                 "mult": [rng.randrange(1 << 16) for _ in range(3)],
                 "shift": rng.randrange(64)}
        word = pack_layout(layout, value)
        assert word == layout.const(value).as_bits()
        assert unpack_layout(layout, word) == value
    out = requantiser_output_layout(out_bits=8, lanes=4)
    assert pack_layout(out, [-128, 1, 2, 127]) == out.const([-128, 1, 2, 127]).as_bits()


def test_pack_layout_nested_and_errors():
    layout = data.StructLayout({"a": signed(4), "b": data.ArrayLayout(unsigned(2), 2)})
    assert unpack_layout(layout, pack_layout(layout, {"a": -8, "b": [3, 1]})) == \
        {"a": -8, "b": [3, 1]}
    with pytest.raises(ValueError, match=r"b\[0\] = 4 does not fit"):
        pack_layout(layout, {"a": 0, "b": [4, 0]})
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        pack_layout(layout, {"a": 0})
    with pytest.raises(ValueError, match="b: expected 2 elements, got 3"):
        pack_layout(layout, {"a": 0, "b": [0, 0, 0]})


def test_bernoulli_pauses():
    assert not any(p for p, _ in zip(bernoulli_pauses(0.0), range(100)))
    draws = [p for p, _ in zip(bernoulli_pauses(0.5, seed=1), range(2000))]
    assert 800 < sum(draws) < 1200
    assert draws == [p for p, _ in zip(bernoulli_pauses(0.5, seed=1), range(2000))]
    with pytest.raises(ValueError, match="stall_prob must be in"):
        bernoulli_pauses(1.0)
