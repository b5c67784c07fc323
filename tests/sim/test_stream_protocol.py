"""StreamSink must catch a producer that breaks stream rule 2 (valid/payload held to transfer)."""

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.sim.build import run_cocotb

pytestmark = pytest.mark.verilator


class CarelessProducer(wiring.Component):
    """mode 0: valid toggles every cycle; mode 1: valid stays high, payload counts every cycle.
    Both ignore ready, which is only legal while the consumer is always ready."""

    mode: In(1)
    o_stream: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        count = Signal(8)
        m.d.sync += count.eq(count + 1)
        m.d.comb += self.o_stream.payload.eq(count)
        m.d.comb += self.o_stream.valid.eq(self.mode | count[0])
        return m


def test_protocol_violations_are_caught(sim_build, tmp_path):
    handle = sim_build(CarelessProducer(), "careless_producer")
    results = run_cocotb(handle, "cocotb_stream_protocol", test_dir=tmp_path, check=False)
    status = {c.name: (c.status, c.message) for c in results.cases}
    assert status["accepted_every_beat"][0] == "passed", results.summary()
    assert status["valid_dropped"][0] == "failed"
    assert "stream o_stream: valid dropped in cycle" in status["valid_dropped"][1]
    assert status["payload_changed"][0] == "failed"
    assert "stream o_stream: payload changed from" in status["payload_changed"][1]
