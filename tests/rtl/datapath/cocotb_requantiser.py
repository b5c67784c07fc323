"""cocotb tests of the Requantiser, run by tests/rtl/datapath/test_requantiser.py (not by pytest itself).

Parameters come from the environment variable ``MOEFORGE_TEST_PARAMS`` (JSON), written by the
pytest side from the same `Requantiser` it exported:

``in_width``, ``out_bits``, ``lanes``, ``mult_bits``, ``latency``
    the unit's parameters;
``in_layout``: ``[acc_offset, mult_offset, shift_offset]``
    bit offsets of the input struct's fields (checked against our own packing);
``i_stream``, ``o_stream``
    Verilog port prefixes, from the component's signature;
``beats``, ``in_stall``, ``out_stall``
    length of the random test and stall probabilities;
``perturb``: ``null`` or ``[token, element]``
    add one LSB to that expected value, to prove the check can fail.
"""

import json
import os
import random

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from moeforge.hls_models.fixed_point import requantize
from moeforge.rtl.datapath.requantiser import requantiser_input_layout
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import (StreamDriver, StreamMonitor, StreamSink, pack_layout,
                                 unpack_signed)

P = json.loads(os.environ.get("MOEFORGE_TEST_PARAMS", "{}"))


def layout():
    return requantiser_input_layout(in_width=P["in_width"], lanes=P["lanes"],
                                    mult_bits=P["mult_bits"])


def pack(beat):
    acc, mult, shift = beat
    return pack_layout(layout(), {"acc": acc, "mult": mult, "shift": shift})


def golden(beats):
    """Expected output lanes of every beat, from hls_models.fixed_point.requantize (int64)."""
    acc = torch.tensor([b[0] for b in beats], dtype=torch.int64)
    mult = torch.tensor([b[1] for b in beats], dtype=torch.int64)
    shift = torch.tensor([[b[2]] for b in beats], dtype=torch.int64).expand_as(acc)
    return requantize(acc, mult, shift, P["out_bits"]).tolist()


def random_lane(rng):
    """One (acc, mult): extremes, values of random magnitude, or uniform; mult 0, max or normal."""
    w, mb = P["in_width"], P["mult_bits"]
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    kind = rng.random()
    if kind < 0.15:
        a = rng.choice([lo, hi, lo + 1, hi - 1, 0, -1, 1])
    elif kind < 0.5:
        a = max(lo, min(hi, rng.randint(-(1 << rng.randint(0, w - 1)), 1 << rng.randint(0, w - 1))))
    else:
        a = rng.randint(lo, hi)
    r = rng.random()
    m = 0 if r < 0.05 else (1 << mb) - 1 if r < 0.1 else rng.randrange(1 << (mb - 1), 1 << mb)
    return a, m


def random_beat(rng):
    """One beat. A quarter with a uniform shift in [1, 62] (mostly 0 or saturated outputs),
    half with the shift that brings the largest lane near the output range, a quarter of exact
    .5 ties (round half up, also into saturation)."""
    lanes, w, out_bits = P["lanes"], P["in_width"], P["out_bits"]
    kind = rng.random()
    if kind < 0.25:
        acc, mult = zip(*[random_lane(rng) for _ in range(lanes)])
        return list(acc), list(mult), rng.randint(1, 62)
    if kind < 0.75:
        acc, mult = zip(*[random_lane(rng) for _ in range(lanes)])
        top = max(abs(a * m) for a, m in zip(acc, mult)).bit_length()
        shift = max(1, min(62, top - (out_bits - 1) + rng.randint(-3, 2)))
        return list(acc), list(mult), shift
    # acc * 2^15 = (2k + 1) * 2^(shift-1): the result is exactly k + 0.5 before rounding.
    m = 1 << (P["mult_bits"] - 1)
    base = P["mult_bits"] - 1                  # acc = (2k + 1) << (shift - 1 - base)
    shift = rng.randint(base + 1, min(62, base + w - 2))
    room = w - 1 - (shift - 1 - base)          # bits left for 2k + 1 (with sign)
    kmax = min(1 << (out_bits - 1), 1 << max(0, room - 2))
    acc = [(2 * rng.randint(-kmax, kmax - 1) + 1) << (shift - 1 - base) for _ in range(lanes)]
    return acc, [m] * lanes, shift


