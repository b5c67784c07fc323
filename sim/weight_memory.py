"""`WeightMemoryHarness`: an engine's weight read port on a plain memory, for its unit benches.

The GEMM engine and the expert engine read their weights through a synchronous read port; in
the accelerator the expert cache serves it. Their own cosimulations (and the MAC-utilisation
bench) put a plain memory, filled through a write port, in the cache's place.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moeforge.checks import check_int
from moeforge.rtl.datapath.mac_array import index_shape

__all__ = ["WeightMemoryHarness"]


class WeightMemoryHarness(wiring.Component):
    """An engine with its weight read port (``w_rd``) on a plain memory, for simulation.

    Every member of the engine's signature except ``w_rd`` is forwarded unchanged; ``w_wr``
    (``{addr, data, en}``, one word per cycle) fills the memory. The memory's read port has the
    latency-1 behaviour the engine expects (in the accelerator the expert cache serves the port).

    Parameters
    ----------
    engine : wiring.Component
        With a ``w_rd`` member (``addr``, ``en`` out; ``data`` in) and a ``word_layout``.
    depth : int
        Memory words, in [1, 2^24].
    """

    def __init__(self, engine, *, depth: int):
        check_int("depth", depth, 1, 1 << 24)
        if "w_rd" not in engine.signature.members:
            raise TypeError(f"the engine has no w_rd port: {engine!r}")
        self.engine = engine
        self.depth = depth
        self.word_layout = engine.word_layout
        self._forward = {name: mem for name, mem in engine.signature.members.items() if name != "w_rd"}
        super().__init__({
            **self._forward,
            "w_wr": In(wiring.Signature({"addr": Out(index_shape(depth)),
                                         "data": Out(self.word_layout), "en": Out(1)})),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = eng = self.engine
        m.submodules.wmem = wmem = Memory(shape=self.word_layout, depth=self.depth, init=[])
        wp, rp = wmem.write_port(), wmem.read_port()
        m.d.comb += [wp.addr.eq(self.w_wr.addr), wp.data.eq(self.w_wr.data), wp.en.eq(self.w_wr.en),
                     rp.addr.eq(eng.w_rd.addr), rp.en.eq(eng.w_rd.en), eng.w_rd.data.eq(rp.data)]
        for name, member in self._forward.items():
            outer, inner = getattr(self, name), getattr(eng, name)
            if member.is_port:
                if member.flow == Out:
                    m.d.comb += outer.eq(inner)
                else:
                    m.d.comb += inner.eq(outer)
            elif member.flow == In:
                wiring.connect(m, wiring.flipped(outer), inner)
            else:
                wiring.connect(m, inner, wiring.flipped(outer))
        return m
