"""Simulation model of off-chip memory: burst reads with a latency and a bandwidth limit.

It stands for the board RAM or the host link behind the expert cache in simulations: the host
writes expert images through ``wr``; the cache reads them with burst requests.

Interface
---------
``i_req`` (in stream ``{addr, length}``): read ``length`` words from word address ``addr``
(``length = 0`` is taken and dropped; addresses past ``depth`` are outside the contract). Up to
``queue_depth`` requests wait in a FIFO, each counting its latency down from its acceptance, so
the latencies of queued requests overlap with the streaming of earlier ones.

``o_resp`` (out stream ``{data}``): the words of the requests, in order. Honours back-pressure.

``wr`` (in ``addr``, ``data``, ``en``): the host's write port, one word per cycle; writes at or past
``depth`` are ignored. A write to a word being streamed in the same cycle is outside the contract.

Cycle model
-----------
A request accepted in cycle ``c`` may offer its first word in cycle ``c + latency`` (not before
the previous request's last word has left). Throughput is limited by a credit counter: credits
are in units of ``1/(8·q)`` bytes for ``bytes_per_cycle = p/q`` (a `fractions.Fraction` or an
int), i.e. ``1/q`` bits; each cycle adds ``8·p`` credits and a word leaves only when the counter
holds at least ``word_bits·q`` (one word's worth), which it then spends. While words stream, the
remainder carries over, so the average rate is exact; without a word waiting for credit (idle, or
a word held by back-pressure) the counter saturates at one word's worth, so idle or stalled
cycles do not save up a burst. A ``bytes_per_cycle`` of
``word_bits/8`` or more means one word per cycle (it is clipped: the credit check disappears).

On an idle memory, word ``j`` of a request accepted in cycle ``c`` transfers (with ``o_resp.ready``
high) in cycle ``c + latency + ceil(j · word_bits · q / (8·p))``: `word_offsets`, `cycles`.

The data path reads the memory asynchronously (the head word is ``mem[addr + offset]``),
which suits a simulation model; it is not meant for synthesis into a board design (it lives in
`moeforge.sim` for that reason: a board plugs real memory into the SoC's memory port).
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Rational

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.rtl.memory.expert_cache import pick, write_at
from moeforge.checks import check_int

__all__ = ["BackingMemory"]


class BackingMemory(wiring.Component):
    """Off-chip memory model; see the module docstring.

    Parameters
    ----------
    depth : int
        Words, in [1, 2^24].
    word_bits : int
        Bits of a word, in [1, 4096].
    latency : int
        Cycles from a request's acceptance to its first word being offered, in [1, 1024].
    bytes_per_cycle : int or fractions.Fraction
        Throughput, positive; values above ``word_bits/8`` are clipped to one word per cycle.
    max_length : int
        Longest request in words, in [1, 4096] (sets the width of ``i_req.length``).
    addr_width : int, optional
        Width of ``i_req.addr`` and ``wr.addr``, at least ``ceil_log2(depth)`` (the default),
        at most 48.
    queue_depth : int
        Requests the FIFO holds, in [1, 64].

    Raises
    ------
    TypeError, ValueError
        For a parameter of the wrong type or out of range.
    """

    def __init__(self, *, depth: int, word_bits: int, latency: int, bytes_per_cycle,
                 max_length: int = 16, addr_width: int | None = None, queue_depth: int = 4,
                 src_loc_at: int = 0):
        check_int("depth", depth, 1, 1 << 24)
        check_int("word_bits", word_bits, 1, 4096)
        check_int("latency", latency, 1, 1024)
        check_int("max_length", max_length, 1, 4096)
        check_int("queue_depth", queue_depth, 1, 64)
        if isinstance(bytes_per_cycle, bool) or not isinstance(bytes_per_cycle, Rational):
            raise TypeError(f"bytes_per_cycle must be a positive int or Fraction, "
                            f"not {bytes_per_cycle!r}")
        bpc = Fraction(bytes_per_cycle)
        if bpc <= 0 or bpc.denominator > 1 << 16:
            raise ValueError(f"bytes_per_cycle must be positive with a denominator of at most "
                             f"2^16, not {bytes_per_cycle!r}")
        min_aw = max(1, ceil_log2(depth))
        if addr_width is None:
            addr_width = min_aw
        check_int("addr_width", addr_width, min_aw, 48)
        self.depth, self.word_bits, self.latency = depth, word_bits, latency
        self.max_length, self.addr_width, self.queue_depth = max_length, addr_width, queue_depth
        self.bytes_per_cycle = bpc
        self.full_rate = 8 * bpc >= word_bits            # one word per cycle: no credit check
        # credits in 1/q bits: +gain each cycle, a word costs `cost`
        self.gain = 8 * bpc.numerator
        self.cost = word_bits * bpc.denominator
        self.req_layout = data.StructLayout({"addr": addr_width,
                                             "length": unsigned(ceil_log2(max_length + 1))})
        self.resp_layout = data.StructLayout({"data": word_bits})
        super().__init__({
            "i_req": In(stream.Signature(self.req_layout)),
            "o_resp": Out(stream.Signature(self.resp_layout)),
            "wr": In(wiring.Signature({"addr": Out(addr_width), "data": Out(word_bits),
                                       "en": Out(1)})),
        }, src_loc_at=1 + src_loc_at)

    # ------------------------------------------------------------------ cycle model
    def word_offsets(self, n_words: int) -> list[int]:
        """Cycles from a request's acceptance to the transfer of each of its `n_words` words, on
        an idle memory with ``o_resp.ready`` always high."""
        check_int("n_words", n_words, 0, self.max_length)
        if self.full_rate:
            return [self.latency + j for j in range(n_words)]
        return [self.latency + -(-j * self.cost // self.gain) for j in range(n_words)]

    def cycles(self, n_words: int) -> int:
        """Cycles to stream `n_words` (>= 1) words of one request on an idle memory, from its
        acceptance cycle to its last word's transfer cycle, both counted."""
        check_int("n_words", n_words, 1, self.max_length)
        return self.word_offsets(n_words)[-1] + 1

    def schedule(self, requests, ready=None) -> list[list[int]]:
        """The cycles in which each request's words transfer: the cycle model of the hardware.

        Parameters
        ----------
        requests : sequence of (int, int)
            ``(accept_cycle, length)`` of each request, in order of acceptance, with the memory
            idle (nothing queued, credit full) from cycle 0 until the first acceptance.
        ready : sequence of bool, optional
            ``o_resp.ready`` in each cycle from cycle 0 (cycles past its end: high); always high
            by default.

        Returns
        -------
        list of list of int
            For each request, the transfer cycle of each of its words.
        """
        cost, gain, L = self.cost, self.gain, self.latency
        credit, off, idx, t = cost, 0, 0, 0
        out = [[] for _ in requests]
        while idx < len(requests):
            accept, length = requests[idx]
            h_ready = accept + L <= t
            pending = h_ready and length > 0
            valid = pending and (self.full_rate or credit >= cost)
            fire = valid and (ready is None or t >= len(ready) or bool(ready[t]))
            if fire:
                out[idx].append(t)
            if not self.full_rate:
                if fire:
                    credit = credit - cost + gain
                elif credit >= cost:
                    credit = cost
                elif pending:
                    credit += gain
                else:
                    credit = min(credit + gain, cost)
            if h_ready and (length == 0 or (fire and off == length - 1)):
                idx, off = idx + 1, 0
            elif fire:
                off += 1
            t += 1
        return out

    # ------------------------------------------------------------------ hardware
    def elaborate(self, platform):
        m = Module()
        Q, L = self.queue_depth, self.latency
        m.submodules.mem = mem = Memory(shape=self.word_bits, depth=max(2, self.depth), init=[])
        wp = mem.write_port()
        rp = mem.read_port(domain="comb")
        in_range = self.wr.addr < self.depth
        m.d.comb += [wp.addr.eq(self.wr.addr), wp.data.eq(self.wr.data),
                     wp.en.eq(self.wr.en & in_range)]

        # request FIFO: each entry counts its latency down from acceptance
        e_addr = [Signal(self.addr_width, name=f"q_addr{q}") for q in range(Q)]
        e_len = [Signal.like(self.i_req.payload.length, name=f"q_len{q}") for q in range(Q)]
        e_wait = [Signal(range(max(2, L)), name=f"q_wait{q}") for q in range(Q)]
        head = Signal(range(max(2, Q)))
        tail = Signal(range(max(2, Q)))
        count = Signal(range(Q + 1))
        offset = Signal.like(self.i_req.payload.length)

        def wrap_inc(v):
            return Mux(v == Q - 1, 0, v + 1)

        for q in range(Q):
            with m.If(e_wait[q] != 0):
                m.d.sync += e_wait[q].eq(e_wait[q] - 1)
        accept = self.i_req.valid & self.i_req.ready
        m.d.comb += self.i_req.ready.eq(count != Q)
        with m.If(accept):
            write_at(m, e_addr, tail, self.i_req.payload.addr)
            write_at(m, e_len, tail, self.i_req.payload.length)
            write_at(m, e_wait, tail, L - 1)
            m.d.sync += tail.eq(wrap_inc(tail))

        # head request: offer words once its latency is over and credit allows
        h_ready = (count != 0) & (pick(e_wait, head) == 0)
        h_len = pick(e_len, head)
        if self.full_rate:
            credit_ok = 1
        else:
            credit = Signal(range(self.cost + self.gain), init=self.cost)
            credit_ok = credit >= self.cost
        word_pending = h_ready & (h_len != 0)
        m.d.comb += [rp.addr.eq(pick(e_addr, head) + offset),
                     self.o_resp.payload.data.eq(rp.data),
                     self.o_resp.valid.eq(word_pending & credit_ok)]
        fire = self.o_resp.valid & self.o_resp.ready
        pop = h_ready & ((h_len == 0) | (fire & (offset == h_len - 1)))
        with m.If(pop):
            m.d.sync += [offset.eq(0), head.eq(wrap_inc(head))]
        with m.Elif(fire):
            m.d.sync += offset.eq(offset + 1)
        m.d.sync += count.eq(count + accept - pop)
        if not self.full_rate:
            cost, gain = self.cost, self.gain
            with m.If(fire):                     # keep the remainder: exact average rate
                m.d.sync += credit.eq(credit - cost + gain)
            with m.Elif(credit >= cost):         # back-pressure or idle: one word's worth
                m.d.sync += credit.eq(cost)
            with m.Elif(word_pending):           # a word waits for credit: carry on counting
                m.d.sync += credit.eq(credit + gain)
            with m.Else():
                m.d.sync += credit.eq(Mux(credit + gain > cost, cost, credit + gain))
        return m
