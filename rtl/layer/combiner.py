"""The combiner: ``y[t] = rq_8(Σ g · o[t], M_y, S_y)`` for a batch of tokens (arithmetic.md §5).

Expert outputs arrive expert-major, so a token's ``k`` routed contributions (and the shared
expert's) come at different times, in any order, interleaved with other tokens. The unit keeps
one accumulator row per token (``t_max × d_model`` signed values), adds each contribution
``gate · o`` into its token's row, and on a flush streams ``y`` for tokens ``0 .. T-1``.

Interface
---------
``i_contrib`` (in stream, `contrib_layout`): ``{token, gate, data, last}``. One contribution is a
whole expert output vector ``o`` (int16, ``d_model`` values) of one token as ``d_model/lanes``
consecutive beats, lane 0 first, ``last`` on the final beat; ``gate`` is the unsigned weight
(routed ``g_j`` after routed scaling, or the shared-expert gate ``g_sh``; ``< 2^22``) and
``token`` the token's index in the batch. Every beat of a contribution carries the same
``token`` and ``gate``. ``acc[token] += gate · o``.

``i_flush`` (in stream, `flush_layout`): ``{n_tokens}``. Ends the batch: the unit streams ``y``
for tokens ``0 .. n_tokens-1`` on ``o_y``; the next contribution (or flush) starts a new batch,
and until then ``acc_rd`` reads the flushed batch's accumulators. ``n_tokens`` above ``t_max``
counts as ``t_max``; ``n_tokens = 0`` discards the batch without output (a *clear* command).
A contribution beat that transfers in the same cycle as the flush command still belongs to the
flushed batch.

``o_y`` (out stream, `y_layout`): ``{data, token, last}``, ``d_model/lanes`` beats per token, in
token order, ``last`` on each token's final beat; ``data`` is lanes × int8 ``y``.

``acc_rd`` (in ``{token, beat, en}``, out ``{data, touched}``): reads of the accumulator memory
while the unit is idle (no contribution in flight, no flush in progress: between batches), latency
1, both outputs held while ``en`` is low: beat ``beat`` (lanes ``beat·lanes ..``) of token
``token``'s accumulator, lanes × signed `acc_width`, valid if ``touched``; a token without
``touched`` got no contribution in the batch, its accumulator is 0 and ``data`` is stale (the
reader zeroes it where it is narrow, after its lane and byte multiplexers, rather than here at
``lanes · acc_width`` AND gates). It reads the last flushed batch until the next batch starts (the
host's ``READ_PARTIAL``). It shares the memory's one read port with the accumulate pipeline and
the flush, which take precedence: a read while the unit is busy returns no meaningful value (and
never disturbs the unit).

``y_mult`` (16 bits) and ``y_shift`` (6 bits, ``1..62``; 0 is outside the spec) are plain
inputs: ``M_y`` and ``S_y`` of the layer, held by the host-written register file of the top
level. The unit samples them when it accepts a flush command, so they may change at any other
time (also while the previous flush's last beats are still leaving).

Command protocol (`i_contrib.ready`, `i_flush.ready`)
-----------------------------------------------------
Both readies are one register (``flushing``), never a function of any ``valid``.

* ``ACCUM`` (after reset, and after a flush has issued its reads): ``i_contrib.ready = 1`` and
  ``i_flush.ready = 1``. Contributions go in at one beat per cycle, never stalled.
* ``FLUSH`` (from the cycle after a flush command is accepted): ``i_contrib.ready = 0`` and
  ``i_flush.ready = 0``. The unit waits for the accumulate pipeline to drain (at most 2
  cycles), reads the ``n_tokens · d_model/lanes`` words one per cycle (stalled only by ``o_y``
  back-pressure) into the output pipeline and returns to ``ACCUM`` once the last word has left
  the read stage. The next batch's contributions (and flush) may flow in while the output
  pipeline still drains the previous batch's last beats to ``o_y``.

A host that has sent a batch's last contribution may present the flush command in the next
cycle (or in the same one); nothing else orders the two streams.

Clearing: per-token *touched* bits
----------------------------------
Accumulator memory is never cleared. A register of ``t_max`` *touched* bits (reset to 0) says
which rows hold a value of the current batch, or after a flush of the flushed one: the end of a
flush sets ``stale``, and the first contribution beat or flush command accepted while ``stale``
clears every touched bit in one cycle (and ``stale``), so ``acc_rd`` can read the last batch until
the next one begins. A contribution to an untouched token writes ``gate · o`` instead of adding
(the memory's old content is ignored); its ``last`` beat marks the token touched, so the token's
next contribution adds. A flush outputs an untouched token's row as 0 (``rq_8(0) = 0``),
``acc_rd`` says it is untouched. Clearing thus costs no cycles; the price is ``t_max + 1``
flip-flops and a ``t_max``-to-1 bit multiplexer (three times). A token index at or above ``t_max``
is outside the contract (the memory address would alias).

Accumulator width
-----------------
One term ``g · o`` with ``0 <= g <= 2^22 - 1`` and ``-2^15 <= o <= 2^15 - 1`` lies in
``[-(2^22-1)·2^15, (2^22-1)·(2^15-1)]``, inside the signed 38-bit range ``[-2^37, 2^37)``. A sum
of ``n`` such terms lies in ``[-n·2^37, n·2^37)`` and fits ``38 + ceil(log2 n)`` signed bits.
``n = max_terms`` = ``top_k`` (+1 with a shared expert): 38 bits for Switch (n = 1), 40 for
Qwen2-MoE or DeepSeek-V2 with k = 2 (n = 3), 41 for k = 4 plus a shared expert (n = 5); the
spec's bound is ``16 + 22 + ceil(log2(k + 1))``. The sum is exact, as the golden model's int64
sum is, for every token that receives at most ``max_terms`` contributions; more wrap around.

Pipelines and timing
--------------------
Accumulate (read-modify-write, one beat per cycle, no stall ever):

1. accept: address ``token · (d_model/lanes) + beat`` → stage-1 registers;
2. stage 1: memory read issued; products ``gate · o`` (lanes × 22×16 bits) → stage-2 registers;
3. stage 2: ``sum = (touched ? old : 0) + product`` written back.

The read of stage 1 misses the write of stage 2 in the same cycle. When that write is to the
same address (one beat per token, i.e. ``lanes == d_model``, and consecutive contributions to one
token), a forwarding register holding the previous cycle's write supplies the value instead;
writes two or more cycles old are already in memory. The touched bit is read in stage 1 and
bypassed from stage 2 when stage 2 holds the same token's ``last`` beat. An accumulator word is
in memory 3 cycles after its beat was accepted.

Flush: issue (address counter, and the token's touched bit) → R: memory data → A: that data in
a register, zeroed for an untouched token → P: ``acc · M_y`` (exact, ``acc_width + 16`` bits)
→ Q: ``rshift(·, S_y)`` → O: ``sat_8``, the ``o_y`` payload register. A keeps the block RAM's
slow output and the wide product (several multipliers and adders) in separate cycles; together
they were the board's longest path. P, Q and O are the requantiser's own stages
(`moeforge.rtl.datapath.requantiser.RequantPipeline`), with ``token``/``last`` (and, from A on,
``M_y`` and ``S_y``) carried along beside them. Each stage loads when it is empty or the next
one loads, so ``o_y`` back-pressure stalls the flush without bubbles, and ``o_y.valid`` is a
register.

Cycles: a contribution takes ``d_model/lanes`` cycles. A flush accepted in cycle ``c`` issues its
first read in ``c+1`` (``c+2`` or ``c+3`` if a contribution beat was accepted in ``c-1`` or
``c``), its first ``o_y`` beat is valid `flush_latency` = 5 cycles after that first read, and
without back-pressure the beats follow one per cycle: the last is valid ``T · d_model/lanes + 5``
(up to ``+ 7``) cycles after the command. ``i_contrib.ready`` is low from ``c+1`` until 3 cycles
after the last read: ``T · d_model/lanes + 2`` (up to ``+ 4``) cycles.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moeforge.config import MAX_DIM, AccelConfig
from moeforge.spec.arith import GATE_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS, Y_BITS
from moeforge.checks import check_int
from moeforge.spec.image import accumulator_width

from ..datapath.requantiser import RequantPipeline

__all__ = ["Combiner", "contrib_layout", "flush_layout", "y_layout", "accumulator_width"]


def _index_bits(t_max: int) -> int:
    return max(1, (t_max - 1).bit_length())


def _times(value, k: int):
    """``value · k`` for a constant ``k >= 1`` as a sum of shifted copies of `value`, one per
    set bit of ``k``: index arithmetic such as ``token · beats_per_token``, which as a
    ``$mul`` would take hard multipliers whenever ``k`` is not a power of two."""
    terms = [value << i for i in range(k.bit_length()) if (k >> i) & 1]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def contrib_layout(*, t_max: int, lanes: int) -> data.StructLayout:
    """``i_contrib`` payload: ``token`` (index < t_max), ``gate`` (unsigned 22),
    ``data`` (lanes × signed 16), ``last``."""
    return data.StructLayout({
        "token": unsigned(_index_bits(t_max)),
        "gate": unsigned(GATE_BITS),
        "data": data.ArrayLayout(signed(OUT_BITS), lanes),
        "last": unsigned(1),
    })


def flush_layout(*, t_max: int) -> data.StructLayout:
    """``i_flush`` payload: ``n_tokens`` (0 .. t_max; 0 clears without output)."""
    return data.StructLayout({"n_tokens": unsigned(t_max.bit_length())})


def y_layout(*, t_max: int, lanes: int) -> data.StructLayout:
    """``o_y`` payload: ``data`` (lanes × signed 8), ``token``, ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(Y_BITS), lanes),
        "token": unsigned(_index_bits(t_max)),
        "last": unsigned(1),
    })


