"""Requantiser bench: beats of accumulators with their multiplier and shift, golden outputs.

``MOEFORGE_BENCH`` names a JSON file: ``beats`` (``[acc lanes, mult lanes, shift]`` each),
``expected`` (one list of ``lanes`` ints per beat), ``in_width``, ``out_bits``, ``lanes``,
``i_stream``, ``o_stream``, ``seed``, ``in_stall``, ``out_stall``, and from the tool ``nonce``
and ``summary`` (see `common.write_summary`; cycles and wall time are added).
"""

import time

import cocotb
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from moeforge.sim.benches.common import load_bench, reset, start_clock, write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamSink, pack_layout, unpack_signed


async def run(dut, b: dict) -> None:
    """Stream `b`'s beats through the requantiser, compare every output, write the summary."""
    from moeforge.rtl.datapath.requantiser import requantiser_input_layout
    layout = requantiser_input_layout(in_width=b["in_width"], lanes=b["lanes"])
    start_clock(dut)
    await reset(dut)
    received, cycles = [], []
    sink = StreamSink(dut, b["o_stream"], dut.clk, stall_prob=b["out_stall"], seed=b["seed"] + 1,
                      callback=lambda beat: (received.append(unpack_signed(beat.payload, b["out_bits"],
                                                                            b["lanes"])),
                                             cycles.append(beat.cycle)))
    sink.start()
    driver = StreamDriver(dut, b["i_stream"], dut.clk, stall_prob=b["in_stall"], seed=b["seed"])
    payloads = [pack_layout(layout, {"acc": acc, "mult": mult, "shift": shift})
                for acc, mult, shift in b["beats"]]
    start, wall = get_sim_time("ns"), time.perf_counter()
    driver.start(payloads)
    expected = b["expected"]
    sb = Scoreboard("requantiser", stop=False)
    cycles_run = None
    try:
        n = 0
        while len(received) < len(expected) and n < 100 * len(expected) + 1000:
            await RisingEdge(dut.clk)
            n += 1
        cycles_run = int((get_sim_time("ns") - start) // 10)
        for _ in range(20):                   # nothing extra may come out afterwards
            await RisingEdge(dut.clk)
        sb.compare(expected, received, cycles=cycles)
    finally:
        write_summary(b, [sb], cycles=cycles_run, wall_s=time.perf_counter() - wall)


@cocotb.test()
async def requantiser_bench(dut):
    await run(dut, load_bench())
