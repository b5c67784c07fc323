"""cocotb tests of a free-running 8-bit counter, run by tests/sim/test_build_cache.py."""

import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


@cocotb.test()
async def counter_counts(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    first = int(dut.count.value)
    for i in range(1, 300):
        await RisingEdge(dut.clk)
        await ReadOnly()
        assert int(dut.count.value) == (first + i) % 256


@cocotb.test()
async def counter_always_fails(dut):
    """Fails on purpose: the runner must report it (run only by name)."""
    raise AssertionError("deliberate failure 1234")


@cocotb.test()
async def counter_crashes(dut):
    """Ends the simulator process abruptly (run only by name)."""
    os._exit(3)
