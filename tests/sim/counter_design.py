"""The smallest design worth building: an 8-bit free-running counter (the build-cache and
child-process tests build it in seconds; `cocotb_counter.py` and `cocotb_processes.py` drive it)."""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out


class Counter(wiring.Component):
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m
