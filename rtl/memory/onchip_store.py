"""`OnChipExpertStore`: the experts' images in block RAM, behind the SoC's memory port.

A board whose config's experts fit on chip plugs this into `MoESoC`'s memory port
(``wiring.connect(m, soc.mem_req, store.mem_req)`` and likewise ``mem_resp``, ``mem_wr``): the
host fills it with the same ``WRITE_MEMORY`` commands it sends to the simulated device, and the
expert cache reads it with the same bursts. It holds every routed expert's image, expert ``e``'s
at word ``e · image_words`` (`moeforge.spec.image`), ``n_experts · image_words`` words of
``8 · mac_cols`` bits: what `moeforge.sim.tops.backing_memory_for` sizes the simulation model to.

The words are one `Memory` with a write port and a synchronous read port (no asynchronous read,
no transparency), so Yosys maps it to block RAM (DP16KD on ECP5) rather than to LUT RAM.

Interface (the flipped memory port of `MoESoC`)
------------------------------------------------
``mem_req`` (in stream ``{addr, length}``): read ``length`` words from word ``addr`` (``length =
0`` is taken and dropped; words past the store's depth are outside the contract). A request is
taken when the previous one has no word left to read, or in the cycle its last word is read, so
back-to-back bursts stream without a gap.

``mem_resp`` (out stream ``{data}``): the words of the requests, in order, one a cycle at most.
Honours back-pressure: a word is read from the block RAM only when the output buffer has room
for it, so none is lost or duplicated however ``mem_resp.ready`` stalls.

``mem_wr`` (in ``{addr, data, en}``): the host's writes, one word a cycle; writes at or past the
depth are ignored. A write to a word that a burst reads in the same cycle is outside the contract
(the accelerator writes the memory only while no batch runs).

Cycle model
-----------
With ``read_stages = k`` (the block RAM's own output register, then ``k - 1`` registers without
reset), a request accepted in cycle ``c`` offers its first word in cycle ``c + k + 2``
(`latency`); with ``mem_resp.ready`` high, word ``j`` transfers in cycle ``c + latency + j``.
Credits bound the words read and not yet transferred to the output buffer's ``k + 2`` entries
(registers, not a memory, so no LUT RAM): enough for one word a cycle, and the read enable never
depends combinationally on ``mem_resp.ready``.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError
from moeforge.spec.image import check_int
from moeforge.spec.protocol import CommandLayout

from .expert_cache import pick, write_at

__all__ = ["OnChipExpertStore", "DEFAULT_BUDGET_BITS", "DP16KD_MODES", "check_fits", "dp16kd_blocks",
           "store_shape"]

# The store's default budget: 2 Mibit of data, 128 DP16KD blocks at 16 Kibit of data each (a
# 32-bit word per 36-bit block word): 62% of the 208 blocks of the largest ECP5 (LFE5U-85F), the
# rest left to the expert cache's slots and the layer's buffers.
DEFAULT_BUDGET_BITS = 1 << 21

# (width, depth) of one ECP5 DP16KD block in each of its modes (36 bits wide as PDPW16KD, which
# has one write and one read port, as the store does).
DP16KD_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def dp16kd_blocks(depth: int, width: int) -> int:
    """Fewest ECP5 block RAMs (DP16KD) that hold `depth` words of `width` bits in one mode: the
    resource check's count for a memory; Yosys may use as many or, mixing modes, fewer."""
    check_int("depth", depth, 1, 1 << 30)
    check_int("width", width, 1, 1 << 16)
    return min(-(-width // w) * -(-depth // d) for w, d in DP16KD_MODES)


def store_shape(cfg: AccelConfig) -> tuple[int, int]:
    """``(words, word_bits)`` of `cfg`'s routed experts' images: the on-chip store's size."""
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
    return CommandLayout.from_config(cfg).memory_words, 8 * cfg.mac_cols


def check_fits(cfg: AccelConfig, budget_bits: int | None = DEFAULT_BUDGET_BITS) -> None:
    """Refuse a config whose experts' images need more than `budget_bits` of on-chip store
    (None: no budget, any config fits).

    Raises
    ------
    ConfigError
        Naming the config, its images' size and the budget.
    """
    words, word_bits = store_shape(cfg)
    if budget_bits is None:
        return
    check_int("budget_bits", budget_bits, 1, 1 << 40)
    if words * word_bits > budget_bits:
        raise ConfigError("memory", f"config {cfg.name}'s {cfg.n_experts} expert images are "
                          f"{words} words of {word_bits} bits ({words * word_bits} bits); "
                          f"the on-chip store holds at most {budget_bits} bits")


def _bits(count: int) -> int:
    """Bits of a word address below `count` (at least 1), as `MoEAccelerator` sizes ``mem_wr``."""
    return max(1, ceil_log2(max(2, count)))


class OnChipExpertStore(wiring.Component):
    """The routed experts' images in block RAM; see the module docstring.

    Parameters
    ----------
    cfg : AccelConfig
    burst : int
        The SoC's ``burst``: the longest request, in words, in [1, 4096] (sets the width of
        ``mem_req.length``).
    read_stages : int
        Registers from the read address to the output buffer, in [1, 4]: 1 is the block RAM's own
        output register; each more one eases timing and adds a cycle of latency.
    budget_bits : int or None
        Data bits the store may take; a config whose experts need more is refused. The default,
        `DEFAULT_BUDGET_BITS`, is what the largest ECP5 can give it; a board passes its own; None
        sets no bound (the Verilog of the store of any config, as the unit registry builds it).

    Raises
    ------
    ConfigError
        If the experts' images need more than `budget_bits` (the message gives both).
    TypeError, ValueError
        For a parameter of the wrong type or out of range.
    """

    def __new__(cls, cfg: AccelConfig, *, burst: int = 16, read_stages: int = 2,
                budget_bits: int | None = DEFAULT_BUDGET_BITS, src_loc_at: int = 0):
        # checked before the component exists: a refused config leaves no half-built component
        # behind (Amaranth would warn that it was never used)
        check_int("burst", burst, 1, 4096)
        check_int("read_stages", read_stages, 1, 4)
        check_fits(cfg, budget_bits)
        return super().__new__(cls, src_loc_at=1 + src_loc_at)

    def __init__(self, cfg: AccelConfig, *, burst: int = 16, read_stages: int = 2,
                 budget_bits: int | None = DEFAULT_BUDGET_BITS, src_loc_at: int = 0):
        self.cfg, self.burst, self.read_stages = cfg, burst, read_stages
        self.depth, self.word_bits = store_shape(cfg)
        self.bits = self.depth * self.word_bits
        self.budget_bits = budget_bits
        self.addr_width = _bits(self.depth)
        self.buffer_depth = read_stages + 2
        # words read ahead of mem_resp: the output buffer's entries (more would overwrite them)
        self.credits = self.buffer_depth
        self.latency = read_stages + 2
        self.blocks = dp16kd_blocks(self.depth, self.word_bits)
        req = data.StructLayout({"addr": self.addr_width,
                                 "length": unsigned(ceil_log2(burst + 1))})
        resp = data.StructLayout({"data": self.word_bits})
        super().__init__({
            "mem_req": In(stream.Signature(req)),
            "mem_resp": Out(stream.Signature(resp)),
            "mem_wr": In(wiring.Signature({"addr": Out(self.addr_width),
                                           "data": Out(self.word_bits), "en": Out(1)})),
        }, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        N, k, credits = self.buffer_depth, self.read_stages, self.credits
        m.submodules.mem = mem = Memory(shape=self.word_bits, depth=self.depth, init=[])
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")
        m.d.comb += [wp.addr.eq(self.mem_wr.addr), wp.data.eq(self.mem_wr.data),
                     wp.en.eq(self.mem_wr.en & (self.mem_wr.addr < self.depth))]

        # -- address generator: one read a cycle while a burst has words left and credit allows
        addr = Signal(self.addr_width)
        remaining = Signal.like(self.mem_req.payload.length)
        outstanding = Signal(range(credits + 1))  # read, not yet transferred on mem_resp
        issue = (remaining != 0) & (outstanding < credits)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(issue),
                     self.mem_req.ready.eq((remaining == 0) | ((remaining == 1) & issue))]
        with m.If(self.mem_req.valid & self.mem_req.ready):
            m.d.sync += [addr.eq(self.mem_req.payload.addr),
                         remaining.eq(self.mem_req.payload.length)]
        with m.Elif(issue):
            m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1)]

        # -- read pipeline: the block RAM's output register, then k - 1 more
        valid = Signal(name="rd_valid")
        m.d.sync += valid.eq(issue)
        word = rp.data
        for i in range(1, k):
            nxt_valid = Signal(name=f"rd_valid{i}")
            nxt_word = Signal(self.word_bits, name=f"rd_data{i}", reset_less=True)
            m.d.sync += [nxt_valid.eq(valid), nxt_word.eq(word)]
            valid, word = nxt_valid, nxt_word

        # -- output buffer: N registers in a ring
        entries = [Signal(self.word_bits, name=f"buf{i}", reset_less=True) for i in range(N)]
        head = Signal(range(N))
        tail = Signal(range(N))
        count = Signal(range(N + 1))
        with m.If(valid):
            write_at(m, entries, tail, word)
            m.d.sync += tail.eq(_wrap_inc(tail, N))
        m.d.comb += [self.mem_resp.valid.eq(count != 0),
                     self.mem_resp.payload.data.eq(pick(entries, head))]
        pop = self.mem_resp.valid & self.mem_resp.ready
        with m.If(pop):
            m.d.sync += head.eq(_wrap_inc(head, N))
        m.d.sync += [count.eq(count + valid - pop), outstanding.eq(outstanding + issue - pop)]
        return m



def _wrap_inc(value: Signal, modulo: int):
    return Mux(value == modulo - 1, 0, value + 1)
