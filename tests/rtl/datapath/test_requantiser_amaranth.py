# amaranth: UnusedElaboratable=no
# (test_bad_parameters builds components whose constructor raises; they are never elaborated)

"""The requantiser in Amaranth's own simulator: quick, no Verilator.

Checks the arithmetic against the golden `requantize` on directed corner cases and random
beats, full throughput (one beat per cycle, latency `Requantiser.latency`), and that the output
holds still under back-pressure.
"""

import random

import pytest
import torch
from amaranth.sim import Simulator

from moeforge.hls_models.fixed_point import MULT_BITS, requantize
from moeforge.rtl.datapath.requantiser import Requantiser


def golden(acc, mult, shift, out_bits):
    """Expected lanes of one beat, by the golden model (int64 tensors)."""
    a = torch.tensor(acc, dtype=torch.int64)
    m = torch.tensor(mult, dtype=torch.int64)
    return requantize(a, m, torch.full_like(a, shift), out_bits).tolist()


def reference(acc, mult, shift, out_bits):
    """The same formula on Python ints, for widths whose products overflow int64."""
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return [max(lo, min(hi, (a * m + (1 << (shift - 1))) >> shift)) for a, m in zip(acc, mult)]


def corner_beats(lanes, in_width):
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    beats = []
    for shift in (1, 2, 15, 16, 31, 47, 48, 49, 62):
        for mult in (0, 1 << 15, (1 << 16) - 1):
            acc = [lo, hi, 0, -1, 1, lo + 1][:lanes]
            acc += [hi] * (lanes - len(acc))
            beats.append((acc, [mult] * lanes, shift))
    # Exact ties: acc * 2^15 = (2k+1) * 2^(s-1) rounds up (towards +inf), also when negative.
    for shift in (17, 20, 30):
        acc = [(2 * k + 1) << (shift - 16) for k in (-3, -1, 0, 2)][:lanes]
        acc += [0] * (lanes - len(acc))
        if all(lo <= a <= hi for a in acc):
            beats.append((acc, [1 << 15] * lanes, shift))
    return beats


def random_beats(rng, n, lanes, in_width):
    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    return [([rng.randint(lo, hi) for _ in range(lanes)],
             [rng.randrange(1 << 15, 1 << 16) for _ in range(lanes)],
             rng.randint(1, 62)) for _ in range(n)]


def run(dut, beats, *, ready_pattern=None, max_cycles=2000):
    """Drive `beats` back to back; return (outputs, input cycles, output cycles)."""
    outputs, in_cycles, out_cycles = [], [], []

    async def producer(ctx):
        cycle = 0
        for acc, mult, shift in beats:
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload, {"acc": acc, "mult": mult, "shift": shift})
            while True:
                _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
                cycle += 1
                if ready:
                    in_cycles.append(cycle - 1)
                    break
        ctx.set(dut.i_stream.valid, 0)

    async def consumer(ctx):
        held = None
        for cycle in range(max_cycles):
            ready = 1 if ready_pattern is None else ready_pattern(cycle)
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload)
            lanes = [int(v) for v in payload]
            if held is not None:
                assert valid and lanes == held, f"output changed under back-pressure at {cycle}"
            if valid and ready:
                outputs.append(lanes)
                out_cycles.append(cycle)
                held = None
                if len(outputs) == len(beats):
                    return
            else:
                held = lanes if valid else None
        raise AssertionError(f"only {len(outputs)} of {len(beats)} outputs")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return outputs, in_cycles, out_cycles


@pytest.mark.parametrize("in_width,out_bits,lanes", [(32, 8, 3), (32, 16, 1), (24, 32, 2)])
def test_matches_golden(in_width, out_bits, lanes):
    dut = Requantiser(in_width=in_width, out_bits=out_bits, lanes=lanes)
    assert dut.mult_bits == MULT_BITS
    rng = random.Random(1)
    beats = corner_beats(lanes, in_width) + random_beats(rng, 100, lanes, in_width)
    outputs, _, _ = run(dut, beats, ready_pattern=lambda c: (c * 7919) % 5 != 0)
    for i, ((acc, mult, shift), got) in enumerate(zip(beats, outputs, strict=True)):
        expected = golden(acc, mult, shift, out_bits)
        assert expected == reference(acc, mult, shift, out_bits)
        assert got == expected, f"beat {i}: {acc} {mult} {shift}"


@pytest.mark.parametrize("in_width,out_bits", [(64, 64), (48, 40), (2, 2)])
def test_extreme_widths(in_width, out_bits):
    """Widths past int64 products: checked against the same formula on Python ints."""
    dut = Requantiser(in_width=in_width, out_bits=out_bits, lanes=2)
    beats = corner_beats(2, in_width) + random_beats(random.Random(4), 100, 2, in_width)
    outputs, _, _ = run(dut, beats)
    for i, ((acc, mult, shift), got) in enumerate(zip(beats, outputs, strict=True)):
        assert got == reference(acc, mult, shift, out_bits), f"beat {i}: {acc} {mult} {shift}"


def test_full_throughput_and_latency():
    dut = Requantiser(in_width=32, out_bits=8, lanes=2)
    beats = random_beats(random.Random(2), 20, 2, 32)
    _, in_cycles, out_cycles = run(dut, beats)
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + 20))
    assert out_cycles == [c + dut.latency for c in in_cycles]


def test_shift_zero_outputs_zero():
    dut = Requantiser(in_width=32, out_bits=8, lanes=2)
    outputs, _, _ = run(dut, [([5, -(1 << 31)], [65535, 40000], 0)])
    assert outputs == [[0, 0]]


@pytest.mark.parametrize("kwargs,exc,text", [
    ({"in_width": 0}, ValueError, "in_width must be in [2, 64], not 0"),
    ({"lanes": 1.5}, TypeError, "lanes must be an integer in [1, 1024], not 1.5"),
    ({"out_bits": True}, TypeError, "out_bits must be an integer"),
])
def test_bad_parameters(kwargs, exc, text):
    with pytest.raises(exc, match=text.replace("[", r"\[").replace("]", r"\]")):
        Requantiser(**kwargs)
