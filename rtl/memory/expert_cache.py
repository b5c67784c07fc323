"""The expert cache: ``S`` experts' weight images on chip, missing ones fetched from memory.

The scheduler asks for experts in its expert-major order and runs ahead, so the next expert's
image is fetched while the engine computes with the current one (prefetch). Each request is
decided exactly as `moeforge.hls_models.expert_cache.ExpertCacheModel` decides it (hit or miss,
slot, victim: lru, lfu or pinned), so the grant sequence never depends on timing.

Memory map
----------
Expert ``e``'s image is ``image_words`` words of ``word_bits`` bits at backing-memory word
address ``e * image_words``. Slot ``s`` holds its image at cache word ``s * image_words + i``,
in one `Memory` of ``slots * image_words`` words (one write port for fetches, one read port
for the engine).

Interface
---------
``i_req`` (in stream ``{expert}``): requests in schedule order. Taken while the decision stage is
idle, fewer than ``queue_depth`` requests are outstanding (accepted and not released) and no
invalidate is pending: a request takes 3 cycles (accept, decide, commit) unless its miss waits
for a locked victim.

``o_grant`` (out stream ``{expert, slot, hit}``): one per request, in request order, valid once
the expert's whole image is resident in ``slot`` (for a miss: the cycle after its last word was
written). Up to ``queue_depth`` decided requests queue here, so the cache decides and fetches
ahead of the consumer.

``release`` (in, 1-cycle pulse): releases the oldest granted and not yet released request,
unlocking its slot. A pulse in the cycle a grant transfers may release that grant; a pulse with
nothing granted and unreleased is ignored.

``rd`` (``addr``, ``en`` in; ``data`` out, ``word_bits``): the engine's read port, latency one
cycle (``data`` is the word at the address sampled with ``en`` in the previous cycle and holds
while ``en`` is low). `ExpertFFN.w_rd` connects to it directly (``wiring.connect``; the engine's
address width must equal ``rd_addr_width``). The engine may read a slot from its grant until
its release; the cache never writes a slot that is locked.

``mem_req`` (out stream ``{addr, length}``): burst reads in words, ``1 <= length <= burst``, in
address order, each miss's image from its start. ``mem_resp`` (in stream ``{data}``): the words
of the bursts, in order. ``mem_resp.ready`` is always high (each word is written in the cycle it
arrives; words that no fetch asked for are dropped), and bursts are requested as far ahead as the
memory accepts them, across misses, so a fetch streams at the memory's bandwidth and the next
miss's first request overlaps the current one's tail.

``invalidate`` (in, 1-cycle pulse): forget every slot and, for lfu, every access count. The pulse
is remembered; requests accepted up to and including its cycle are processed first. From the next
cycle ``i_req.ready`` is low until the cache is idle (every accepted request granted and
released), then the invalidate takes one cycle (lfu: ``n_experts`` more to clear the counts,
as after reset).

Counters (out, 32 bits, wrap around; a ``clear_counters`` pulse sets all five to 0, increments
of that cycle are lost):

``hits``, ``misses``
    requests decided as hit / miss (counted when committed);
``words_fetched``
    words received on ``mem_resp`` for a fetch;
``stall_cycles``
    cycles with ``o_grant.ready`` high, at least one accepted request not yet granted (counting
    one in the decision stage) and ``o_grant.valid`` low;
``prefetch_hits``
    misses granted without a stall cycle attributed to them: a stall cycle is attributed to the
    oldest accepted request not yet granted, so a miss counts when its image was resident
    before the consumer asked for its grant.

``busy`` (out): a request accepted and not yet released, a fetch in progress, an invalidate
pending, or the lfu counts being cleared.

Locks and waiting
-----------------
A slot's lock counts the outstanding requests decided to it (incremented at the decision,
decremented by ``release``). A hit may go to a locked slot. A miss whose target (a never-filled
slot, else the policy's victim) is locked waits in the decision stage until it is unlocked, never
choosing another slot. The consumer must therefore release grants without waiting for later
ones: with ``slots = 1`` the next miss is decided only after the current grant is released.

Policy state
------------
Per slot: its expert, a filled bit, a recency rank (0 = most recently used; among ``k`` filled
slots the ranks are ``0 .. k-1``, so LRU is rank ``slots-1``), a pinned bit (pinned policy) and
its expert's count (lfu). lfu keeps the ``n_experts`` counts in a memory read in the accept cycle
and written back at the commit; the victim is the slot with the smallest (count, ~rank) key,
pinned the smallest (pinned bit, ~rank): a comparator tree of depth ``ceil(log2 slots)``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.config import AccelConfig
from moeforge.hls_models.expert_cache import COUNT_BITS, check_policy
from moeforge.spec.protocol import CACHE_COUNTERS

from moeforge.checks import check_int
from ..datapath.arith import times_table
from ..datapath.mac_array import index_shape

__all__ = ["ExpertCache", "COUNTER_BITS", "pick", "write_at"]

COUNTER_BITS = 32


def _bits(count: int) -> int:
    """Bits of an index 0 .. count-1 (at least 1)."""
    return max(1, ceil_log2(count))


def _wrap_inc(value: Signal, modulo: int):
    return Mux(value == modulo - 1, 0, value + 1)


def pick(items: list, index):
    """``items[index]`` as a chain of multiplexers (no Verilog case: every index is covered).

    Public for the other register files of small rings (the backing-memory model's request queue).
    """
    out = items[0]
    for i in range(1, len(items)):
        out = Mux(index == i, items[i], out)
    return out


def write_at(m: Module, items: list, index, value) -> None:
    """``items[index] <= value`` (sync), one comparison per item."""
    for i, item in enumerate(items):
        with m.If(index == i):
            m.d.sync += item.eq(value)


def _lowest(bits: list) -> Signal:
    """Index of the lowest set bit of `bits` (0 if none)."""
    idx = Const(0, _bits(len(bits)))
    for i in reversed(range(len(bits))):
        idx = Mux(bits[i], i, idx)
    return idx


def _argmin(keys: list) -> Signal:
    """Index of the smallest unsigned key (the lower index on ties), as a comparator tree."""
    width = _bits(len(keys))
    items = [(k, Const(i, width)) for i, k in enumerate(keys)]
    while len(items) > 1:
        nxt = []
        for (ka, ia), (kb, ib) in zip(items[0::2], items[1::2]):
            take_b = kb < ka
            nxt.append((Mux(take_b, kb, ka), Mux(take_b, ib, ia)))
        if len(items) % 2:
            nxt.append(items[-1])
        items = nxt
    return items[0][1]


class ExpertCache(wiring.Component):
    """Expert weight cache with a burst-read fetch engine; see the module docstring.

    Parameters
    ----------
    n_experts : int
        Experts that can be requested, in [1, 1024].
    slots : int
        Cache slots ``S``, in [1, n_experts].
    policy : str
        ``lru``, ``lfu`` or ``pinned``.
    pinned : sequence of int
        Never-evicted experts (``pinned`` policy only; 1 .. slots-1 distinct experts).
    image_words : int
        Words of one expert's image, in [1, 2^24].
    word_bits : int
        Bits of a word, in [1, 4096].
    mem_addr_width : int, optional
        Width of ``mem_req.addr``, at least ``ceil_log2(n_experts * image_words)`` (the
        default) and at most 48.
    burst : int
        Longest burst in words, in [1, 4096].
    queue_depth : int, optional
        Outstanding requests (accepted and not released), in [slots, 4096]; default
        ``2 * slots + 2``. The grant queue and the fetch queue have this many entries (in
        registers, read through multiplexers).
    count_bits : int
        Width of the lfu access counters, in [1, 32]; 16 (the policy's) by default, narrower
        only for tests that reach saturation.

    Raises
    ------
    TypeError, ValueError
        For a parameter of the wrong type, out of range or not fitting the others.
    """

    def __init__(self, *, n_experts: int, slots: int, policy: str, pinned=(), image_words: int,
                 word_bits: int, mem_addr_width: int | None = None, burst: int = 16,
                 queue_depth: int | None = None, count_bits: int = COUNT_BITS,
                 src_loc_at: int = 0):
        self.pinned = check_policy(n_experts, slots, policy, pinned)
        check_int("image_words", image_words, 1, 1 << 24)
        check_int("word_bits", word_bits, 1, 4096)
        check_int("burst", burst, 1, 4096)
        min_aw = _bits(n_experts * image_words)
        if mem_addr_width is None:
            mem_addr_width = min_aw
        check_int("mem_addr_width", mem_addr_width, min_aw, 48)
        if queue_depth is None:
            queue_depth = 2 * slots + 2
        check_int("queue_depth", queue_depth, slots, 4096)
        check_int("count_bits", count_bits, 1, 32)
        self.count_bits = count_bits
        self.n_experts, self.slots, self.policy = n_experts, slots, policy
        self.image_words, self.word_bits, self.burst = image_words, word_bits, burst
        self.mem_addr_width, self.queue_depth = mem_addr_width, queue_depth
        self.rd_addr_width = _bits(slots * image_words)
        self.req_layout = data.StructLayout({"expert": index_shape(n_experts)})
        self.grant_layout = data.StructLayout({"expert": index_shape(n_experts),
                                               "slot": index_shape(slots), "hit": 1})
        self.mem_req_layout = data.StructLayout({"addr": mem_addr_width,
                                                 "length": unsigned(ceil_log2(burst + 1))})
        self.mem_resp_layout = data.StructLayout({"data": word_bits})
        members = {
            "i_req": In(stream.Signature(self.req_layout)),
            "o_grant": Out(stream.Signature(self.grant_layout)),
            "release": In(1),
            "rd": In(wiring.Signature({"addr": Out(self.rd_addr_width), "en": Out(1),
                                       "data": In(word_bits)})),
            "mem_req": Out(stream.Signature(self.mem_req_layout)),
            "mem_resp": In(stream.Signature(self.mem_resp_layout)),
            "invalidate": In(1),
            "clear_counters": In(1),
            "busy": Out(1),
        }
        members.update({name: Out(COUNTER_BITS) for name in CACHE_COUNTERS})
        super().__init__(members, src_loc_at=1 + src_loc_at)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, image_words: int, word_bits: int,
                    **kwargs) -> ExpertCache:
        """The routed experts' cache of `cfg` (``n_experts``, ``cache_slots``, ``cache_policy``,
        ``pinned_experts``); `kwargs` (``mem_addr_width``, ``burst``, ``queue_depth``) as for
        the constructor."""
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        return cls(n_experts=cfg.n_experts, slots=cfg.cache_slots, policy=cfg.cache_policy,
                   pinned=cfg.pinned_experts, image_words=image_words, word_bits=word_bits,
                   src_loc_at=1, **kwargs)

    def elaborate(self, platform):
        m = Module()
        S, Q, E, W = self.slots, self.queue_depth, self.n_experts, self.image_words
        lfu, pinned_policy = self.policy == "lfu", self.policy == "pinned"
        eb, sb = _bits(E), _bits(S)
        rb = _bits(S)                                    # recency rank 0 .. S-1
        cbits = self.count_bits
        count_max = (1 << cbits) - 1

        # ---------------------------------------------------------------- cache memory
        m.submodules.store = store = Memory(shape=self.word_bits, depth=max(2, S * W), init=[])
        st_wr = store.write_port()
        st_rd = store.read_port()
        m.d.comb += [st_rd.addr.eq(self.rd.addr), st_rd.en.eq(self.rd.en),
                     self.rd.data.eq(st_rd.data)]

        # ---------------------------------------------------------------- slot state
        tag = [Signal(eb, name=f"tag{s}") for s in range(S)]
        filled = [Signal(name=f"filled{s}") for s in range(S)]
        rank = [Signal(rb, name=f"rank{s}") for s in range(S)]
        pin = [Signal(name=f"pin{s}") for s in range(S)]
        scount = [Signal(cbits, name=f"scount{s}") for s in range(S)] if lfu else []
        lock = [Signal(range(Q + 1), name=f"lock{s}") for s in range(S)]

        # outstanding requests (committed, not released): a ring of Q entries
        ent_e = [Signal(eb, name=f"ent_e{q}") for q in range(Q)]
        ent_s = [Signal(sb, name=f"ent_s{q}") for q in range(Q)]
        ent_h = [Signal(name=f"ent_h{q}") for q in range(Q)]
        tail = Signal(range(max(2, Q)))
        gptr = Signal(range(max(2, Q)))
        rptr = Signal(range(max(2, Q)))
        n_out = Signal(range(Q + 1))                     # committed and not released
        n_ung = Signal(range(Q + 1))                     # committed and not granted
        n_held = Signal(range(Q + 1))                    # granted and not released
        done = Signal(range(Q + 1))                      # fetches complete, miss not granted

        # fetch jobs (one per miss): a ring of Q entries, walked by the issuer and the writer
        # (each job holds its slot's cache address and its expert's backing-memory address)
        fq_s = [Signal(self.rd_addr_width, name=f"fq_sbase{q}") for q in range(Q)]
        fq_e = [Signal(self.mem_addr_width, name=f"fq_ebase{q}") for q in range(Q)]
        ftail = Signal(range(max(2, Q)))
        fiss = Signal(range(max(2, Q)))
        fhead = Signal(range(max(2, Q)))
        n_iss = Signal(range(Q + 1))                     # jobs with bursts left to request
        n_fq = Signal(range(Q + 1))                      # jobs with words left to receive
        iss_off = Signal(range(max(2, W)))
        wr_off = Signal(range(max(2, W)))

        inv_pending = Signal()
        cur_e = Signal(eb)
        d_hit = Signal()
        d_slot = Signal(sb)
        d_count = Signal(cbits)

        # ---------------------------------------------------------------- lfu counts
        if lfu:
            m.submodules.counts = counts = Memory(shape=cbits, depth=max(2, E), init=[])
            c_wr = counts.write_port()
            c_rd = counts.read_port()
            clr = Signal(range(max(2, E)))

        # ---------------------------------------------------------------- grant / release
        g_hit = pick(ent_h, gptr)
        g_valid = (n_ung != 0) & (g_hit | (done != 0))
        g_fire = g_valid & self.o_grant.ready
        m.d.comb += [self.o_grant.valid.eq(g_valid),
                     self.o_grant.payload.expert.eq(pick(ent_e, gptr)),
                     self.o_grant.payload.slot.eq(pick(ent_s, gptr)),
                     self.o_grant.payload.hit.eq(g_hit)]
        r_fire = self.release & ((n_held != 0) | g_fire)
        rel_slot = pick(ent_s, rptr)
        with m.If(g_fire):
            m.d.sync += gptr.eq(_wrap_inc(gptr, Q))
        with m.If(r_fire):
            m.d.sync += rptr.eq(_wrap_inc(rptr, Q))
        m.d.sync += n_held.eq(n_held + g_fire - r_fire)

        # ---------------------------------------------------------------- decision stage
        # one-hot state: clearing (lfu counts) -> idle -> decide -> wait/commit -> idle
        clearing = Signal(init=lfu)
        idle = Signal(init=not lfu)
        deciding = Signal()
        committing = Signal()
        commit = Signal()
        commit_miss = Signal()
        in_decision = deciding | committing
        m.d.comb += commit_miss.eq(commit & ~d_hit)

        if lfu:
            with m.If(clearing):                          # zero the counts, one per cycle
                m.d.comb += [c_wr.addr.eq(clr), c_wr.data.eq(0), c_wr.en.eq(1)]
                m.d.sync += clr.eq(clr + 1)
                with m.If(clr == E - 1):
                    m.d.sync += [clr.eq(0), clearing.eq(0), idle.eq(1)]
            m.d.comb += [c_rd.addr.eq(self.i_req.payload.expert), c_rd.en.eq(idle)]

        m.d.comb += self.i_req.ready.eq(idle & ~inv_pending & (n_out != Q))
        with m.If(self.i_req.valid & self.i_req.ready):
            m.d.sync += [cur_e.eq(self.i_req.payload.expert), idle.eq(0), deciding.eq(1)]
        with m.Elif(idle & inv_pending & (n_out == 0)):
            m.d.sync += inv_pending.eq(0)
            for s in range(S):
                m.d.sync += [filled[s].eq(0), rank[s].eq(0), pin[s].eq(0), tag[s].eq(0)]
                if lfu:
                    m.d.sync += scount[s].eq(0)
            if lfu:
                m.d.sync += [idle.eq(0), clearing.eq(1)]

        match = [filled[s] & (tag[s] == cur_e) for s in range(S)]
        empty_v = Signal(S)                               # one net: used twice below
        m.d.comb += empty_v.eq(~Cat(*filled))
        empty = [empty_v[s] for s in range(S)]
        if lfu:
            victim = _argmin([Cat(~rank[s], scount[s]) for s in range(S)])
        elif pinned_policy:
            victim = _argmin([Cat(~rank[s], pin[s]) for s in range(S)])
        else:
            victim = _lowest([rank[s] == S - 1 for s in range(S)])
        any_hit, any_empty = Cat(*match).any(), empty_v.any()
        with m.If(deciding):
            m.d.sync += [d_hit.eq(any_hit),
                         d_slot.eq(Mux(any_hit, _lowest(match),
                                       Mux(any_empty, _lowest(empty), victim))),
                         deciding.eq(0), committing.eq(1)]
            if lfu:
                m.d.sync += d_count.eq(Mux(c_rd.data == count_max, count_max, c_rd.data + 1))
        m.d.comb += commit.eq(committing & (d_hit | (pick(lock, d_slot) == 0)))
        with m.If(commit):
            m.d.sync += [committing.eq(0), idle.eq(1)]

        m.d.comb += self.busy.eq(~idle | inv_pending | (n_out != 0) | (n_fq != 0))
        with m.If(self.invalidate):
            m.d.sync += inv_pending.eq(1)

        # commit: slot state, recency, lock, the outstanding ring and the fetch ring
        with m.If(commit):
            write_at(m, ent_e, tail, cur_e)
            write_at(m, ent_s, tail, d_slot)
            write_at(m, ent_h, tail, d_hit)
            m.d.sync += tail.eq(_wrap_inc(tail, Q))
            older = ~pick(filled, d_slot)                # an empty fill ages every filled slot
            d_rank = pick(rank, d_slot)
            for s in range(S):
                with m.If(d_slot == s):
                    m.d.sync += [rank[s].eq(0), filled[s].eq(1), tag[s].eq(cur_e)]
                    if pinned_policy:
                        m.d.sync += pin[s].eq(Cat(*(cur_e == p for p in self.pinned)).any())
                    if lfu:
                        m.d.sync += scount[s].eq(d_count)
                with m.Elif(filled[s] & (older | (rank[s] < d_rank))):
                    m.d.sync += rank[s].eq(rank[s] + 1)
            if lfu:
                m.d.comb += [c_wr.addr.eq(cur_e), c_wr.data.eq(d_count), c_wr.en.eq(1)]
        with m.If(commit_miss):
            write_at(m, fq_s, ftail, times_table(d_slot, S, W, self.rd_addr_width))
            write_at(m, fq_e, ftail, times_table(cur_e, E, W, self.mem_addr_width))
            m.d.sync += ftail.eq(_wrap_inc(ftail, Q))
        for s in range(S):
            inc = commit & (d_slot == s)
            dec = r_fire & (rel_slot == s)
            m.d.sync += lock[s].eq(lock[s] + inc - dec)
        m.d.sync += [n_out.eq(n_out + commit - r_fire), n_ung.eq(n_ung + commit - g_fire)]

        # ---------------------------------------------------------------- fetch: requests
        remaining = W - iss_off
        last_burst = remaining <= self.burst
        m.d.comb += [self.mem_req.valid.eq(n_iss != 0),
                     self.mem_req.payload.addr.eq(pick(fq_e, fiss) + iss_off),
                     self.mem_req.payload.length.eq(Mux(last_burst, remaining, self.burst))]
        req_fire = self.mem_req.valid & self.mem_req.ready
        iss_done = req_fire & last_burst
        with m.If(req_fire):
            with m.If(last_burst):
                m.d.sync += [iss_off.eq(0), fiss.eq(_wrap_inc(fiss, Q))]
            with m.Else():
                m.d.sync += iss_off.eq(iss_off + self.burst)
        m.d.sync += n_iss.eq(n_iss + commit_miss - iss_done)

        # ---------------------------------------------------------------- fetch: responses
        m.d.comb += self.mem_resp.ready.eq(1)
        w_fire = self.mem_resp.valid & (n_fq != 0)
        job_done = w_fire & (wr_off == W - 1)
        m.d.comb += [st_wr.addr.eq(pick(fq_s, fhead) + wr_off),
                     st_wr.data.eq(self.mem_resp.payload.data), st_wr.en.eq(w_fire)]
        with m.If(w_fire):
            with m.If(job_done):
                m.d.sync += [wr_off.eq(0), fhead.eq(_wrap_inc(fhead, Q))]
            with m.Else():
                m.d.sync += wr_off.eq(wr_off + 1)
        m.d.sync += [n_fq.eq(n_fq + commit_miss - job_done),
                     done.eq(done + job_done - (g_fire & ~g_hit))]

        # ---------------------------------------------------------------- counters
        stall = self.o_grant.ready & ~g_valid & (in_decision | (n_ung != 0))
        head_stalled = Signal()
        with m.If(g_fire):
            m.d.sync += head_stalled.eq(0)
        with m.Elif(stall):
            m.d.sync += head_stalled.eq(1)
        incs = {"hits": commit & d_hit, "misses": commit_miss, "words_fetched": w_fire,
                "prefetch_hits": g_fire & ~g_hit & ~head_stalled, "stall_cycles": stall}
        for name, inc in incs.items():
            counter = getattr(self, name)
            with m.If(self.clear_counters):
                m.d.sync += counter.eq(0)
            with m.Else():
                m.d.sync += counter.eq(counter + inc)
        return m
