"""cocotb bench of the Requantiser, run by `moeforge sim --unit requantiser` and by
tests/rtl/datapath/test_requantiser.py.

``MOEFORGE_BENCH`` names a JSON file, `moeforge.sim.unit_sim.requantiser_bench`'s from the
component itself: ``beats`` (``[acc lanes, mult lanes, shift]`` each), ``expected`` (the golden
model's ``lanes`` ints per beat), ``in_width``, ``out_bits``, ``lanes``, ``mult_bits``,
``shift_bits``, ``latency``, ``in_layout`` (bit offsets of ``acc``, ``mult`` and ``shift`` in the
unit's input payload), ``i_stream`` and ``o_stream`` (port prefixes); then ``seed``,
``in_stall``, ``out_stall``, and from the tool ``nonce`` and ``summary`` (see
`common.write_summary`; cycles and wall time are added).

``requantiser_bench`` streams every beat with random stalls on both sides; the tool runs only
this one. ``requantiser_throughput`` streams the first `THROUGHPUT_BEATS` without stalls and
checks the timing.
"""

import time

import cocotb
from cocotb.triggers import RisingEdge

from moeforge.sim.benches.common import load_bench, reset, start_clock, write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamMonitor, StreamSink, pack_layout, unpack_signed

THROUGHPUT_BEATS = 64


def input_layout(b: dict):
    """The input payload's layout, checked against the unit's own bit offsets (``in_layout``):
    the bench packs its beats where the Verilog has the fields."""
    from moeforge.rtl.datapath.requantiser import requantiser_input_layout
    layout = requantiser_input_layout(in_width=b["in_width"], lanes=b["lanes"],
                                      mult_bits=b["mult_bits"], shift_bits=b["shift_bits"])
    offsets = [layout[name].offset for name in ("acc", "mult", "shift")]
    assert offsets == b["in_layout"], f"layout offsets {offsets} != the unit's {b['in_layout']}"
    return layout


async def stream(dut, b: dict, beats, n_expected: int, *, in_stall: float, out_stall: float):
    """Reset, then drive `beats` while a sink takes the outputs; once `n_expected` outputs have
    come (or a generous bound has passed) and 20 more quiet cycles (an output in them is one
    nobody expected), return ``(driver, sink, cycles)``, `cycles` from the first beat's cycle
    to the last expected output. A passive monitor on the input checks our own driver against
    the stream rules."""
    layout = input_layout(b)
    start_clock(dut)
    await reset(dut)
    sink = StreamSink(dut, b["o_stream"], dut.clk, stall_prob=out_stall, seed=b["seed"] + 1)
    sink.start()
    in_monitor = StreamMonitor(dut, b["i_stream"], dut.clk).start()
    driver = StreamDriver(dut, b["i_stream"], dut.clk, stall_prob=in_stall, seed=b["seed"])
    driver.start([pack_layout(layout, {"acc": acc, "mult": mult, "shift": shift})
                  for acc, mult, shift in beats])
    cycles = 0
    while len(sink.beats) < n_expected and cycles < 100 * n_expected + 1000:
        await RisingEdge(dut.clk)
        cycles += 1
    for _ in range(20):
        await RisingEdge(dut.clk)
    sink.stop()
    in_monitor.stop()
    assert in_monitor.beats == driver.sent, "input monitor and driver disagree"
    return driver, sink, cycles


def outputs(b: dict, sink) -> tuple[list, list]:
    """The output lanes of every beat the sink took, and their cycles."""
    return ([unpack_signed(beat.payload, b["out_bits"], b["lanes"]) for beat in sink.beats],
            [beat.cycle for beat in sink.beats])


async def run(dut, b: dict) -> None:
    """Stream `b`'s beats through the requantiser with random stalls on both sides, compare
    every output bit-exact (counting), write the summary."""
    sb = Scoreboard("requantiser", stop=False)
    wall = time.perf_counter()
    cycles = None
    try:
        _, sink, cycles = await stream(dut, b, b["beats"], len(b["expected"]),
                                       in_stall=b["in_stall"], out_stall=b["out_stall"])
        received, at = outputs(b, sink)
        sb.compare(b["expected"], received, cycles=at)
    finally:
        write_summary(b, [sb], cycles=cycles, wall_s=time.perf_counter() - wall)


@cocotb.test()
async def requantiser_bench(dut):
    """Every beat of the bench file (`run`)."""
    await run(dut, load_bench())


@cocotb.test()
async def requantiser_throughput(dut):
    """Without stalls: one beat per cycle in and out, each output `latency` cycles after its
    input, bit-exact."""
    b = load_bench()
    n = min(THROUGHPUT_BEATS, len(b["beats"]))
    driver, sink, _ = await stream(dut, b, b["beats"][:n], n, in_stall=0.0, out_stall=0.0)
    received, out_cycles = outputs(b, sink)
    Scoreboard("requantiser").compare(b["expected"][:n], received, cycles=out_cycles)
    in_cycles = [beat.cycle for beat in driver.sent]
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + n)), in_cycles
    assert out_cycles == [c + b["latency"] for c in in_cycles], (in_cycles, out_cycles)
