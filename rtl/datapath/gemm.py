"""The GEMM engine: ``Y[t, n] = Σ_k X[t, k] · W[n, k]`` on the weight-stationary MAC array.

For a batch of ``T`` tokens (``1 <= T <= t_max``), ``N`` output rows and ``K`` inputs, with int8
``X`` and ``W`` and exact int32 results. ``W`` is read through a synchronous **weight read port**
(``w_rd``, one ``cols``-int8 word per cycle, latency 1) **exactly once per job**, however many
tokens the job has.

The engine is a unit of its own (``moeforge verilog --unit gemm``), where this weight-stationary
schedule is verified and its MAC utilisation measured; its bench serves ``w_rd`` from a plain
memory (`sim.weight_memory.WeightMemoryHarness`). The accelerator instantiates no
`GemmEngine`: its expert engine (`ExpertFFN`) runs its own token-major schedule on its own
`MACArray`, and the expert cache serves that engine's weight port.

Loop order and weight reuse
---------------------------
``R = rows``, ``C = cols``, ``S = K / C`` slices per row, a *group* is ``R`` consecutive output
rows (``n // R``), a *block* is ``group_rows`` groups (``G``; default 1). Both ``N % (G·R) == 0``
and ``K % C == 0`` are required.

* **Loader.** Reads the ``N·S`` words of ``W`` in image order (row-major, see below) and writes
  them into the `MACArray`'s weight buffer, block by block, into two regions of ``G·S`` words
  per row memory (one region when there is only one block): block ``b`` goes to region
  ``b mod 2``. It may start block ``b`` once block ``b - 2`` is *retired* (its last op
  issued), so it loads block ``b + 1`` while block ``b`` computes: **double buffering**.
* **Compute.** ``for block b: for token t < T: for group g < G: for slice s < S`` one op
  (``R × C`` MACs): ``R`` dot products over ``C`` inputs, accumulated over the ``S`` slices.
  Block ``b``'s weights are read from the buffer once for *each* token: the reuse. A group
  may compute as soon as it is loaded (token 0 follows the loader's wavefront) and a token as
  soon as its ``S`` slices are in the token buffer (compute overlaps the ``i_x`` stream).
* **Cycles** (no stalls): loading a block takes ``G·R·S`` cycles, computing it ``T·G·S``, so
  the loads hide behind the compute and the array is **fully busy once T >= R** (the rows of a
  group are loaded one after the other through the ``C``-byte port, and each is then used for
  ``T`` tokens). Then a job takes about ``G·R·S - (G-1)·S + T·N·S/R + latency`` cycles: only
  the first block's load is exposed (``R·S`` cycles with ``G = 1``), minus the ops token 0 does
  while following it. Load-bound (``T < R``): about ``N·S + T·G·S + latency``.
  `GemmEngine.cycles` replays the schedule (exact to a cycle, or up to ~1 % over when loads
  and compute are balanced, ``T = R``); the tests check every job against it as a bound.

Interface
---------
``i_job`` (in stream): ``{n_tokens, w_base}``. Starts a job (accepted only when idle:
``i_job.ready`` is low while a job runs): ``T = n_tokens`` tokens (``1 .. t_max``; 0 is
accepted and ignored), ``W`` at word addresses ``w_base + i`` of the weight port.

``i_x`` (in stream): ``{data: C × int8, last}``: token ``t``'s ``K`` values as ``S``
consecutive beats (element ``s·C + c`` in lane ``c`` of beat ``s``), ``last`` on each token's
final beat; tokens ``0 .. T-1`` in order, accepted only during a job (``ready`` low otherwise,
and after the job's ``T``-th token). A token with other than ``S`` beats is outside the contract.
The beats are stored in the token buffer (``t_max·S`` words of ``C`` int8).

``w_rd`` (out: ``addr``, ``en``; in: ``data``): the weight read port; ``data`` is the word at the
``addr`` of the previous cycle in which ``en`` was high. Word ``n·S + s`` (from ``w_base``) holds
``W[n, s·C : (s+1)·C]``, lane ``c`` = byte ``c`` (bits ``8c .. 8c+7``, two's complement).

``o_y`` (out stream): ``{data: R × int32, token, block, last}``: ``Y[token, block·R + r]`` in
lane ``r``; ``block`` is the row group ``n // R``. Order: block-major (blocks of ``G`` groups),
then token, then group: with ``G = 1``, all ``T`` tokens of rows ``0..R-1``, then of rows
``R..2R-1``, ...; with ``G·R = N``, token-major. ``last`` marks the job's final beat, after which
the engine accepts the next job.

``busy_cycles``, ``total_cycles``: the MAC array's counters over the last job (from the cycle
after ``i_job`` transferred to the cycle the ``last`` beat transferred).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.checks import check_int
from .mac_array import ACC_BITS, COUNTER_BITS, MACArray, index_shape, weight_word

__all__ = ["GemmEngine", "gemm_image"]


def gemm_image(w, cols: int) -> list[int]:
    """Words of the weight port image of ``W`` (an ``[N, K]`` int8 tensor or nested list).

    Word ``n·S + s`` is ``W[n, s·C:(s+1)·C]`` packed little-endian (lane ``c`` in byte ``c``).
    """
    rows = w.tolist() if hasattr(w, "tolist") else [list(r) for r in w]
    out = []
    for row in rows:
        if len(row) % cols:
            raise ValueError(f"row length {len(row)} is not a multiple of cols={cols}")
        for s in range(0, len(row), cols):
            word = 0
            for c, v in enumerate(row[s:s + cols]):
                if not -128 <= int(v) <= 127:
                    raise ValueError(f"weight {v!r} is not an int8")
                word |= (int(v) & 0xFF) << (8 * c)
            out.append(word)
    return out


class GemmEngine(wiring.Component):
    """Batched int8 GEMM on a ``rows × cols`` MAC array; see the module docstring.

    Parameters
    ----------
    rows, cols : int
        MAC array shape (``mac_rows``, ``mac_cols``), each in [1, 64].
    n, k : int
        Output rows and inputs, in [1, 65536]; ``k % cols == 0``, ``n % (rows·group_rows) == 0``.
    t_max : int
        Largest batch (token buffer depth), in [1, 4096].
    group_rows : int
        Row groups (of ``rows`` rows) per block, default 1; ``rows·group_rows = n`` makes the
        output token-major.
    w_addr_width : int, optional
        Width of the weight port address (default: enough for the ``n·k/cols`` words).

    Raises
    ------
    TypeError, ValueError
        For a bad parameter, naming it and its value.
    """

    def __init__(self, *, rows: int, cols: int, n: int, k: int, t_max: int, group_rows: int = 1,
                 w_addr_width: int | None = None):
        check_int("rows", rows, 1, 64)
        check_int("cols", cols, 1, 64)
        check_int("n", n, 1, 1 << 16)
        check_int("k", k, 1, 1 << 16)
        check_int("t_max", t_max, 1, 4096)
        check_int("group_rows", group_rows, 1, 1 << 16)
        if k % cols:
            raise ValueError(f"k must be a multiple of cols={cols}, not {k!r}")
        if n % (rows * group_rows):
            raise ValueError(f"n must be a multiple of rows·group_rows = {rows * group_rows}, "
                             f"not {n!r}")
        self.rows, self.cols, self.n, self.k, self.t_max = rows, cols, n, k, t_max
        self.group_rows = group_rows
        self.slices = k // cols
        self.groups = n // rows
        self.blocks = n // (rows * group_rows)
        self.image_words = n * self.slices
        if w_addr_width is None:
            w_addr_width = max(1, ceil_log2(self.image_words))
        check_int("w_addr_width", w_addr_width, max(1, ceil_log2(self.image_words)), 32)
        self.w_addr_width = w_addr_width
        self.regions = 2 if self.blocks > 1 else 1
        self.buffer_depth = self.regions * group_rows * self.slices
        self.word_layout = weight_word(cols)
        self.job_layout = data.StructLayout({"n_tokens": unsigned(ceil_log2(t_max + 1)),
                                             "w_base": unsigned(w_addr_width)})
        self.x_layout = data.StructLayout({"data": weight_word(cols), "last": 1})
        self.y_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(ACC_BITS), rows),
            "token": index_shape(t_max), "block": index_shape(self.groups), "last": 1})
        super().__init__({
            "i_job": In(stream.Signature(self.job_layout)),
            "i_x": In(stream.Signature(self.x_layout)),
            "w_rd": Out(wiring.Signature({"addr": Out(w_addr_width), "en": Out(1),
                                          "data": In(self.word_layout)})),
            "o_y": Out(stream.Signature(self.y_layout)),
            "busy_cycles": Out(COUNTER_BITS),
            "total_cycles": Out(COUNTER_BITS),
        })

    def cycles(self, n_tokens: int) -> int:
        """Cycles of a job without stalls (tokens streamed in at one beat per cycle), from the
        cycle after the job's transfer to its last ``o_y`` beat: the schedule replayed op group
        by op group (each waits for the array, its weights and its token; the loader for the
        array to retire the block two back)."""
        S, G, R, NB, T = self.slices, self.group_rows, self.rows, self.blocks, n_tokens
        load_start, last_op = [], []
        cursor = 1
        for b in range(NB):
            start = 1 if b == 0 else load_start[b - 1] + G * R * S
            if b >= self.regions:
                start = max(start, last_op[b - self.regions] + 1)
            load_start.append(start)
            for t in range(T):
                for g in range(G):
                    cursor = max(cursor, start + (g + 1) * R * S + 2, (t + 1) * S + 1) + S
            last_op.append(cursor - 1)
        return cursor - 1 + MACArray.latency

    def busy(self, n_tokens: int) -> int:
        """Ops (cycles of useful MACs) of a job: ``N·K·T / (R·C)``."""
        return self.groups * self.slices * n_tokens

    def elaborate(self, platform):
        m = Module()
        R, S, G = self.rows, self.slices, self.group_rows
        NB, regions = self.blocks, self.regions
        t_max = self.t_max
        tag = data.StructLayout({"token": index_shape(t_max), "group": index_shape(self.groups),
                                 "last": 1})
        m.submodules.mac = mac = MACArray(rows=R, cols=self.cols, depth=self.buffer_depth,
                                          x_addr_width=max(1, ceil_log2(t_max * S)), tag_shape=tag)
        m.submodules.xbuf = xbuf = Memory(shape=self.word_layout, depth=max(2, t_max * S), init=[])
        xw, xr = xbuf.write_port(), xbuf.read_port()
        m.d.comb += [xr.addr.eq(mac.x_rd.addr), xr.en.eq(mac.x_rd.en), mac.x_rd.data.eq(xr.data)]

        active = Signal()
        n_tok = Signal(index_shape(t_max + 1))
        base = Signal(self.w_addr_width)
        m.d.comb += [mac.active.eq(active), self.busy_cycles.eq(mac.busy_cycles),
                     self.total_cycles.eq(mac.total_cycles)]

        # -- token input: the i_x stream into the token buffer ---------------------------------
        tokens_in = Signal(index_shape(t_max + 1))
        x_waddr = Signal(index_shape(t_max * S))
        m.d.comb += [
            self.i_x.ready.eq(active & (tokens_in < n_tok)),
            xw.addr.eq(x_waddr), xw.data.eq(self.i_x.payload.data),
            xw.en.eq(self.i_x.valid & self.i_x.ready),
        ]
        with m.If(self.i_x.valid & self.i_x.ready):
            m.d.sync += x_waddr.eq(x_waddr + 1)
            with m.If(self.i_x.payload.last):
                m.d.sync += tokens_in.eq(tokens_in + 1)

        # -- loader: weight port → weight buffer, block b into region b mod 2 -----------------
        ld_word = Signal(index_shape(self.image_words + 1))
        ld_s, ld_r, ld_g = Signal(index_shape(S)), Signal(index_shape(R)), Signal(index_shape(G))
        ld_blk = Signal(index_shape(NB + 1))
        ld_gbase = Signal(index_shape(self.buffer_depth))      # region·G·S + g·S
        retired = Signal(index_shape(NB + 1))                  # blocks whose last op has issued
        groups_loaded = Signal(index_shape(self.groups + 1))
        ld_go = Signal()
        m.d.comb += [
            ld_go.eq(active & (ld_blk < NB) & (ld_blk < retired + regions)),
            self.w_rd.addr.eq(base + ld_word), self.w_rd.en.eq(ld_go),
        ]
        wr_valid, wr_gdone = Signal(), Signal()
        wr_row, wr_addr = Signal(index_shape(R)), Signal(index_shape(self.buffer_depth))
        m.d.sync += wr_valid.eq(ld_go)
        m.d.comb += [mac.wr.row.eq(wr_row), mac.wr.addr.eq(wr_addr), mac.wr.data.eq(self.w_rd.data),
                     mac.wr.en.eq(wr_valid)]
        with m.If(wr_valid & wr_gdone):
            m.d.sync += groups_loaded.eq(groups_loaded + 1)
        with m.If(ld_go):
            m.d.sync += [wr_row.eq(ld_r), wr_addr.eq(ld_gbase + ld_s),
                         wr_gdone.eq((ld_r == R - 1) & (ld_s == S - 1)),
                         ld_word.eq(ld_word + 1)]
            with m.If(ld_s == S - 1):
                m.d.sync += ld_s.eq(0)
                with m.If(ld_r == R - 1):
                    m.d.sync += ld_r.eq(0)
                    with m.If(ld_g == G - 1):
                        m.d.sync += [ld_g.eq(0), ld_blk.eq(ld_blk + 1)]
                        # the next block's region: 0 for even blocks, G·S for odd ones
                        m.d.sync += ld_gbase.eq(0 if regions == 1 else Mux(ld_blk[0], 0, G * S))
                    with m.Else():
                        m.d.sync += [ld_g.eq(ld_g + 1), ld_gbase.eq(ld_gbase + S)]
                with m.Else():
                    m.d.sync += ld_r.eq(ld_r + 1)
            with m.Else():
                m.d.sync += ld_s.eq(ld_s + 1)

        # -- compute sequencer: block, token, group, slice ------------------------------------
        c_s, c_g, c_t = Signal(index_shape(S)), Signal(index_shape(G)), Signal(index_shape(t_max))
        c_blk = Signal(index_shape(NB + 1))
        c_rbase = Signal(index_shape(self.buffer_depth))       # region·G·S
        c_wbase = Signal(index_shape(self.buffer_depth))       # region·G·S + g·S
        c_xbase = Signal(index_shape(t_max * S))               # t·S
        c_qbase = Signal(index_shape(self.groups + 1))         # b·G
        c_q = Signal(index_shape(self.groups + 1))             # b·G + g
        op = mac.i_op
        m.d.comb += [
            op.valid.eq(active & (c_blk < NB) & (c_q < groups_loaded) & (c_t < tokens_in)),
            op.payload.waddr.eq(c_wbase + c_s),
            op.payload.xaddr.eq(c_xbase + c_s),
            op.payload.first.eq(c_s == 0),
            op.payload.last.eq(c_s == S - 1),
            op.payload.tag.token.eq(c_t),
            op.payload.tag.group.eq(c_q),
            op.payload.tag.last.eq((c_blk == NB - 1) & (c_t == n_tok - 1) & (c_g == G - 1)),
        ]
        with m.If(op.valid & op.ready):
            with m.If(c_s == S - 1):
                m.d.sync += c_s.eq(0)
                with m.If(c_g == G - 1):
                    m.d.sync += c_g.eq(0)
                    with m.If(c_t == n_tok - 1):            # block done: retire its region
                        next_rbase = 0 if regions == 1 else Mux(c_rbase == 0, G * S, 0)
                        m.d.sync += [c_t.eq(0), c_xbase.eq(0), c_blk.eq(c_blk + 1),
                                     retired.eq(retired + 1), c_rbase.eq(next_rbase),
                                     c_wbase.eq(next_rbase), c_qbase.eq(c_q + 1), c_q.eq(c_q + 1)]
                    with m.Else():                         # next token, same block
                        m.d.sync += [c_t.eq(c_t + 1), c_xbase.eq(c_xbase + S),
                                     c_wbase.eq(c_rbase), c_q.eq(c_qbase)]
                with m.Else():
                    m.d.sync += [c_g.eq(c_g + 1), c_wbase.eq(c_wbase + S), c_q.eq(c_q + 1)]
            with m.Else():
                m.d.sync += c_s.eq(c_s + 1)

        # -- output ------------------------------------------------------------------------------
        acc = mac.o_acc
        m.d.comb += [
            self.o_y.valid.eq(acc.valid),
            self.o_y.payload.data.eq(acc.payload.data),
            self.o_y.payload.token.eq(acc.payload.tag.token),
            self.o_y.payload.block.eq(acc.payload.tag.group),
            self.o_y.payload.last.eq(acc.payload.tag.last),
            acc.ready.eq(self.o_y.ready),
        ]

        # -- job control (a new job resets every counter) -------------------------------------
        m.d.comb += self.i_job.ready.eq(~active)
        with m.If(self.o_y.valid & self.o_y.ready & self.o_y.payload.last):
            m.d.sync += active.eq(0)
        with m.If(self.i_job.valid & self.i_job.ready):
            m.d.sync += [active.eq(self.i_job.payload.n_tokens != 0),
                         n_tok.eq(self.i_job.payload.n_tokens), base.eq(self.i_job.payload.w_base)]
            m.d.sync += [s.eq(0) for s in (tokens_in, x_waddr, ld_word, ld_s, ld_r, ld_g, ld_blk,
                                           ld_gbase, retired, groups_loaded, c_s, c_g, c_t, c_blk,
                                           c_rbase, c_wbase, c_xbase, c_qbase, c_q)]
        return m
