"""cocotb tests of StreamSink's protocol check, against a deliberately careless producer.

`valid_dropped` and `payload_changed` must FAIL with the monitor's message (the pytest side,
tests/sim/test_stream_protocol.py, checks that); `accepted_every_beat` must pass.
"""

import itertools

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from moeforge.sim.stream import StreamSink


async def start(dut, mode):
    Clock(dut.clk, 10, unit="ns").start()
    dut.mode.value = mode
    dut.o_stream__ready.value = 0
    dut.rst.value = 1
    await RisingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def valid_dropped(dut):
    await start(dut, 0)                                   # valid toggles, ignoring ready
    sink = StreamSink(dut, "o_stream", dut.clk, pause=itertools.repeat(True)).start()
    await sink.wait_for(1, max_cycles=10)


@cocotb.test()
async def payload_changed(dut):
    await start(dut, 1)                                   # payload counts, ignoring ready
    sink = StreamSink(dut, "o_stream", dut.clk, pause=itertools.repeat(True)).start()
    await sink.wait_for(1, max_cycles=10)


@cocotb.test()
async def accepted_every_beat(dut):
    await start(dut, 1)                                   # fine while ready stays high
    sink = StreamSink(dut, "o_stream", dut.clk).start()
    beats = await sink.wait_for(20, max_cycles=40)
    assert [b.cycle for b in beats] == list(range(beats[0].cycle, beats[0].cycle + 20))
