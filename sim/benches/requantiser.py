"""Requantiser bench: beats of accumulators with their multiplier and shift, golden outputs."""

import time

import cocotb
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from moeforge.sim.benches.common import count_mismatches, load_bench, reset, start_clock, write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamSink, pack_layout, unpack_signed


@cocotb.test()
async def requantiser_bench(dut):
    b = load_bench()
    from moeforge.rtl.requantiser import requantiser_input_layout
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
    n = 0
    while len(received) < len(expected) and n < 100 * len(expected) + 1000:
        await RisingEdge(dut.clk)
        n += 1
    cycles_run = int((get_sim_time("ns") - start) // 10)
    write_summary(mismatches=count_mismatches(expected, received), cycles=cycles_run,
                  tokens=len(expected), received=len(received), wall_s=time.perf_counter() - wall)
    Scoreboard("requantiser").compare(expected, received, cycles=cycles)
