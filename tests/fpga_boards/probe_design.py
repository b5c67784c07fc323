"""A small design with the board design's ports (``rx``, ``tx``, ``busy``, ``error``) that uses
each resource the reports count: a block RAM, multipliers, LUTs and flip-flops, in two
submodules, so a real build of it (Yosys, nextpnr, ecppack: seconds) exercises the whole build
path and gives the saved tool outputs in ``data/`` that the report parsers are tested on."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


class Scrambler(wiring.Component):
    """A counter writes a 512×32 block RAM; its words times the counter feed ``o``."""

    def __init__(self):
        super().__init__({"o": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=32, depth=512, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        count = Signal(32)
        prod = Signal(64)
        m.d.sync += count.eq(count + 1)
        m.d.comb += [wr.addr.eq(count[:9]), wr.data.eq(count * 0x9E3779B1), wr.en.eq(count[9]),
                     rd.addr.eq(count[3:12])]
        m.d.sync += prod.eq(rd.data * count[8:40])
        m.d.comb += self.o.eq(prod.xor())
        return m


class ProbeDesign(wiring.Component):
    """Echoes ``rx`` to ``tx``; ``busy`` and ``error`` come from the `Scrambler`."""

    def __init__(self):
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1),
                          "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.scrambler = s = Scrambler()
        m.d.comb += [self.tx.eq(self.rx), self.busy.eq(s.o), self.error.eq(~s.o & ~self.rx)]
        return m
