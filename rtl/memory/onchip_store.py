"""`OnChipExpertStore`: the experts' images in block RAM, behind the SoC's memory port.

A board whose config's experts fit on chip plugs this into `MoESoC`'s memory port
(``wiring.connect(m, soc.mem_req, store.mem_req)`` and likewise ``mem_resp``, ``mem_wr``): the
host fills it with the same ``WRITE_MEMORY`` commands it sends to the simulated device, and the
expert cache reads it with the same bursts. It holds every routed expert's image, expert ``e``'s
at word ``e · image_words`` (`moeforge.spec.image`), ``n_experts · image_words`` words of
``8 · mac_cols`` bits: what `moeforge.sim.tops.backing_memory_for` sizes the simulation model to.

Block RAM
---------
Every memory of the store has a write port and a synchronous read port (no asynchronous read, no
transparency), so Yosys maps it to block RAM (DP16KD on ECP5) rather than to LUT RAM. The words
are laid out in banks one block deep, each cut into bit slices one block wide (`block_plan`;
tiny: 13 banks of 1,024 words, each two slices of 18 bits, 26 blocks in their 1024 × 18 mode),
each slice its own memory, so that nothing but a register follows a block's output. Left to
itself with one memory, Yosys multiplexes the blocks' outputs in the fabric right behind their
slow clock-to-output (5.8 ns on an LFE5U-85F, speed 6): tiny's store alone, placed and routed out
of context, reached 81 MHz so; laid out in banks, the bank multiplexer (a balanced tree of
registered bank outputs) comes a pipeline stage later: 133 MHz (26 DP16KD, 1,156 LUT4, 750 FFs,
Yosys ``synth_ecp5`` and nextpnr-ecp5 out of context on the 85F, speed 6). The blocks are read
every cycle at the burst's address; a word counts only when its valid bit, which travels
beside it, says it was asked for.

Interface (the flipped memory port of `MoESoC`)
------------------------------------------------
``mem_req`` (in stream ``{addr, length}``): read ``length`` words from word ``addr`` (``length =
0`` is taken and dropped; words past the store's depth are outside the contract). A request is
taken when the previous one has no word left to read, or in the cycle its last word is read, so
back-to-back bursts stream without a gap.

``mem_resp`` (out stream ``{data}``): the words of the requests, in order, one a cycle at most.
Honours back-pressure: a word is read only when the output buffer has room for it, so none is
lost or duplicated however ``mem_resp.ready`` stalls.

``mem_wr`` (in ``{addr, data, en}``): the host's writes, one word a cycle; writes at or past the
depth are ignored. A write to a word that a burst reads in the same cycle is outside the contract
(the accelerator writes the memory only while no batch runs).

Cycle model
-----------
With ``read_stages = k`` (the block RAM's own output register, then ``k - 1`` registers without
reset) and ``b`` = 1 with more than one bank (each bank's output registered before the bank
multiplexer), else 0, a request accepted in cycle ``c`` offers its first word in cycle
``c + k + b + 2`` (`latency`); with ``mem_resp.ready`` high, word ``j`` transfers in cycle
``c + latency + j``. Credits bound the words read and not yet transferred to the output buffer's
``k + b + 2`` entries (registers, not a memory, so no LUT RAM): enough for one word a cycle, and
whether a word is read never depends combinationally on ``mem_resp.ready``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError
from moeforge.checks import check_int
from moeforge.spec.protocol import CommandLayout

from .expert_cache import pick, write_at

__all__ = ["OnChipExpertStore", "DEFAULT_BUDGET_BITS", "DP16KD_MODES", "block_mode", "block_plan",
           "check_fits", "dp16kd_blocks", "store_shape"]

# The store's default budget: 2 Mibit of data, 128 DP16KD blocks at 16 Kibit of data each (a
# 32-bit word per 36-bit block word): 62% of the 208 blocks of the largest ECP5 (LFE5U-85F), the
# rest left to the expert cache's slots and the layer's buffers.
DEFAULT_BUDGET_BITS = 1 << 21

# (width, depth) of one ECP5 DP16KD block in each of its modes (36 bits wide with one write and
# one read port, as the store has).
DP16KD_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def block_mode(depth: int, width: int) -> tuple[int, int]:
    """The DP16KD mode ``(bits, words)`` in which the store lays out `depth` words of `width`
    bits: the fewest blocks, then the fewest banks plus slices (the bank multiplexer's inputs and
    the memories; each bank's output is a register of `width` bits), then the fewest slices."""
    check_int("depth", depth, 1, 1 << 30)
    check_int("width", width, 1, 1 << 16)

    def cost(mode):
        banks, slices = -(-depth // mode[1]), -(-width // mode[0])
        return banks * slices, banks + slices, slices
    return min(DP16KD_MODES, key=cost)


def block_plan(depth: int, width: int) -> list[tuple[int, int, int]]:
    """How the store lays `depth` words of `width` bits out in DP16KD blocks: one
    ``(first_word, words, slice_bits)`` per bank, banks as deep as one block in `block_mode`
    (the last one shorter), each cut into slices of ``slice_bits`` bits (the last one narrower),
    each slice one memory of one block."""
    bits, words = block_mode(depth, width)
    return [(first, min(words, depth - first), bits) for first in range(0, depth, words)]


def dp16kd_blocks(depth: int, width: int) -> int:
    """ECP5 block RAMs (DP16KD) of a store of `depth` words of `width` bits, as `block_plan`
    lays it out: the resource check's count, and what Yosys maps the store to."""
    return sum(-(-width // bits) for _, _, bits in block_plan(depth, width))


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
        self.plan = block_plan(self.depth, self.word_bits)
        self.blocks = dp16kd_blocks(self.depth, self.word_bits)
        self.latency = read_stages + (len(self.plan) > 1) + 2
        self.buffer_depth = self.latency
        # words read ahead of mem_resp: the output buffer's entries (more would overwrite them)
        self.credits = self.buffer_depth
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
        W, wr = self.word_bits, self.mem_wr

        # -- address generator: one read a cycle while a burst has words left and credit allows
        addr = Signal(self.addr_width)
        remaining = Signal.like(self.mem_req.payload.length)
        outstanding = Signal(range(credits + 1))  # read, not yet transferred on mem_resp
        issue = (remaining != 0) & (outstanding < credits)
        m.d.comb += self.mem_req.ready.eq((remaining == 0) | ((remaining == 1) & issue))
        with m.If(self.mem_req.valid & self.mem_req.ready):
            m.d.sync += [addr.eq(self.mem_req.payload.addr),
                         remaining.eq(self.mem_req.payload.length)]
        with m.Elif(issue):
            m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1)]

        # -- the blocks: banks of bit slices (`block_plan`), all read at `addr` every cycle (no
        # read enable, which would put logic behind each block's output: a word counts only
        # with its valid bit)
        low = min(self.addr_width, ceil_log2(block_mode(self.depth, W)[1]))
        banked = len(self.plan) > 1
        in_range = wr.addr < self.depth
        bank_words = []
        for b, (first, words, bits) in enumerate(self.plan):
            here = in_range if not banked else in_range & (wr.addr[low:] == b)
            slices = []
            for lo in range(0, W, bits):
                width = min(bits, W - lo)
                mem = Memory(shape=width, depth=words, init=[])
                m.submodules[f"bank{b}_bits{lo}"] = mem
                wp, rp = mem.write_port(), mem.read_port(domain="sync")
                m.d.comb += [wp.addr.eq(wr.addr[:low]), wp.data.eq(wr.data[lo:lo + width]),
                             wp.en.eq(wr.en & here), rp.addr.eq(addr[:low])]
                slices.append(rp.data)
            bank_words.append(Cat(*slices))

        # -- read pipeline: the blocks' output registers; with banks, a register behind each
        # bank and the bank multiplexer; then k - 1 more registers
        valid = Signal(name="rd_valid")
        m.d.sync += valid.eq(issue)
        if banked:
            bank = Signal(range(len(self.plan)), name="rd_bank")
            bank_q = Signal.like(bank, name="rd_bank_q")
            valid_q = Signal(name="rd_valid_q")
            m.d.sync += [bank.eq(addr[low:]), bank_q.eq(bank), valid_q.eq(valid)]
            held = [Signal(W, name=f"rd_bank{b}", reset_less=True) for b in range(len(self.plan))]
            m.d.sync += [h.eq(w) for h, w in zip(held, bank_words)]
            valid, word = valid_q, _mux_tree(held, bank_q)
        else:
            word = bank_words[0]
        for i in range(1, k):
            nxt_valid = Signal(name=f"rd_valid{i}")
            nxt_word = Signal(W, name=f"rd_data{i}", reset_less=True)
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



def _mux_tree(items: list, index: Signal):
    """``items[index]`` as a balanced tree of 2-to-1 multiplexers, one level per bit of `index`
    (shallow logic, where `pick`'s chain would be as deep as the list is long)."""
    level = 0
    while len(items) > 1:
        items = [Mux(index[level], items[i + 1], items[i]) if i + 1 < len(items) else items[i]
                 for i in range(0, len(items), 2)]
        level += 1
    return items[0]


def _wrap_inc(value: Signal, modulo: int):
    return Mux(value == modulo - 1, 0, value + 1)