class Combiner(wiring.Component):
    """Gate-weighted sum of expert outputs per token, then ``rq_8`` (see the module docstring).

    Parameters
    ----------
    d_model : int
        Values per token, in [1, 65536].
    lanes : int
        Values per beat on every stream; must divide `d_model`.
    t_max : int
        Largest batch (``AccelConfig.token_buffer_depth``), in [1, 4096].
    max_terms : int
        Most contributions one token receives in a batch (``top_k``, +1 with a shared
        expert), in [1, 1024]; sets the accumulator width.
    src_loc_at : int
        Stack frames between the caller to name in Amaranth's unused-component warning and
        this constructor (`from_config` passes 1).

    Attributes
    ----------
    i_contrib : ``In(stream.Signature(contrib_layout(...)))``
    i_flush : ``In(stream.Signature(flush_layout(...)))``
    o_y : ``Out(stream.Signature(y_layout(...)))``
    acc_rd : ``In(wiring.Signature({"token": Out(...), "beat": Out(...), "en": Out(1),
    "data": In(ArrayLayout(signed(acc_width), lanes)), "touched": In(1)}))``
        The accumulators of the last batch (see the module docstring).
    y_mult : ``In(16)``, y_shift : ``In(6)``
        ``M_y`` and ``S_y``, sampled when a flush command is accepted.
    beats_per_token : int
        ``d_model // lanes``.
    acc_width : int
        Signed accumulator bits, `accumulator_width` (``max_terms``).
    flush_latency : int
        Cycles from a read issued by a flush to its ``o_y`` beat becoming valid (5).

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range or `lanes` does not divide `d_model`.
    """

    flush_latency = 5

    def __init__(self, *, d_model: int, lanes: int, t_max: int, max_terms: int,
                 src_loc_at: int = 0):
        check_int("d_model", d_model, 1, MAX_DIM)
        check_int("lanes", lanes, 1, d_model)
        if d_model % lanes:
            raise ValueError(f"lanes must divide d_model={d_model}, not {lanes!r}")
        check_int("t_max", t_max, 1, 4096)
        check_int("max_terms", max_terms, 1, 1024)
        self.d_model = d_model
        self.lanes = lanes
        self.t_max = t_max
        self.max_terms = max_terms
        self.beats_per_token = d_model // lanes
        self.acc_width = accumulator_width(max_terms)
        self.contrib_layout = contrib_layout(t_max=t_max, lanes=lanes)
        self.flush_layout = flush_layout(t_max=t_max)
        self.y_layout = y_layout(t_max=t_max, lanes=lanes)
        super().__init__({
            "i_contrib": In(stream.Signature(self.contrib_layout)),
            "i_flush": In(stream.Signature(self.flush_layout)),
            "o_y": Out(stream.Signature(self.y_layout)),
            "acc_rd": In(wiring.Signature({
                "token": Out(_index_bits(t_max)),
                "beat": Out(max(1, (self.beats_per_token - 1).bit_length())),
                "en": Out(1),
                "data": In(data.ArrayLayout(signed(self.acc_width), lanes)),
                "touched": In(1)})),
            "y_mult": In(MULT_BITS),
            "y_shift": In(SHIFT_BITS),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, lanes: int, src_loc_at: int = 0) -> "Combiner":
        """The combiner of `cfg`: ``d_model``, ``t_max = token_buffer_depth``,
        ``max_terms = top_k`` (+1 with a shared expert).

        Raises
        ------
        TypeError
            If `cfg` is not an `AccelConfig`.
        ValueError
            If `lanes` does not divide ``cfg.d_model``.
        """
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        return cls(d_model=cfg.d_model, lanes=lanes, t_max=cfg.token_buffer_depth,
                   max_terms=cfg.top_k + (1 if cfg.shared_d_ff else 0), src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        lanes, bpt, t_max = self.lanes, self.beats_per_token, self.t_max
        aw = self.acc_width
        depth = t_max * bpt
        addr_bits = max(1, (depth - 1).bit_length())
        beat_bits = max(1, (bpt - 1).bit_length())
        tok_bits = _index_bits(t_max)
        prod_bits = OUT_BITS + GATE_BITS

        word = data.ArrayLayout(signed(aw), lanes)
        # Depth at least 2: a one-word memory would have a zero-width address.
        m.submodules.acc_mem = mem = Memory(shape=word, depth=max(2, depth), init=[])
        wp = mem.write_port()
        rp = mem.read_port(domain="sync")          # not transparent: see the forwarding register

        touched = Signal(t_max)                    # rows holding a value of this batch
        stale = Signal()                           # ... of the flushed batch: clear at the next
        flushing = Signal()                        # FLUSH state (ACCUM otherwise)

        def touched_bit(token):
            return (touched >> token)[0]

        def address(token, beat):
            if bpt == 1:
                return token
            return (_times(token, bpt) + beat)[:addr_bits]

        # ---------------------------------------------------------------- accumulate pipeline
        ic = self.i_contrib
        in_beat = Signal(beat_bits) if bpt > 1 else None
        m.d.comb += ic.ready.eq(~flushing)
        accept = ic.valid & ic.ready

        s1_valid = Signal()
        s1_addr = Signal(addr_bits)
        s1_token = Signal(tok_bits)
        s1_last = Signal()
        s1_gate = Signal(GATE_BITS)
        s1_data = Signal(data.ArrayLayout(signed(OUT_BITS), lanes))
        m.d.sync += s1_valid.eq(accept)
        with m.If(accept):
            m.d.sync += [
                s1_addr.eq(address(ic.payload.token, in_beat)),
                s1_token.eq(ic.payload.token),
                s1_last.eq(ic.payload.last),
                s1_gate.eq(ic.payload.gate),
                s1_data.eq(ic.payload.data),
            ]
            if bpt > 1:
                m.d.sync += in_beat.eq(Mux(ic.payload.last, 0, in_beat + 1))

        # Stage 2's valid and address registers are the write port's enable and address.
        s2_valid = wp.en
        s2_addr = wp.addr
        s2_token = Signal(tok_bits)
        s2_last = Signal()
        s2_prod = Signal(data.ArrayLayout(signed(prod_bits), lanes))
        m.d.sync += [s2_valid.eq(s1_valid), s2_addr.eq(s1_addr), s2_token.eq(s1_token),
                     s2_last.eq(s1_last)]
        for i in range(lanes):
            m.d.sync += s2_prod[i].eq(s1_gate * s1_data[i])

        # The write of the previous cycle, which the read issued in that cycle did not see.
        fw_valid = Signal()
        fw_addr = Signal(addr_bits)
        fw_data = Signal(word)
        # The token's touched bit (else this is its first contribution: write, don't add),
        # read in stage 1; the `last` beat in stage 2 sets it at the same clock edge.
        s2_touched = Signal()
        m.d.sync += s2_touched.eq(touched_bit(s1_token) |
                                  (s2_valid & s2_last & (s2_token == s1_token)))
        forward = Signal()
        m.d.comb += forward.eq(fw_valid & (fw_addr == s2_addr))
        for i in range(lanes):
            old = Mux(s2_touched, Mux(forward, fw_data[i], rp.data[i]), 0)
            m.d.comb += wp.data[i].eq(old + s2_prod[i])
        m.d.sync += [fw_valid.eq(s2_valid), fw_addr.eq(s2_addr), fw_data.eq(wp.data)]
        # A new batch's first beat or flush clears the last batch's bits (the pipeline is empty
        # then: `stale` is set only at the end of a flush, and nothing is accepted during one).
        new_batch = Signal()
        m.d.comb += new_batch.eq(stale & ((ic.valid & ic.ready) | (self.i_flush.valid &
                                                                   self.i_flush.ready)))
        mark = Mux(s2_valid & s2_last, (Const(1, t_max) << s2_token)[:t_max], 0)
        m.d.sync += touched.eq(Mux(new_batch, 0, touched) | mark)
        with m.If(new_batch):
            m.d.sync += stale.eq(0)

        # ---------------------------------------------------------------- flush
        fl = self.i_flush
        oy = self.o_y
        m.d.comb += fl.ready.eq(~flushing)
        flush_accept = fl.valid & fl.ready
        n_req = fl.payload.n_tokens
        # n_tokens above t_max counts as t_max (no clamp needed if the field cannot exceed it).
        n_eff = n_req if t_max == (1 << len(n_req)) - 1 else Mux(n_req > t_max, t_max, n_req)
        y_mult = Signal(MULT_BITS)
        y_shift = Signal(SHIFT_BITS)
        f_left = Signal(range(depth + 1))          # reads still to issue
        f_token = Signal(tok_bits)
        f_beat = Signal(beat_bits) if bpt > 1 else None
        f_last = (f_beat == bpt - 1) if bpt > 1 else Const(1, 1)
        with m.If(flush_accept):
            m.d.sync += [flushing.eq(1), f_left.eq(_times(n_eff, bpt)),
                         f_token.eq(0), y_mult.eq(self.y_mult), y_shift.eq(self.y_shift)]
            if bpt > 1:
                m.d.sync += f_beat.eq(0)

        # Stage valids and enables: a stage loads when it is empty or the next one loads.
        r_valid, a_valid, p_valid, q_valid = Signal(), Signal(), Signal(), Signal()
        r_en, a_en, p_en, q_en, o_en = Signal(), Signal(), Signal(), Signal(), Signal()
        m.d.comb += [
            o_en.eq(~oy.valid | oy.ready),
            q_en.eq(~q_valid | o_en),
            p_en.eq(~p_valid | q_en),
            a_en.eq(~a_valid | p_en),
            r_en.eq(~r_valid | a_en),
        ]
        drained = ~s1_valid & ~s2_valid
        issue = Signal()
        m.d.comb += issue.eq(flushing & drained & (f_left != 0) & r_en)

        # The read port serves stage 1 of the accumulate pipeline, the flush once that
        # pipeline has drained (stage 1 then stays empty until the flush has issued its reads),
        # and `acc_rd` when neither needs it (between batches): one port, no second copy of the
        # memory in block RAM.
        ar = self.acc_rd
        with m.If(flushing & ~s1_valid):
            m.d.comb += [rp.addr.eq(address(f_token, f_beat)), rp.en.eq(r_en)]
        with m.Elif(s1_valid):
            m.d.comb += [rp.addr.eq(s1_addr), rp.en.eq(1)]
        with m.Else():
            # token · bpt + beat also for bpt = 1, where beat is 0 (one beat per token)
            m.d.comb += [rp.addr.eq((_times(ar.token, bpt) + ar.beat)[:addr_bits]),
                         rp.en.eq(ar.en)]

        # Issue → read stage (rp.data, and the token's touched bit).
        r_touched, r_token, r_last = Signal(), Signal(tok_bits), Signal()
        with m.If(r_en):
            m.d.sync += r_valid.eq(issue)
        with m.If(issue):
            m.d.sync += [f_left.eq(f_left - 1), r_touched.eq(touched_bit(f_token)),
                         r_token.eq(f_token), r_last.eq(f_last)]
            with m.If(f_last):
                m.d.sync += f_token.eq(f_token + 1)
            if bpt > 1:
                m.d.sync += f_beat.eq(Mux(f_last, 0, f_beat + 1))
        # Every read issued (or none asked for) and the pipeline drained: the batch is over.
        with m.If(flushing & drained & (f_left == 0)):
            m.d.sync += stale.eq(1)
            with m.If(~r_valid):
                m.d.sync += flushing.eq(0)

        # A: the read data in a register, an untouched token's row as 0. The block RAM's output
        # is slow, and the product after it is wide (several multipliers and adders): apart,
        # each fits a cycle at the board's clock; together they were the design's longest path.
        # M_y and S_y ride along: the flush ends once its last read has left R, and the next
        # flush may change y_mult and y_shift while o_y back-pressure still holds a beat here.
        # (one signal a line: Amaranth names only the last of a tuple assignment)
        a_acc = Signal(word)
        a_mult = Signal(MULT_BITS)
        a_shift = Signal(SHIFT_BITS)
        a_token = Signal(tok_bits)
        a_last = Signal()
        with m.If(a_en):
            m.d.sync += [a_valid.eq(r_valid), a_token.eq(r_token), a_last.eq(r_last),
                         a_mult.eq(y_mult), a_shift.eq(y_shift)]
            for i in range(lanes):
                m.d.sync += a_acc[i].eq(Mux(r_touched, rp.data[i], 0))

        # rq_8(acc, M_y, S_y) in three stages, `RequantPipeline`'s: P: acc · M (exact in
        # acc_width + 16 signed bits), Q: rshift, O: sat_8 into o_y; S_y, token and last ride
        # along (S_y in a register of P too: A may take the next flush's values meanwhile).
        rq = RequantPipeline(lanes=lanes, acc_bits=aw, out_bits=Y_BITS,
                             names=("p_prod", None, "q_round"), packed=True)
        p_shift, p_token, p_last = Signal(SHIFT_BITS), Signal(tok_bits), Signal()
        with m.If(p_en):
            m.d.sync += p_valid.eq(a_valid)
            m.d.sync += [p_shift.eq(a_shift), p_token.eq(a_token), p_last.eq(a_last)]
            rq.product(m, a_acc, a_mult, p_shift)

        q_token, q_last = Signal(tok_bits), Signal()
        with m.If(q_en):
            m.d.sync += [q_valid.eq(p_valid), q_token.eq(p_token), q_last.eq(p_last)]
            rq.round(m)

        with m.If(o_en):
            m.d.sync += [oy.valid.eq(q_valid), oy.payload.token.eq(q_token),
                         oy.payload.last.eq(q_last)]
            rq.output(m, oy.payload.data)

        # ---------------------------------------------------------------- acc_rd
        # (its reads go through the read port above while the unit is idle)
        with m.If(ar.en):
            m.d.sync += ar.touched.eq(touched_bit(ar.token))
        for i in range(lanes):
            m.d.comb += ar.data[i].eq(rp.data[i])
        return m
