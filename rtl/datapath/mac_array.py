"""The MAC array: ``rows × cols`` int8 × int8 multipliers, int32 accumulation, weight-stationary.

``MACArray`` is the compute core of `GemmEngine` (``rtl/datapath/gemm.py``) and `ExpertFFN`
(``rtl/expert/expert_ffn.py``). It owns the **weight buffer** and the multiply-accumulate pipeline; the
engines around it own the sequencing (which weights are loaded where, which token is computed
when) and the activation buffers it reads ``x`` from.

Weight buffer
-------------
One memory per array row ``r`` (``rows`` memories), each ``depth`` words of ``cols`` int8
(`ArrayLayout`), written one word per cycle through ``wr`` (``{row, addr, data, en}``) and read
all at the same address in every compute cycle: one read is ``rows × cols`` weights, one per
multiplier. The engine loads a *block* of weight rows once (through its ``cols``-byte weight
port, ``rows·K/cols`` cycles per ``rows`` output rows) and then streams every token of the
batch past it: the weights are read from the weight port **once per batch** and reused from the
buffer for each of the batch's ``T`` tokens. This is where the weight reuse of the accelerator
happens; with ``rows`` output rows per cycle but only a ``cols``-byte load port, the array can
stay busy only if a block is reused for at least ``rows`` tokens (see the engines).

Compute
-------
An *op* (``i_op`` beat) is one cycle of the array: ``rows`` dot products of ``cols`` terms,

    ``sum[r] = Σ_c W_buf[r][waddr][c] · x[c]``,  ``x = x_rd.data`` read at ``xaddr``,

added to ``rows`` int32 accumulators (``first``: start from 0). The op marked ``last`` ends the
dot products: the ``rows`` totals leave on ``o_acc`` with the op's ``tag`` (an opaque payload the
engine uses to label results: token, row block, ...). A length-``K`` dot product is ``K/cols``
ops, ``first`` on the first and ``last`` on the final one.

Pipeline (every stage its own valid and enable, so bubbles are squeezed out; only ``o_acc``
back-pressure stalls the array)::

    op ──▶ [1] weight + x memory read ──▶ [1b] operand registers ──▶ [2] rows×cols products
          (int16) ──▶ [3] row sums ──▶ [4] accumulators; on ``last`` the output register
          (= ``o_acc.payload``)

Stage 1b copies the block RAMs' read data into registers, so a multiplier's inputs come from
flip-flops placed beside it rather than from a block RAM's slow clock-to-output across the
fabric (the path ``xbuf DOB -> s2_p`` was the ECP5 board builds' critical path). An op
transferred in cycle ``c`` has its products in stage 2 in ``c+3``; a ``last`` op's result is
valid on ``o_acc`` from cycle ``c + latency`` (``latency = 5``). The data registers (operands,
products, sums, tags) have no reset: only the valid bits do, and a stage's data counts only
when its valid bit is set, so the reset net reaches a handful of flip-flops, not thousands. ``i_op.ready`` is combinational
from ``o_acc.ready`` through the stage valids (stream rule 4 allows it); ``o_acc.valid`` is a
register. Non-``last`` ops keep flowing while ``o_acc`` waits; a ``last`` op waits in stage 3.

``x_rd`` is a plain synchronous read port the array drives (``addr``, ``en``) and whose data it
expects in the next cycle (held while ``en`` is low), e.g. an `amaranth.lib.memory` read port
of the engine's token buffer; ``x_rd.addr`` is ``i_op.payload.xaddr`` and ``x_rd.en`` is
``i_op.ready``, so an engine with two x sources selects the data by a register loaded with
``x_rd.en``.

Accumulators are ``signed(32)`` and wrap; ``|acc| <= 128·128·K < 2^31`` for ``K <= 2^17``
(docs/arithmetic.md §4), so they never do on the device's shapes.

Utilisation counters
--------------------
``busy_cycles`` counts cycles in which an op passes the multiplier stage (``rows·cols`` useful
MACs), ``total_cycles`` every cycle; both only while ``active`` is high, and both restart from 0
in the cycle ``active`` rises (a new job). They hold their values while ``active`` is low, so
the host reads the last job's figures after it ends. 32 bits each.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.spec.arith import ACC_BITS, PROD_BITS, WEIGHT_BITS
from moeforge.checks import check_int

__all__ = ["MACArray", "COUNTER_BITS", "check_int", "index_shape", "weight_word"]

COUNTER_BITS = 32


def index_shape(count: int) -> Shape:
    """Unsigned shape for indices ``0 .. count-1``: at least 1 bit (Verilog has no 0-bit ports)."""
    return unsigned(max(1, ceil_log2(count)))


def weight_word(cols: int) -> data.ArrayLayout:
    """One weight (or activation) word: ``cols`` int8, element 0 in the low byte."""
    return data.ArrayLayout(signed(WEIGHT_BITS), cols)


class MACArray(wiring.Component):
    """``rows × cols`` int8 MAC array with its weight buffer; see the module docstring.

    Parameters
    ----------
    rows, cols : int
        Array shape ``R × C`` (``AccelConfig.mac_rows``, ``mac_cols``), each in [1, 64].
    depth : int
        Words per row memory of the weight buffer (each word ``cols`` int8), in [1, 2^20].
    x_addr_width : int
        Width of the ``x_rd`` address, in [1, 32].
    tag_shape : shape-castable
        Payload carried from an op to its result (e.g. a `data.StructLayout`).

    Attributes
    ----------
    wr : ``In(Signature({row, addr, data, en}))``
        Weight buffer write port: word ``data`` into row ``row``'s memory at ``addr`` when ``en``.
    i_op : ``In(stream.Signature(op_layout))``
        ``{waddr, xaddr, first, last, tag}``, one op per cycle.
    x_rd : ``Out(Signature({addr: Out, en: Out, data: In}))``
        Read port of the activation memory (latency 1).
    o_acc : ``Out(stream.Signature(out_layout))``
        ``{data: rows × signed(32), tag}``, one beat per ``last`` op.
    active : ``In(1)``
        High during a job: the counters run (and restart when it rises).
    busy_cycles, total_cycles : ``Out(32)``
    latency : int
        Cycles from an op's transfer to its result on ``o_acc`` (5).

    Raises
    ------
    TypeError, ValueError
        For a parameter of the wrong type or out of range, naming it and its value.
    """

    latency = 5

    def __init__(self, *, rows: int, cols: int, depth: int, x_addr_width: int,
                 tag_shape=unsigned(1)):
        check_int("rows", rows, 1, 64)
        check_int("cols", cols, 1, 64)
        check_int("depth", depth, 1, 1 << 20)
        check_int("x_addr_width", x_addr_width, 1, 32)
        self.rows, self.cols, self.depth = rows, cols, depth
        self.x_addr_width = x_addr_width
        self.tag_shape = tag_shape
        self.waddr_shape = index_shape(depth)
        self.sum_bits = PROD_BITS + ceil_log2(cols)
        self.op_layout = data.StructLayout({
            "waddr": self.waddr_shape, "xaddr": unsigned(x_addr_width),
            "first": 1, "last": 1, "tag": tag_shape})
        self.out_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), rows), "tag": tag_shape})
        super().__init__({
            "wr": In(wiring.Signature({
                "row": Out(index_shape(rows)), "addr": Out(self.waddr_shape),
                "data": Out(weight_word(cols)), "en": Out(1)})),
            "i_op": In(stream.Signature(self.op_layout)),
            "x_rd": Out(wiring.Signature({
                "addr": Out(x_addr_width), "en": Out(1), "data": In(weight_word(cols))})),
            "o_acc": Out(stream.Signature(self.out_layout)),
            "active": In(1),
            "busy_cycles": Out(COUNTER_BITS),
            "total_cycles": Out(COUNTER_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        op = self.i_op
        out = self.o_acc

        # Stage enables: a stage loads when it is empty or the next one loads. Stage 4 (the
        # accumulators) takes every op except a `last` one while the output register is full.
        v1, v1b = Signal(name="s1_valid"), Signal(name="s1b_valid")
        v2, v3 = Signal(name="s2_valid"), Signal(name="s3_valid")
        en1, en1b, en2, en3, en4 = (Signal(name=f"s{i}_en") for i in ("1", "1b", "2", "3", "4"))
        last3 = Signal(name="s3_last", reset_less=True)
        m.d.comb += [
            en4.eq(~(v3 & last3) | ~out.valid | out.ready),
            en3.eq(~v3 | en4),
            en2.eq(~v2 | en3),
            en1b.eq(~v1b | en2),
            en1.eq(~v1 | en1b),
            op.ready.eq(en1),
        ]

        def data_reg(shape, name):
            return Signal(shape, name=name, reset_less=True)

        # Stage 1: the weight buffer (one memory per row) and the x memory, read at the op's
        # addresses; the read data registers are this stage's registers.
        w_data = []
        for r in range(R):
            mem = Memory(shape=weight_word(C), depth=max(2, self.depth), init=[])
            m.submodules[f"wbuf{r}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [
                wp.addr.eq(self.wr.addr), wp.data.eq(self.wr.data),
                wp.en.eq(self.wr.en & (self.wr.row == r)),
                rp.addr.eq(op.payload.waddr), rp.en.eq(en1),
            ]
            w_data.append(rp.data)
        m.d.comb += [self.x_rd.addr.eq(op.payload.xaddr), self.x_rd.en.eq(en1)]
        first1, last1 = data_reg(1, "s1_first"), data_reg(1, "s1_last")
        tag1 = data_reg(self.tag_shape, "s1_tag")
        with m.If(en1):
            m.d.sync += v1.eq(op.valid)
            m.d.sync += [first1.eq(op.payload.first), last1.eq(op.payload.last),
                         tag1.eq(op.payload.tag)]

        # Stage 1b: the operands in flip-flops.
        w_q = [data_reg(weight_word(C), f"s1b_w{r}") for r in range(R)]
        x_q = data_reg(weight_word(C), "s1b_x")
        first1b, last1b = data_reg(1, "s1b_first"), data_reg(1, "s1b_last")
        tag1b = data_reg(self.tag_shape, "s1b_tag")
        with m.If(en1b):
            m.d.sync += v1b.eq(v1)
            m.d.sync += [first1b.eq(first1), last1b.eq(last1), tag1b.eq(tag1), x_q.eq(self.x_rd.data)]
            m.d.sync += [w_q[r].eq(w_data[r]) for r in range(R)]

        # Stage 2: rows × cols products.
        prod = [[data_reg(signed(PROD_BITS), f"s2_p{r}_{c}") for c in range(C)] for r in range(R)]
        first2, last2 = data_reg(1, "s2_first"), data_reg(1, "s2_last")
        tag2 = data_reg(self.tag_shape, "s2_tag")
        with m.If(en2):
            m.d.sync += v2.eq(v1b)
            m.d.sync += [first2.eq(first1b), last2.eq(last1b), tag2.eq(tag1b)]
            for r in range(R):
                for c in range(C):
                    m.d.sync += prod[r][c].eq(w_q[r][c] * x_q[c])

        # Stage 3: per-row sums (balanced adder tree).
        sums = [data_reg(signed(self.sum_bits), f"s3_sum{r}") for r in range(R)]
        first3 = data_reg(1, "s3_first")
        tag3 = data_reg(self.tag_shape, "s3_tag")
        with m.If(en3):
            m.d.sync += v3.eq(v2)
            m.d.sync += [first3.eq(first2), last3.eq(last2), tag3.eq(tag2)]
            for r in range(R):
                m.d.sync += sums[r].eq(_tree_sum(prod[r]))

        # Stage 4: accumulate (from 0 on a `first` op, so the accumulators need no reset); a
        # `last` op also loads the output register.
        acc = [data_reg(signed(ACC_BITS), f"acc{r}") for r in range(R)]
        acc_next = [Signal(signed(ACC_BITS), name=f"acc_next{r}") for r in range(R)]
        for r in range(R):
            m.d.comb += acc_next[r].eq((sums[r] + Mux(first3, 0, acc[r]))[:ACC_BITS])
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(v3 & en4):
            m.d.sync += [acc[r].eq(acc_next[r]) for r in range(R)]
            with m.If(last3):
                m.d.sync += out.valid.eq(1)
                m.d.sync += out.payload.tag.eq(tag3)
                m.d.sync += [out.payload.data[r].eq(acc_next[r]) for r in range(R)]

        # Utilisation counters.
        was_active = Signal(name="was_active")
        m.d.sync += was_active.eq(self.active)
        busy = v1b & en2
        with m.If(self.active & ~was_active):
            m.d.sync += [self.total_cycles.eq(1), self.busy_cycles.eq(busy)]
        with m.Elif(self.active):
            m.d.sync += [self.total_cycles.eq(self.total_cycles + 1),
                         self.busy_cycles.eq(self.busy_cycles + busy)]
        return m


def _tree_sum(values):
    """Balanced binary adder tree (Amaranth widens each sum by one bit)."""
    values = list(values)
    while len(values) > 1:
        nxt = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0]
