"""The expert FFN engine: one expert over the ``T`` tokens routed to it, on the MAC array.

It computes exactly ``ExpertBank.forward(e, x)`` (docs/arithmetic.md §4): the gate and up
projections (``K = D = d_model``), the `HiddenUnit` (per-channel requantisation, SiLU or ReLU,
``t·u``, Walsh-Hadamard rotation, ``rq_8``) into an int8 hidden buffer, then the down projection
(``K = F = d_ff``) and ``o = rq_16(acc, M_d[c], S_d[c])``, int16 ``o`` out per token.

Loop order, buffers and weight reuse
------------------------------------
``R × C`` MAC array (`MACArray`), ``S_D = D/C`` and ``S_F = F/C`` slices per row.

The hidden unit takes a token's channels in order (``c = beat·lanes + lane``, ``last`` on the
token's final beat: its per-channel parameters and its rotation blocks are addressed by the
position inside the token), and the combiner takes a token's ``o`` as ``D/R`` consecutive beats.
Both want **token-major** results. A weight-stationary schedule with small row blocks gives
block-major results, which would need an int32 reorder buffer of ``T_max × 2F`` accumulators
in front of the hidden unit (``8·T_max·F`` bytes). Instead each phase's *block is the whole
matrix*: the MAC array's weight buffer holds the phase's weights, loaded once per job through
the weight port, and every token is computed over all its rows before the next token:

* **phase GU** (gate/up): ``for token t: for group j < 2F/R (ReLU: F/R): for slice s < S_D``.
  A *group* is ``R`` array rows: SwiGLU rows ``0 .. R/2-1`` are the gate rows and rows
  ``R/2 .. R-1`` the up rows of the same ``R/2`` channels ``j·R/2 ..`` (ReLU: ``R`` up rows of
  channels ``j·R ..``). Each group result goes straight to the hidden unit as one beat
  (``lanes = R/2``; ReLU ``R``) with ``gate`` and ``up`` of the same channels of the same token.
  The rotation block ``B`` (``cfg.rotation_block``) needs nothing extra: the hidden unit sees
  every channel of a token in order and forms ``B``-channel blocks itself.
* the hidden unit's ``h`` goes into the **hidden buffer** (``T_max × F`` int8, words of ``C``).
* **phase D** (down): ``for token t: for group g < D/R: for slice s < S_F``, x read from the
  hidden buffer; each group result (``R`` output channels of one token) is requantised per
  channel and leaves on ``o_y``: ``D/R`` beats per token, in token order. The requantiser has
  five stages (`RQ_LATENCY`): A reads the group's ``M_d``, ``S_d`` from the parameter memory
  (a block RAM), P holds them in registers (the RAM's slow output and the product apart),
  then B ``acc·M_d``, C the rounding shift, O the saturation, which is ``o_y``'s payload.

**Weight reuse**: the weight buffer is read ``T`` times (once per token) for every word the
weight port delivered once: each weight word crosses the weight port exactly once per job. The
buffer holds both phases (regions GU and D, ``3·F·D`` bytes for SwiGLU, ``2·F·D`` for ReLU, in
``R`` memories of ``C`` bytes a word). Token 0 follows the loader through the GU region (a
group computes as soon as it is loaded), a token computes as soon as its ``x`` is in the token
buffer (the ``i_x`` stream overlaps the compute) and the D weights load while GU computes.

Prefetch: two jobs in flight
----------------------------
Experts run one after the other (the scheduler's expert-major order), so the next expert's
image is fetched while this one computes. The engine holds two jobs: *cur*, which the compute
sequencer runs, and *nxt*, accepted once cur's whole image is loaded. The loader fetches nxt's
image section by section as soon as cur no longer needs what the section overwrites:

=======  ====================================================================================
``HP``   when cur's gate/up ops are issued and its last ``h`` has left the hidden unit
``DP``   at once (the down parameters have two banks; each job's ops carry their bank)
``GU``   when cur's gate/up ops are issued (the GU region is then free)
``DW``   when nxt has become cur (cur's down ops all issued)
=======  ====================================================================================

nxt's tokens enter the token buffer once cur's gate/up ops are issued. nxt becomes cur in the
cycle after cur's last op issued, so its gate/up ops follow cur's down ops with no gap as long
as its GU weights are in: the array stays busy from job to job when a job's D phase
(``T·F·D/(R·C)`` cycles) covers the next image's parameters and GU weights
(``P + 2F·D/C`` cycles, ``P`` the parameter words), i.e. ``T ≥ 2R + P·R·C/(F·D)`` (SwiGLU;
ReLU ``T ≥ R + ...``), and a job's GU phase covers its D weights (``T ≥ R/2``; ReLU ``T ≥ R``).

Cycles and utilisation (no stalls): one job alone on the idle engine exposes its parameters and
GU weights (``P + 2F·D/C`` cycles, of which token 0 computes during ``2F·D/(R·C)``), so
``busy/total ≈ 3T / (3T + 2R - 2)`` (SwiGLU): 90 % from ``T ≈ 6R``. In a sequence only the first
job's load is exposed: the steady state is 100 % from ``T ≈ 2R`` (bench/mac_util.py prints both,
per config). `ExpertFFN.schedule` replays the schedule of a sequence of jobs (to within a few
cycles; exactly for one job, `ExpertFFN.cycles`); the tests check the RTL against it.

Interface
---------
``i_job`` (in stream): ``{n_tokens, w_base}``: ``T`` tokens (``1 .. t_max``; a job of 0 tokens is
taken and dropped), the expert's image at weight-port word ``w_base``. ``ready`` when no job
waits and the loader has fetched the running job's whole image (so also when idle).

``i_x`` (in stream): ``{data: C × int8, last}``, the jobs' tokens in job order, ``S_D`` beats
each (element ``s·C + c`` in lane ``c`` of beat ``s``), ``last`` on each token's final beat. A
job's tokens are taken from its acceptance, or for a prefetched job once the running job's
gate/up ops are issued (``ready`` is low in between).

``w_rd`` (out ``addr``, ``en``; in ``data``): the weight read port, ``C`` int8 a word (int4
weights: the weight sections' words hold ``2C``, see below), latency 1 (see `GemmEngine`); the
expert cache sits behind it. Each image word is read once per job.

``o_y`` (out stream): ``{data: R × int16, token, last}``: ``o[token, g·R + r]`` in lane ``r`` of
the token's beat ``g``, ``D/R`` beats per token, tokens in order (``token`` counts from 0 in
each job), ``last`` on each token's final beat (the combiner's contribution format with
``lanes = R``). Jobs' outputs come in job order.

``busy_cycles``, ``total_cycles``: the MAC array's counters over the last *busy period*: from a
job accepted by an idle engine to the last ``o_y`` beat of the last job in flight (one job, or a
sequence whose jobs were prefetched).

Weight image of one expert (`expert_image`)
-------------------------------------------
Words of ``C`` int8 (``8·C`` bits; lane ``c`` in bits ``8c .. 8c+7``), at ``w_base + i``:

==================  =============================================================================
section (in order)  words
==================  =============================================================================
``HP`` hidden       the `hidden_image` writes (``M_h, S_h``; then channels ``0 .. F-1``) in
params              address order, each value in ``hpw = ceil(bits / 8C)`` words, low bits first
                    (``bits`` = 44 SwiGLU, 22 ReLU): ``(F + 1)·hpw`` words
``DP`` down params  ``M_d[n]`` (bits 0-15), ``S_d[n]`` (bits 16-21) for ``n < D``, each in
                    ``dpw = ceil(22 / 8C)`` words: ``D·dpw`` words
``GU`` gate/up      groups ``j < 2F/R`` (ReLU ``F/R``), rows ``r < R`` of the group (SwiGLU: gate
weights             rows of channels ``j·R/2 + r`` for ``r < R/2``, then up rows of channels
                    ``j·R/2 + r - R/2``), ``S_D`` words a row: ``W[row, s·C:(s+1)·C]``
``DW`` down         rows ``n < D`` of ``W_down`` (rotated, as the golden model has it), ``S_F``
weights             words a row
==================  =============================================================================

With ``weight_bits = 4`` the ``GU`` and ``DW`` sections are one stream of int4 values, two
buffer words to an image word (buffer word ``i`` in the low half for even ``i``, the high half
for odd; lane ``c`` in bits ``4c .. 4c+3`` of the half): about half the image. The loader reads
such a word on the even buffer word, writes its low half sign-extended into the MAC array's
int8 lanes and holds the high half for the next cycle (also across the ``GU``/``DW`` boundary,
where one word can hold both), so the buffer still fills one word per cycle and the schedule
is the same at both widths; the MAC array and the arithmetic do not change.

The loader reads the image once per job, in this order, one word per cycle: parameters first
(the hidden unit's through its write port, the down requantiser's into a bank of a
``2·D/R × R`` memory), so they are in place before the first result needs them.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.config import MAX_DIM, AccelConfig
from moeforge.spec.arith import ACC_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS, WEIGHT_BITS
from moeforge.checks import check_int
from moeforge.spec.image import PARAM_BITS, ExpertImageLayout, expert_image

from ..datapath.mac_array import COUNTER_BITS, MACArray, index_shape, weight_word
from ..datapath.requantiser import RequantPipeline
from .hidden import HiddenUnit

__all__ = ["ExpertFFN", "ExpertImageLayout", "expert_image", "output_layout"]


def output_layout(*, rows: int, t_max: int) -> data.StructLayout:
    """``o_y``'s payload: ``rows`` int16 outputs of one token, its index, the token's last beat."""
    return data.StructLayout({"data": data.ArrayLayout(signed(OUT_BITS), rows),
                              "token": index_shape(t_max), "last": 1})


class ExpertFFN(wiring.Component):
    """One expert's FFN over a batch of tokens; see the module docstring.

    Parameters
    ----------
    activation : str
        ``swiglu`` or ``relu``.
    d_model, d_ff : int
        ``D`` and ``F``, in [1, 65536]: multiples of ``cols`` and of ``rows`` (``D``), of
        ``rows/2`` (SwiGLU ``F``) or ``rows`` (ReLU ``F``).
    rows, cols : int
        MAC array, in [1, 64] (SwiGLU: ``rows`` even).
    t_max : int
        Largest batch, in [1, 4096].
    rotation : int
        Walsh-Hadamard block (``cfg.rotation_block``), passed to the `HiddenUnit`.
    weight_bits : int
        8, or 4: the image's weight sections hold two int4 buffer words a word, and the loader
        sign-extends them into the MAC array's int8 lanes (`ExpertImageLayout`).
    w_addr_width : int, optional
        Width of the weight port address; default enough for one image.
    src_loc_at : int
        Stack frames above the caller to attribute this unit (and its hidden unit) to.

    Raises
    ------
    TypeError, ValueError
        For a parameter of the wrong type, out of range or not fitting the others.
    """

    def __init__(self, *, activation: str, d_model: int, d_ff: int, rows: int, cols: int,
                 t_max: int, rotation: int, weight_bits: int = WEIGHT_BITS, w_addr_width: int | None = None,
                 src_loc_at: int = 0):
        if activation not in ("swiglu", "relu"):
            raise ValueError(f"activation must be swiglu or relu, not {activation!r}")
        check_int("rows", rows, 1, 64)
        check_int("cols", cols, 1, 64)
        check_int("d_model", d_model, 1, MAX_DIM)
        check_int("d_ff", d_ff, 1, MAX_DIM)
        check_int("t_max", t_max, 1, 4096)
        swiglu = activation == "swiglu"
        if swiglu and rows % 2:
            raise ValueError(f"rows must be even for SwiGLU (gate and up rows in pairs), not {rows!r}")
        lanes = rows // 2 if swiglu else rows
        for name, v, m in (("d_model", d_model, cols), ("d_model", d_model, rows),
                           ("d_ff", d_ff, cols), ("d_ff", d_ff, lanes)):
            if v % m:
                raise ValueError(f"{name} must be a multiple of {m}, not {v!r}")
        if lanes % cols and cols % lanes:
            raise ValueError(f"the hidden unit's {lanes} lanes and cols={cols} must divide one "
                             f"another (hidden buffer writes)")
        self.activation, self.swiglu = activation, swiglu
        self.d_model, self.d_ff, self.rows, self.cols, self.t_max = d_model, d_ff, rows, cols, t_max
        self.rotation = rotation
        self.lanes = lanes
        # the hidden stage: a separate component behind its stream interface (rtl/expert/hidden.py)
        # (created here, elaborated with this unit: an unused ExpertFFN reports both at the
        # caller's line)
        self.hidden = HiddenUnit(activation=activation, d_ff=d_ff, lanes=lanes, rotation=rotation,
                                 src_loc_at=1 + src_loc_at)
        self.image = ExpertImageLayout(activation=activation, d_model=d_model, d_ff=d_ff,
                                       rows=rows, cols=cols, weight_bits=weight_bits)
        lay = self.image
        if w_addr_width is None:
            w_addr_width = max(1, ceil_log2(lay.words))
        check_int("w_addr_width", w_addr_width, max(1, ceil_log2(lay.words)), 32)
        self.w_addr_width = w_addr_width
        self.gu_depth = lay.gu_groups * lay.s_d
        self.buffer_depth = self.gu_depth + lay.d_groups * lay.s_f
        self.word_layout = weight_word(cols)
        self.job_layout = data.StructLayout({"n_tokens": unsigned(ceil_log2(t_max + 1)),
                                             "w_base": unsigned(w_addr_width)})
        self.x_layout = data.StructLayout({"data": weight_word(cols), "last": 1})
        self.y_layout = output_layout(rows=rows, t_max=t_max)
        super().__init__({
            "i_job": In(stream.Signature(self.job_layout)),
            "i_x": In(stream.Signature(self.x_layout)),
            "w_rd": Out(wiring.Signature({"addr": Out(w_addr_width), "en": Out(1),
                                          "data": In(self.word_layout)})),
            "o_y": Out(stream.Signature(self.y_layout)),
            "busy_cycles": Out(COUNTER_BITS),
            "total_cycles": Out(COUNTER_BITS),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, w_addr_width: int | None = None,
                    src_loc_at: int = 0) -> "ExpertFFN":
        """The routed experts' engine of `cfg` (its MAC array, ``d_model``, ``d_ff``,
        ``token_buffer_depth``, activation and rotation block)."""
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        return cls(activation=cfg.activation, d_model=cfg.d_model, d_ff=cfg.d_ff,
                   rows=cfg.mac_rows, cols=cfg.mac_cols, t_max=cfg.token_buffer_depth,
                   rotation=cfg.rotation_block, weight_bits=cfg.weight_bits, w_addr_width=w_addr_width,
                   src_loc_at=1 + src_loc_at)

    # ------------------------------------------------------------------ cycle model
    def busy(self, n_tokens: int) -> int:
        """MAC ops of a job: ``T·(rows of GU·S_D + D·S_F)/R``."""
        lay = self.image
        return n_tokens * (lay.gu_groups * lay.s_d + lay.d_groups * lay.s_f)

    def schedule(self, token_counts) -> list[tuple[int, int]]:
        """``(accepted, ended)`` cycles of a sequence of jobs of `token_counts` tokens, each
        job presented as soon as it can be taken and every token beat as soon as it can be
        (no stalls), counted from the first job's transfer: the RTL's schedule replayed op
        group by op group. A job ends in the cycle its last ``o_y`` beat transfers."""
        lay, R = self.image, self.rows
        S_D, S_F = lay.s_d, lay.s_f
        h_delay = MACArray.latency + self.hidden.latency + max(1, self.lanes // self.cols) + 1
        out = []
        accept = 0
        prev = None          # the previous job: gate/up issue end, all-h time, last op, x end
        for T in token_counts:
            # compute takes the job once the previous one has issued its last op
            switch = accept + 1 if prev is None else max(accept + 1, prev["last_op"] + 1)
            # loader sections (issue cycles); prefetch gates while the previous job computes
            s_hp = accept + 1
            if prev is not None:
                s_hp = max(s_hp, min(switch + 1, max(prev["gu_end"] + 1, prev["h_all"])))
            s_gu = s_hp + lay.hp_words + lay.dp_words
            if prev is not None:
                s_gu = max(s_gu, min(switch + 1, prev["gu_end"] + 1))
            s_dw = max(s_gu + lay.gu_words, switch + 1)
            gu_vis = [s_gu + (g + 1) * R * S_D + 1 for g in range(lay.gu_groups)]
            d_vis = [s_dw + (g + 1) * R * S_F + 1 for g in range(lay.d_groups)]
            # token beats: after the previous job's beats and its gate/up reads
            x_start = accept + 2 if prev is None else max(accept + 2, prev["x_end"] + 2, prev["gu_end"] + 1)
            cursor, h_ready = switch + 1, []
            for t in range(T):
                for g in range(lay.gu_groups):
                    cursor = max(cursor, gu_vis[g], x_start + (t + 1) * S_D) + S_D
                h_ready.append(cursor - 1 + h_delay)
            gu_end = cursor - 1
            for t in range(T):
                for g in range(lay.d_groups):
                    cursor = max(cursor, d_vis[g], h_ready[t]) + S_F
            last_op = cursor - 1
            ended = last_op + MACArray.latency + self.RQ_LATENCY
            out.append((accept, ended))
            prev = dict(gu_end=gu_end, h_all=h_ready[-1] + 1, last_op=last_op,
                        x_end=x_start + T * S_D - 1)
            accept = s_dw + lay.dw_words          # the loader is free: the next job is taken
        return out

    def cycles(self, n_tokens: int) -> int:
        """Cycles of one job on an idle engine without stalls (`schedule`)."""
        return self.schedule([n_tokens])[0][1]

    RQ_LATENCY = 5          # o_acc → o_y: param read, params registered, product,
    #                         rounding, saturation

    # ------------------------------------------------------------------ elaboration
    def elaborate(self, platform):
        m = Module()
        lay = self.image
        R, C, L, T_max = self.rows, self.cols, self.lanes, self.t_max
        S_D, S_F = lay.s_d, lay.s_f
        G_GU, G_D = lay.gu_groups, lay.d_groups
        W = 8 * C
        x_depth = max(T_max * S_D, T_max * S_F)
        tag = data.StructLayout({"phase": 1, "bank": 1, "token": index_shape(T_max),
                                 "group": index_shape(max(G_GU, G_D)), "tlast": 1, "jlast": 1})
        m.submodules.mac = mac = MACArray(rows=R, cols=C, depth=self.buffer_depth,
                                          x_addr_width=max(1, ceil_log2(x_depth)), tag_shape=tag)
        m.submodules.hidden = hid = self.hidden
        m.d.comb += [self.busy_cycles.eq(mac.busy_cycles), self.total_cycles.eq(mac.total_cycles)]

        def reg(shape, name, reset=0):
            return Signal(shape, name=name, init=reset)

        # -- job slots ---------------------------------------------------------------------------
        # cur: the job the compute sequencer works on (c_done: all its ops issued; also the state
        # after reset). nxt: a job accepted while cur computes, whose image the loader fetches
        # meanwhile. The loader works on nxt when `ld_on_nxt`, else on cur; the token input
        # likewise (`x_on_nxt`). Each job has a bank of the double-buffered down parameters.
        n_tok_c = reg(index_shape(T_max + 1), "cur_tokens")
        bank_c = reg(1, "cur_bank")
        nxt_valid = reg(1, "nxt_valid")
        nxt_tok = reg(index_shape(T_max + 1), "nxt_tokens")
        nxt_bank = reg(1, "nxt_bank")
        bank_next = reg(1, "bank_next")
        ld_on_nxt = reg(1, "ld_on_nxt")
        x_on_nxt = reg(1, "x_on_nxt")
        base_l = reg(self.w_addr_width, "ld_base")
        bank_l = reg(1, "ld_bank")
        jobs = reg(range(4), "jobs")               # accepted, last o_y beat not yet out
        m.d.comb += mac.active.eq(jobs != 0)

        # compute sequencer state (declared here: the loader and token input watch it)
        c_ph = reg(1, "c_phase")                  # 0 gate/up, 1 down
        c_done = reg(1, "c_done", reset=1)
        c_t = reg(index_shape(T_max), "c_t")
        c_g = reg(index_shape(max(G_GU, G_D)), "c_g")
        c_s = reg(index_shape(max(S_D, S_F)), "c_s")
        c_wbase = reg(index_shape(self.buffer_depth), "c_wbase")
        c_xbase = reg(index_shape(x_depth), "c_xbase")
        gu_issued = c_ph | c_done                 # cur's gate/up ops all issued

        # -- token buffer (x) and hidden buffer (h): the MAC array's two x sources ------------
        m.submodules.xbuf = xbuf = Memory(shape=weight_word(C), depth=max(2, T_max * S_D), init=[])
        xw, xr = xbuf.write_port(), xbuf.read_port()
        h_gran = L if L < C else None
        m.submodules.hbuf = hbuf = Memory(shape=weight_word(C), depth=max(2, T_max * S_F), init=[])
        hw = hbuf.write_port(granularity=h_gran)
        hr = hbuf.read_port()
        x_sel = reg(1, "x_sel")                   # phase of the op in MAC stage 1
        with m.If(mac.x_rd.en):
            m.d.sync += x_sel.eq(mac.i_op.payload.tag.phase)
        m.d.comb += [xr.addr.eq(mac.x_rd.addr), xr.en.eq(mac.x_rd.en),
                     hr.addr.eq(mac.x_rd.addr), hr.en.eq(mac.x_rd.en),
                     mac.x_rd.data.eq(Mux(x_sel, hr.data, xr.data))]

        # token input: cur's tokens, then nxt's once cur's gate/up ops have read the buffer
        tokens_x = reg(index_shape(T_max + 1), "tokens_x")
        x_waddr = reg(index_shape(T_max * S_D), "x_waddr")
        x_total = Mux(x_on_nxt, nxt_tok, n_tok_c)
        m.d.comb += [self.i_x.ready.eq((tokens_x < x_total) & (~x_on_nxt | gu_issued)),
                     xw.addr.eq(x_waddr), xw.data.eq(self.i_x.payload.data),
                     xw.en.eq(self.i_x.valid & self.i_x.ready)]
        with m.If(self.i_x.valid & self.i_x.ready):
            m.d.sync += x_waddr.eq(x_waddr + 1)
            with m.If(self.i_x.payload.last):
                m.d.sync += tokens_x.eq(tokens_x + 1)
        with m.If(~x_on_nxt & (tokens_x == n_tok_c) & nxt_valid):
            m.d.sync += [x_on_nxt.eq(1), tokens_x.eq(0), x_waddr.eq(0)]

        # -- loader: the image, one word per cycle, in section order ---------------------------
        resets = []                                   # loader state cleared by a new job

        def counter(n, name):
            s = Signal(index_shape(n), name=name)
            resets.append(s)
            return s

        ld_word = counter(lay.words + 1, "ld_word")
        # int4 (pack 2): a weight-section word is read on the even buffer word and its high half
        # held for the odd one (ld_half), so the buffer still fills one word per cycle
        ld_half = counter(2, "ld_half") if lay.pack == 2 else None
        ld_sec = Signal(index_shape(5), name="ld_sec", init=4)   # 0 HP, 1 DP, 2 GU, 3 DW, 4 done
        ld_sub = counter(max(lay.hpw, lay.dpw), "ld_sub")
        ld_item = counter(max(lay.hp_items, lay.dp_items), "ld_item")
        ld_s = counter(max(S_D, S_F), "ld_s")
        ld_r = counter(R, "ld_r")
        ld_g = counter(max(G_GU, G_D), "ld_g")
        ld_gbase = counter(self.buffer_depth, "ld_gbase")
        gu_loaded = counter(G_GU + 1, "gu_loaded")
        d_loaded = counter(G_D + 1, "d_loaded")
        dp_group = counter(G_D, "dp_group")
        dp_lane = counter(R, "dp_lane")
        tokens_h = reg(index_shape(T_max + 1), "tokens_h")   # cur's tokens through the hidden unit
        # Prefetching nxt, a section may start once cur no longer needs what it overwrites:
        # HP the hidden unit (cur's h all out), GU the gate/up region (cur's ops issued); DP has
        # two banks; DW waits until nxt becomes cur.
        sec_free = Mux(ld_sec == 0, gu_issued & (tokens_h == n_tok_c),
                       Mux(ld_sec == 1, 1, Mux(ld_sec == 2, gu_issued, 0)))
        ld_go = Signal(name="ld_go")
        ld_rd = Signal(name="ld_rd")              # a word is read this cycle
        m.d.comb += [ld_go.eq((ld_sec != 4) & (~ld_on_nxt | sec_free)),
                     ld_rd.eq(ld_go if ld_half is None else ld_go & ~(ld_sec[1] & ld_half)),
                     self.w_rd.addr.eq(base_l + ld_word), self.w_rd.en.eq(ld_rd)]
        # what the word read in this cycle is for (acted on in the next cycle, with its data)
        p_valid, p_sec = Signal(name="p_valid"), Signal(2, name="p_sec")
        p_item_last, p_row = Signal(name="p_item_last"), Signal(index_shape(R), name="p_row")
        p_addr = Signal(index_shape(self.buffer_depth), name="p_addr")
        p_item = Signal(index_shape(max(lay.hp_items, lay.dp_items)), name="p_item")
        p_gdone = Signal(name="p_gdone")
        p_half = Signal(name="p_half")            # int4: the buffer word is the held high half
        m.d.sync += p_valid.eq(ld_go)
        with m.If(ld_go):
            m.d.sync += [p_sec.eq(ld_sec), p_row.eq(ld_r), p_addr.eq(ld_gbase + ld_s),
                         p_item.eq(ld_item)]
            if ld_half is not None:
                m.d.sync += p_half.eq(ld_sec[1] & ld_half)
                with m.If(ld_sec[1]):
                    m.d.sync += ld_half.eq(~ld_half)
        with m.If(ld_rd):
            m.d.sync += ld_word.eq(ld_word + 1)
        s_sec = Mux(ld_sec == 2, S_D - 1, S_F - 1)
        g_sec = Mux(ld_sec == 2, G_GU - 1, G_D - 1)
        sub_sec = Mux(ld_sec == 0, lay.hpw - 1, lay.dpw - 1)
        items_sec = Mux(ld_sec == 0, lay.hp_items - 1, lay.dp_items - 1)
        with m.If(ld_go):
            with m.If(ld_sec < 2):                    # parameter sections
                m.d.sync += p_item_last.eq(ld_sub == sub_sec)
                with m.If(ld_sub == sub_sec):
                    m.d.sync += ld_sub.eq(0)
                    with m.If(ld_item == items_sec):
                        m.d.sync += [ld_item.eq(0), ld_sec.eq(ld_sec + 1)]
                    with m.Else():
                        m.d.sync += ld_item.eq(ld_item + 1)
                with m.Else():
                    m.d.sync += ld_sub.eq(ld_sub + 1)
            with m.Else():                            # weight sections
                m.d.sync += p_gdone.eq((ld_r == R - 1) & (ld_s == s_sec))
                with m.If(ld_s == s_sec):
                    m.d.sync += ld_s.eq(0)
                    with m.If(ld_r == R - 1):
                        m.d.sync += ld_r.eq(0)
                        with m.If(ld_g == g_sec):
                            m.d.sync += [ld_g.eq(0), ld_sec.eq(ld_sec + 1),
                                         ld_gbase.eq(self.gu_depth)]
                        with m.Else():
                            m.d.sync += [ld_g.eq(ld_g + 1), ld_gbase.eq(ld_gbase + s_sec + 1)]
                    with m.Else():
                        m.d.sync += ld_r.eq(ld_r + 1)
                with m.Else():
                    m.d.sync += ld_s.eq(ld_s + 1)

        word = self.w_rd.data.as_value()
        # parameter words: assembled low word first
        asm_words = max(lay.hpw, lay.dpw)
        asm = Signal(W * asm_words, name="asm")
        assembled = Cat(asm[W:], word) if asm_words > 1 else word
        with m.If(p_valid & (p_sec < 2)):
            m.d.sync += asm.eq(assembled)
        hp_value = assembled[W * (asm_words - lay.hpw):] if lay.hpw < asm_words else assembled
        dp_value = assembled[W * (asm_words - lay.dpw):] if lay.dpw < asm_words else assembled
        # hidden unit parameters: its write port, registered
        hwr_en = Signal(name="hwr_en")
        m.d.sync += hwr_en.eq(p_valid & (p_sec == 0) & p_item_last)
        with m.If(p_valid & (p_sec == 0) & p_item_last):
            m.d.sync += [hid.wr.addr.eq(p_item), hid.wr.data.eq(hp_value[:lay.hp_bits])]
        m.d.comb += hid.wr.en.eq(hwr_en)
        # down requantiser parameters: two banks of D/R words × R lanes, one lane per write
        prm_layout = data.StructLayout({"mult": unsigned(MULT_BITS), "shift": unsigned(SHIFT_BITS)})
        m.submodules.dprm = dprm = Memory(shape=data.ArrayLayout(prm_layout, R), depth=2 * G_D,
                                          init=[])
        dwp = dprm.write_port(granularity=1)
        dp_write = p_valid & (p_sec == 1) & p_item_last
        m.d.comb += [dwp.addr.eq(Mux(bank_l, G_D, 0) + dp_group),
                     dwp.data.eq(Cat(*[dp_value[:PARAM_BITS]] * R))]
        for r in range(R):
            m.d.comb += dwp.en[r].eq(dp_write & (dp_lane == r))
        with m.If(dp_write):
            m.d.sync += dp_lane.eq(Mux(dp_lane == R - 1, 0, dp_lane + 1))
            with m.If(dp_lane == R - 1):
                m.d.sync += dp_group.eq(dp_group + 1)
        # weights into the MAC array's buffer
        wgt = p_valid & p_sec[1]
        if lay.pack == 1:
            wdata = word
        else:                                         # int4: sign-extend the half's C nibbles
            q = lay.weight_bits
            held = Signal(q * C, name="ld_held")
            with m.If(wgt & ~p_half):
                m.d.sync += held.eq(word[q * C:])
            half = Mux(p_half, held, word[:q * C])
            wdata = Cat(*[Cat(half[q * c:q * (c + 1)], *[half[q * (c + 1) - 1]] * (WEIGHT_BITS - q))
                          for c in range(C)])
        m.d.comb += [mac.wr.row.eq(p_row), mac.wr.addr.eq(p_addr), mac.wr.data.eq(wdata),
                     mac.wr.en.eq(wgt)]
        with m.If(wgt & p_gdone):
            with m.If(p_sec[0]):
                m.d.sync += d_loaded.eq(d_loaded + 1)
            with m.Else():
                m.d.sync += gu_loaded.eq(gu_loaded + 1)

        # -- hidden unit output → hidden buffer ----------------------------------------------
        o_h = hid.o_h
        hb_addr = reg(index_shape(T_max * S_F), "hb_addr")
        if L <= C:
            per = C // L                              # h beats per hidden buffer word
            hb_sub = reg(index_shape(per), "hb_sub")
            m.d.comb += [o_h.ready.eq(1), hw.addr.eq(hb_addr),
                         hw.data.eq(Cat(*[o_h.payload.data.as_value()] * per))]
            if per > 1:
                for i in range(per):
                    m.d.comb += hw.en[i].eq(o_h.valid & (hb_sub == i))
            else:
                m.d.comb += hw.en.eq(o_h.valid)
            with m.If(o_h.valid):
                with m.If(hb_sub == per - 1):
                    m.d.sync += [hb_sub.eq(0), hb_addr.eq(hb_addr + 1)]
                with m.Else():
                    m.d.sync += hb_sub.eq(hb_sub + 1)
                with m.If(o_h.payload.last):
                    m.d.sync += tokens_h.eq(tokens_h + 1)
        else:
            chunks = L // C                           # hidden buffer words per h beat
            ser = Signal(8 * L, name="h_ser")
            ser_cnt = reg(index_shape(chunks + 1), "h_ser_cnt")   # words still to write
            ser_last = Signal(name="h_ser_last")
            # the next beat is taken while the last word of the previous one is written
            m.d.comb += [o_h.ready.eq(ser_cnt <= 1), hw.addr.eq(hb_addr), hw.data.eq(ser[:W]),
                         hw.en.eq(ser_cnt != 0)]
            with m.If(ser_cnt != 0):
                m.d.sync += hb_addr.eq(hb_addr + 1)
                with m.If((ser_cnt == 1) & ser_last):
                    m.d.sync += tokens_h.eq(tokens_h + 1)
            with m.If(o_h.valid & o_h.ready):
                m.d.sync += [ser.eq(o_h.payload.data.as_value()), ser_cnt.eq(chunks),
                             ser_last.eq(o_h.payload.last)]
            with m.Elif(ser_cnt != 0):
                m.d.sync += [ser.eq(ser[W:]), ser_cnt.eq(ser_cnt - 1)]

        # -- compute sequencer ----------------------------------------------------------------
        # (when the loader or the token input is on nxt, cur's image and tokens are complete)
        s_last = Mux(c_ph, S_F - 1, S_D - 1)
        g_last = Mux(c_ph, G_D - 1, G_GU - 1)
        ready_gu = (ld_on_nxt | (c_g < gu_loaded)) & (x_on_nxt | (c_t < tokens_x))
        ready_d = (ld_on_nxt | (c_g < d_loaded)) & (c_t < tokens_h)
        op = mac.i_op
        t_last = c_t == n_tok_c - 1
        m.d.comb += [
            op.valid.eq(~c_done & Mux(c_ph, ready_d, ready_gu)),
            op.payload.waddr.eq(c_wbase + c_s),
            op.payload.xaddr.eq(c_xbase + c_s),
            op.payload.first.eq(c_s == 0),
            op.payload.last.eq(c_s == s_last),
            op.payload.tag.phase.eq(c_ph),
            op.payload.tag.bank.eq(bank_c),
            op.payload.tag.token.eq(c_t),
            op.payload.tag.group.eq(c_g),
            op.payload.tag.tlast.eq(c_g == g_last),
            op.payload.tag.jlast.eq(c_ph & t_last & (c_g == g_last)),
        ]
        with m.If(op.valid & op.ready):
            with m.If(c_s == s_last):
                m.d.sync += c_s.eq(0)
                with m.If(c_g == g_last):
                    m.d.sync += c_g.eq(0)
                    with m.If(t_last):                # phase done
                        m.d.sync += [c_t.eq(0), c_xbase.eq(0), c_ph.eq(1), c_done.eq(c_ph),
                                     c_wbase.eq(self.gu_depth)]
                    with m.Else():
                        m.d.sync += [c_t.eq(c_t + 1), c_xbase.eq(c_xbase + s_last + 1),
                                     c_wbase.eq(Mux(c_ph, self.gu_depth, 0))]
                with m.Else():
                    m.d.sync += [c_g.eq(c_g + 1), c_wbase.eq(c_wbase + s_last + 1)]
            with m.Else():
                m.d.sync += c_s.eq(c_s + 1)

        # -- MAC results: GU → hidden unit, D → down requantiser ------------------------------
        acc = mac.o_acc
        ap = acc.payload
        i_acc = hid.i_acc
        m.d.comb += [i_acc.valid.eq(acc.valid & ~ap.tag.phase), i_acc.payload.last.eq(ap.tag.tlast)]
        for i in range(L):
            if self.swiglu:
                m.d.comb += [i_acc.payload.gate[i].eq(ap.data[i]), i_acc.payload.up[i].eq(ap.data[L + i])]
            else:
                m.d.comb += i_acc.payload.up[i].eq(ap.data[i])

        # down requantiser: 5 stages (A: param read, P: params in a register, B: product,
        # C: rounding, O: saturation = o_y)
        dr = dprm.read_port()
        a_valid, pm_valid, b_valid, c_valid = (Signal(name=f"rq{x}_valid") for x in "apbc")
        a_en, pm_en, b_en, c_en, o_en = (Signal(name=f"rq{x}_en") for x in "apbco")
        o_y = self.o_y
        m.d.comb += [
            o_en.eq(~o_y.valid | o_y.ready),
            c_en.eq(~c_valid | o_en),
            b_en.eq(~b_valid | c_en),
            pm_en.eq(~pm_valid | b_en),
            a_en.eq(~a_valid | pm_en),
            acc.ready.eq(Mux(ap.tag.phase, a_en, i_acc.ready)),
            dr.addr.eq(Mux(ap.tag.bank, G_D, 0) + ap.tag.group), dr.en.eq(a_en),
        ]
        a_acc = [Signal(signed(ACC_BITS), name=f"rqa_acc{r}") for r in range(R)]
        a_tok, a_last, a_jlast = Signal(index_shape(T_max), name="rqa_token"), Signal(name="rqa_last"), Signal(name="rqa_jlast")
        with m.If(a_en):
            m.d.sync += [a_valid.eq(acc.valid & ap.tag.phase), a_tok.eq(ap.tag.token),
                         a_last.eq(ap.tag.tlast), a_jlast.eq(ap.tag.jlast)]
            m.d.sync += [a_acc[r].eq(ap.data[r]) for r in range(R)]
        # P: the beat's M and S in registers. The block RAM's output is slow and the product
        # after it wide: apart, each fits a cycle at the board's clock; together they were the
        # design's longest path. (The read port holds A's data while A holds its beat; from P on
        # the values are registers, so the next job's loader may rewrite this bank meanwhile.)
        pm_acc = [Signal(signed(ACC_BITS), name=f"rqp_acc{r}") for r in range(R)]
        pm_mult = [Signal(MULT_BITS, name=f"rqp_mult{r}") for r in range(R)]
        pm_shift = [Signal(SHIFT_BITS, name=f"rqp_shift{r}") for r in range(R)]
        pm_tok, pm_last, pm_jlast = Signal(index_shape(T_max), name="rqp_token"), Signal(name="rqp_last"), Signal(name="rqp_jlast")
        with m.If(pm_en):
            m.d.sync += [pm_valid.eq(a_valid), pm_tok.eq(a_tok), pm_last.eq(a_last), pm_jlast.eq(a_jlast)]
            for r in range(R):
                m.d.sync += [pm_acc[r].eq(a_acc[r]), pm_mult[r].eq(dr.data[r].mult),
                             pm_shift[r].eq(dr.data[r].shift)]
        # rq_16 in `RequantPipeline`'s three stages (B: product, C: rounding, O: saturation
        # into o_y), each lane with its channel's M and S; token, last and job-last ride along.
        rq = RequantPipeline(lanes=R, acc_bits=ACC_BITS, out_bits=OUT_BITS,
                             names=("rqb_prod", "rqb_shift", "rqc_round"))
        b_tok, b_last, b_jlast = Signal(index_shape(T_max), name="rqb_token"), Signal(name="rqb_last"), Signal(name="rqb_jlast")
        with m.If(b_en):
            m.d.sync += [b_valid.eq(pm_valid), b_tok.eq(pm_tok), b_last.eq(pm_last), b_jlast.eq(pm_jlast)]
            rq.product(m, pm_acc, pm_mult, pm_shift)
        c_tok, c_last, c_jlast = Signal(index_shape(T_max), name="rqc_token"), Signal(name="rqc_last"), Signal(name="rqc_jlast")
        with m.If(c_en):
            m.d.sync += [c_valid.eq(b_valid), c_tok.eq(b_tok), c_last.eq(b_last), c_jlast.eq(b_jlast)]
            rq.round(m)
        o_jlast = Signal(name="o_jlast")
        with m.If(o_en):
            m.d.sync += [o_y.valid.eq(c_valid), o_y.payload.token.eq(c_tok),
                         o_y.payload.last.eq(c_last), o_jlast.eq(c_jlast)]
            rq.output(m, o_y.payload.data)

        # -- job control ----------------------------------------------------------------------
        # A job is taken when the loader has fetched the previous one's whole image and no job
        # waits; a job of 0 tokens is dropped. It becomes cur as soon as cur has issued every op.
        accept = self.i_job.valid & self.i_job.ready & (self.i_job.payload.n_tokens != 0)
        job_end = o_y.valid & o_y.ready & o_jlast
        m.d.comb += self.i_job.ready.eq(~nxt_valid & (ld_sec == 4))
        m.d.sync += jobs.eq(jobs + accept - job_end)
        with m.If(accept):
            m.d.sync += [nxt_valid.eq(1), nxt_tok.eq(self.i_job.payload.n_tokens),
                         nxt_bank.eq(bank_next), bank_next.eq(~bank_next),
                         base_l.eq(self.i_job.payload.w_base), bank_l.eq(bank_next),
                         ld_on_nxt.eq(1), ld_sec.eq(0)]
            m.d.sync += [s.eq(0) for s in resets]
        with m.If(c_done & nxt_valid):                # nxt becomes cur
            m.d.sync += [n_tok_c.eq(nxt_tok), bank_c.eq(nxt_bank), nxt_valid.eq(0),
                         ld_on_nxt.eq(0), x_on_nxt.eq(0), tokens_h.eq(0), hb_addr.eq(0),
                         c_ph.eq(0), c_done.eq(0), c_t.eq(0), c_g.eq(0), c_s.eq(0),
                         c_wbase.eq(0), c_xbase.eq(0)]
        return m