def directed_beats():
    lanes, w = P["lanes"], P["in_width"]
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    mmax = (1 << P["mult_bits"]) - 1
    beats = []
    for shift in (1, 2, 15, 16, 31, 32, 47, 48, 49, 61, 62):
        for m in (0, 1 << (P["mult_bits"] - 1), mmax):
            acc = ([lo, hi, 0, -1, 1, lo + 1] * lanes)[:lanes]
            beats.append((acc, [m] * lanes, shift))
    return beats


async def reset(dut):
    dut.rst.value = 1
    getattr(dut, f"{P['i_stream']}__valid").value = 0
    getattr(dut, f"{P['o_stream']}__ready").value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def check_layout():
    """Our packing must put the fields where the Verilog has them (offsets from pytest side)."""
    offsets = [layout()[name].offset for name in ("acc", "mult", "shift")]
    assert offsets == P["in_layout"], f"layout offsets {offsets} != {P['in_layout']}"


async def run_stream(dut, beats, expected, *, in_stall, out_stall, seed):
    """Drive `beats`, collect the outputs through the scoreboard; return (driver, sink)."""
    lanes, out_bits = P["lanes"], P["out_bits"]
    sb = Scoreboard("requantiser")
    sb.add_expected_many(expected)
    Clock(dut.clk, 10, unit="ns").start()
    await reset(dut)
    sink = StreamSink(dut, P["o_stream"], dut.clk, stall_prob=out_stall, seed=seed + 1,
                      callback=lambda b: sb.add_received(unpack_signed(b.payload, out_bits, lanes),
                                                         cycle=b.cycle))
    driver = StreamDriver(dut, P["i_stream"], dut.clk, stall_prob=in_stall, seed=seed + 2)
    # A passive monitor on the input checks our own driver against the stream rules.
    in_monitor = StreamMonitor(dut, P["i_stream"], dut.clk).start()
    sink.start()
    sent = driver.start([pack(b) for b in beats])
    await sent
    # Generous bound: every beat may wait for stalls on both sides.
    bound = int((len(beats) + 20) / max(0.05, 1 - out_stall)) + 100
    await sink.wait_for(len(beats), max_cycles=bound)
    for _ in range(10):                       # nothing extra may come out afterwards
        await RisingEdge(dut.clk)
    sink.stop()
    in_monitor.stop()
    sb.finish()
    assert in_monitor.beats == driver.sent, "input monitor and driver disagree"
    return driver, sink


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def requantiser_random(dut):
    """Directed corners and random beats with random stalls on both sides, bit-exact."""
    check_layout()
    rng = random.Random(cocotb.RANDOM_SEED)
    beats = directed_beats() + [random_beat(rng) for _ in range(P["beats"])]
    expected = golden(beats)
    if P.get("perturb"):
        token, element = P["perturb"]
        expected[token][element] += 1
    driver, sink = await run_stream(dut, beats, expected, in_stall=P["in_stall"],
                                    out_stall=P["out_stall"], seed=cocotb.RANDOM_SEED)
    cocotb.log.info("%d beats in %d cycles", len(beats), sink.beats[-1].cycle)


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def requantiser_throughput(dut):
    """Without stalls: one beat per cycle in and out, output `latency` cycles after input."""
    rng = random.Random(cocotb.RANDOM_SEED + 7)
    beats = [random_beat(rng) for _ in range(64)]
    driver, sink = await run_stream(dut, beats, golden(beats), in_stall=0.0, out_stall=0.0,
                                    seed=cocotb.RANDOM_SEED)
    in_cycles = [b.cycle for b in driver.sent]
    out_cycles = [b.cycle for b in sink.beats]
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + len(beats))), in_cycles
    assert out_cycles == [c + P["latency"] for c in in_cycles], (in_cycles, out_cycles)
