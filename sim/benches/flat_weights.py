"""Test fixtures standing in for the expert cache: `FlatWeights` and `LayerCoreHarness`.

`FlatWeights` holds every expert's image in one memory, expert ``e`` at ``e · image_words``, and
answers each request ``{expert}`` with the grant ``{expert, slot = expert, hit = 1}`` in request
order, after a latency the testbench chooses: while ``grant_hold`` is high no new grant is
presented (a grant already shown stays until taken, stream rule 2), so a testbench that holds
it for a random number of cycles after each grant gives random miss latencies, and requests
run ahead of grants. ``req_hold`` likewise stalls request acceptance.

It keeps the cache's bookkeeping to check the core against it: every grant holds its slot
until a ``release`` pulse frees the oldest held one. Sticky ``errors`` bits:

====  ==========================================================================================
0     a ``release`` with no slot held (a slot released twice)
1     a ``w_rd`` read outside every held slot's image (a read after release or before grant)
2     a grant while ``max_held`` slots are already held (releases late or missing)
====  ==========================================================================================

``grants`` and ``releases`` count both (32 bits, from reset). At the end of a batch a correct
core has ``grants == releases`` (every grant released exactly once) and ``errors == 0``.
``pending`` is the number of requests waiting for their grant: above 1, the core's requests
run ahead of the grants.

`LayerCoreHarness` is a `LayerCore` with a `FlatWeights` on its cache side: it forwards every
other port of the core and adds the fixture's ``w_wr``, ``grant_hold``, ``req_hold``, ``grants``,
``releases``, ``errors`` and ``pending``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moeforge.rtl.layer.layer_core import LayerCore
from moeforge.checks import check_int
from moeforge.rtl.datapath.mac_array import index_shape

__all__ = ["FlatWeights", "LayerCoreHarness", "CACHE_SIDE"]

CACHE_SIDE = ("o_req", "i_grant", "release", "w_rd")   # the core's ports the fixture serves
FIXTURE_PORTS = ("w_wr", "grant_hold", "req_hold", "grants", "releases", "errors", "pending")


class FlatWeights(wiring.Component):
    """Every expert's image in place; grants ``slot = expert`` (see the module docstring).

    Parameters
    ----------
    core : LayerCore
        Built with ``slots = n_experts`` (its layouts and ``image_words`` are used).
    max_held : int
        Slots that may be held at once before a grant counts as an error, in [1, 16].
    """

    def __init__(self, core: LayerCore, *, max_held: int = 2):
        if not isinstance(core, LayerCore):
            raise TypeError(f"core must be a LayerCore, not {core!r}")
        E = core.cfg.n_experts
        if core.slots < E:
            raise ValueError(f"the core's slots must be at least n_experts={E} (slot = expert), "
                             f"not {core.slots!r}")
        check_int("max_held", max_held, 1, 16)
        self.n_experts, self.image_words, self.max_held = E, core.image_words, max_held
        self.depth = E * core.image_words
        word = core.w_rd.data.shape()
        super().__init__({
            "i_req": In(stream.Signature(core.req_layout)),
            "o_grant": Out(stream.Signature(core.grant_layout)),
            "release": In(1),
            "w_rd": In(wiring.Signature({"addr": Out(core.w_addr_width), "en": Out(1),
                                         "data": In(word)})),
            "w_wr": In(wiring.Signature({"addr": Out(index_shape(self.depth)), "data": Out(word),
                                         "en": Out(1)})),
            "grant_hold": In(1),
            "req_hold": In(1),
            "grants": Out(32),
            "releases": Out(32),
            "errors": Out(3),
            "pending": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        W, H = self.image_words, self.max_held
        m.submodules.mem = mem = Memory(shape=self.w_wr.data.shape(), depth=self.depth, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        m.d.comb += [wp.addr.eq(self.w_wr.addr), wp.data.eq(self.w_wr.data), wp.en.eq(self.w_wr.en),
                     rp.addr.eq(self.w_rd.addr), rp.en.eq(self.w_rd.en), self.w_rd.data.eq(rp.data)]

        # requests in order; a grant shown stays shown until taken
        eb = len(self.i_req.payload.expert)
        m.submodules.fifo = fifo = SyncFIFO(width=eb, depth=self.n_experts)
        shown = Signal()
        og = self.o_grant
        m.d.comb += [
            fifo.w_data.eq(self.i_req.payload.expert),
            fifo.w_en.eq(self.i_req.valid & self.i_req.ready),
            self.i_req.ready.eq(fifo.w_rdy & ~self.req_hold),
            og.valid.eq(fifo.r_rdy & (shown | ~self.grant_hold)),
            og.payload.expert.eq(fifo.r_data), og.payload.slot.eq(fifo.r_data),
            og.payload.hit.eq(1),
            fifo.r_en.eq(og.valid & og.ready),
        ]
        m.d.sync += shown.eq(og.valid & ~og.ready)
        m.d.comb += self.pending.eq(fifo.level)

        # held slots, oldest first
        held_slot = [Signal(len(og.payload.slot), name=f"held{i}") for i in range(H)]
        n_held = Signal(range(H + 1))
        grant = og.valid & og.ready
        rel = self.release
        with m.If(grant):
            m.d.sync += self.grants.eq(self.grants + 1)
        with m.If(rel):
            m.d.sync += self.releases.eq(self.releases + 1)
        after_rel = [held_slot[i + 1] if i + 1 < H else held_slot[i] for i in range(H)]
        with m.If(rel & (n_held != 0)):
            m.d.sync += [held_slot[i].eq(after_rel[i]) for i in range(H)]
        count_after = Signal(range(H + 1))
        m.d.comb += count_after.eq(n_held - (rel & (n_held != 0)))
        with m.If(grant & (count_after != H)):
            for i in range(H):
                with m.If(count_after == i):
                    m.d.sync += held_slot[i].eq(og.payload.slot)
        m.d.sync += n_held.eq(count_after + (grant & (count_after != H)))
        inside = 0
        for i in range(H):
            base = held_slot[i] * W
            addr = self.w_rd.addr
            inside = inside | ((i < n_held) & (addr >= base) & (addr < base + W))
        with m.If(rel & (n_held == 0)):
            m.d.sync += self.errors[0].eq(1)
        with m.If(self.w_rd.en & ~inside):
            m.d.sync += self.errors[1].eq(1)
        with m.If(grant & (count_after == H)):
            m.d.sync += self.errors[2].eq(1)
        return m


class LayerCoreHarness(wiring.Component):
    """A `LayerCore` (``slots = n_experts``) with a `FlatWeights` on its cache side."""

    def __init__(self, cfg, *, max_held: int = 2):
        self.core = LayerCore(cfg, slots=cfg.n_experts)
        self.fixture = FlatWeights(self.core, max_held=max_held)
        self._forward = {n: mem for n, mem in self.core.signature.members.items()
                         if n not in CACHE_SIDE}
        extra = {n: mem for n, mem in self.fixture.signature.members.items()
                 if n in FIXTURE_PORTS}
        super().__init__({**self._forward, **extra})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.submodules.fixture = fix = self.fixture
        wiring.connect(m, core.o_req, fix.i_req)
        wiring.connect(m, fix.o_grant, core.i_grant)
        m.d.comb += [fix.release.eq(core.release), fix.w_rd.addr.eq(core.w_rd.addr),
                     fix.w_rd.en.eq(core.w_rd.en), core.w_rd.data.eq(fix.w_rd.data)]
        for name in FIXTURE_PORTS:
            _forward(m, self, fix, name, fix.signature.members[name])
        for name, member in self._forward.items():
            _forward(m, self, core, name, member)
        return m


def _forward(m, outer_obj, inner_obj, name, member):
    outer, inner = getattr(outer_obj, name), getattr(inner_obj, name)
    if member.is_port:
        m.d.comb += (outer.eq(inner) if member.flow == Out else inner.eq(outer))
    elif member.flow == In:
        wiring.connect(m, wiring.flipped(outer), inner)
    else:
        wiring.connect(m, inner, wiring.flipped(outer))
