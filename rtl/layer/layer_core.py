"""`LayerCore`: one MoE layer's compute for a batch of tokens, bit-exact with ``forward_int``.

token buffer → `Router` → `Dispatch` → expert-major scheduler → routed `ExpertFFN` (weights from
the expert cache) and shared `ExpertFFN` (weights on chip) → `Combiner` → output buffer.

A batch of ``T`` tokens (``1 .. t_max``) already in the token buffer runs in three overlapping
phases after ``i_run``:

1. **Route.** The tokens stream from the token buffer into the router (``D/C`` words each); each
   route beat goes into the dispatch table (per expert: its tokens in token order, their gates)
   and the token's shared-expert gate is kept. Meanwhile the shared engine (if any) has taken
   its one job of all ``T`` tokens and computes.
2. **Experts.** Experts are visited in ascending index from the run on; each one with at least
   one token and not disabled by ``expert_off`` is requested on ``o_req`` as soon as the cache
   takes the request (requests run ahead of grants: the cache prefetches). The visit does not
   wait for the routing: an expert is requested as soon as a routed token has chosen it, but
   passed over (no token) only once every token is routed, a disabled one at once. So the
   requests are the same experts in the same order as those of a visit after routing, and the
   first fetches (expert 0's in nearly every batch) overlap the routing. Grants are taken only
   after routing (the counts are final then). A grant ``{expert, slot, hit}`` becomes a job
   ``{n_tokens = count[expert], w_base = slot · image_words}`` of the routed engine, taken in the
   same cycle (``i_grant.ready`` is the engine's ``i_job.ready`` while a request is outstanding
   and routing is over); its tokens then stream from the token buffer in dispatch-list order.
   The job's slot is released (``release`` pulse) in the first cycle after the grant in which
   the engine's ``i_job.ready`` is high again: the engine has its whole image in its own weight
   buffer. Jobs are handled in grant order, the expert taken from the grant, so the cache may
   grant in any order as long as each request is granted once (the tests' fixture grants in
   request order).
3. **Combine.** Each engine output beat (job-local token, ``R`` int16) becomes a combiner
   contribution ``{token, gate, data, last}``: the routed engine's token and gate come from the
   dispatch list of the job's expert, the shared engine's gate is the token's shared gate (a
   shared output waits until its token is routed). The two sources are arbitrated per whole
   contribution (round robin at ``last``); the shared engine's outputs pass a FIFO of two
   contributions and one enters the arbiter only once its last beat is in, so it never holds
   the routed engine (the critical path) for more than ``D/L`` cycles. The combiner runs on
   ``L = cfg.combiner_lanes`` lanes (a divisor of ``R`` that keeps up with the engines' output
   rate, see `AccelConfig.combiner_lanes`): a `Gearbox` splits each ``R``-lane contribution
   beat into ``R/L`` beats (``last`` on the final one) and another joins its ``L``-lane ``y``
   into the output buffer's ``R``-lane words (both are wires when ``L = R``). When every
   expert has been visited, every request granted and all their contributions are in the
   combiner (``Σ count[e]`` over the requested experts, ``+ T`` with an enabled shared expert:
   ``T·(k + [shared])`` without a mask or skipping), the combiner is flushed with ``n_tokens = T``
   (``T·D/L`` cycles) and its ``y`` is written to the output buffer; then ``done`` pulses.

With expert skipping (``skip_threshold``) the entries a token skips never reach the dispatch
table: an expert no token of the batch keeps has count 0, so it is neither requested (fetched)
nor computed, and a kept expert's job covers only the tokens that keep it.

A disabled routed expert is skipped by the scheduler as if no token had chosen it (not
requested, not computed, no contribution); a disabled shared expert's engine gets no job. The
routing and the dispatch table are the same either way. ``acc_rd`` reads the combiner's
accumulators (``Σ g·o`` of the enabled experts) of the last batch until the next ``i_run``.

Ports (``C = mac_cols``, ``R = mac_rows``, ``L = combiner_lanes``, ``D = d_model``; words of
int8 have lane ``c`` in bits ``8c .. 8c+7``)
---------------------------------------------------------------------------------------------
``tok_wr``         in ``{addr, data, en}``: token buffer write, words of ``C`` input values
                   (int8, or int16 with ``input_bits = 16``, lane ``c`` in bits
                   ``c·ib .. c·ib + ib - 1``): token ``t``
                   element ``d`` at word ``t·(D/C) + d // C``, lane ``d % C``. Write between
                   batches (not while ``busy``).
``router_wr``      in: the `Router`'s ``wr`` port (`router_image` with ``lanes = C``).
``shared_wr``      in ``{addr, data, en}``: the shared expert's image memory, words of ``C`` int8
                   (`expert_image` of the shared bank, ``shared_image_words`` words). Only
                   with a shared expert (without one there is nothing it could write).
``y_mult``, ``y_shift``  in (16, 6 bits): the combiner's ``M_y``, ``S_y`` (sampled at the flush).
``x_shift``        in (4 bits), only with ``input_bits = 16``: ``S_x`` (1..8); the router takes the
                   int16 tokens whole, the expert engines ``sat_8(rshift(x, S_x))`` of each
                   element, derived on the way out of the token buffer. Hold it while ``busy``.
``expert_off``     in (``E + 1`` bits, ``E`` without a shared expert): bit ``e`` set disables
                   routed expert ``e``, bit ``E`` the shared expert; 0 runs every expert. Hold it while
                   ``busy``.
``i_run``          in stream ``{n_tokens}``: run a batch of ``n_tokens`` (``1 .. t_max``, unchecked)
                   tokens from the token buffer; ``ready`` exactly when not ``busy``.
``done``           out: one-cycle pulse once the batch's outputs are all in the output buffer.
``busy``           out: from the cycle after ``i_run``'s transfer to ``done``.
``out_rd``         in ``{addr, en}``, out ``{data}``: output buffer read, words of ``R`` int8: token
                   ``t`` element ``d`` at word ``t·(D/R) + d // R``, lane ``d % R``; latency 1.
``acc_rd``         in ``{token, beat, en}``, out ``{data, touched}``: the combiner's ``acc_rd``:
                   ``L`` signed accumulators (``combiner.acc_width`` bits) of token ``token``,
                   elements ``beat·L ..``, if ``touched`` (else 0: no enabled expert contributed
                   to the token); latency 1, held while ``en`` is low. Read between batches.
``o_req``          out stream ``{expert}`` (``max(1, ceil_log2(E))`` bits): expert wanted next.
``i_grant``        in stream ``{expert, slot, hit}`` (slot ``max(1, ceil_log2(slots))`` bits): an
                   expert's image is at ``slot · image_words`` behind ``w_rd``. ``hit`` is not used.
``release``        out: the oldest granted slot is no longer needed (one pulse per grant).
``w_rd``           out ``{addr, en}``, in ``{data}``: the routed engine's weight read port, words
                   of ``C`` int8, latency 1; ``ceil_log2(slots · image_words)`` address bits.
counters (out 32)  cleared when ``i_run`` is accepted, final at ``done``:
                   ``cycles`` (``i_run`` transfer to ``done``), ``router_cycles`` (``i_run``
                   transfer to the cycle the last route entry is in the dispatch table),
                   ``mac_busy``/``mac_total`` (routed engine: cycles its MAC array did an op /
                   cycles it had a job, summed over its busy periods of the batch),
                   ``shared_mac_busy``, ``experts_run`` (jobs issued), ``tokens_routed``.

Attributes: ``image_words`` (one routed expert's image), ``shared_image_words`` (0 without a
shared expert), ``slots``, and the layouts ``req_layout``, ``grant_layout``, ``run_layout``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.config import AccelConfig
from moeforge.spec.arith import X_BITS, X_SHIFT_BITS, X_SHIFT_MAX, X_WIDE_BITS
from moeforge.spec.protocol import CORE_COUNTERS

from .combiner import Combiner, contrib_layout, y_layout
from ..routing.dispatch import Dispatch, pick
from ..expert.expert_ffn import ExpertFFN, ExpertImageLayout
from moeforge.checks import check_int
from ..datapath.arith import round_shift, saturate, times_table
from ..datapath.gearbox import Gearbox
from ..datapath.skid import SkidBuffer
from ..datapath.mac_array import COUNTER_BITS, index_shape, weight_word
from ..routing.router import Router
from .token_reader import TokenReader

__all__ = ["LayerCore", "request_layout", "grant_layout"]

JOB_QUEUE = 4        # jobs granted whose outputs are not all mapped yet (the engine holds 2)


def request_layout(cfg: AccelConfig) -> data.StructLayout:
    """``o_req`` payload: ``{expert}``, ``max(1, ceil_log2(n_experts))`` bits."""
    return data.StructLayout({"expert": unsigned(max(1, ceil_log2(cfg.n_experts)))})


def grant_layout(cfg: AccelConfig, slots: int | None = None) -> data.StructLayout:
    """``i_grant`` payload: ``{expert, slot, hit}``; ``slot`` has ``max(1, ceil_log2(slots))`` bits
    (``slots`` defaults to ``cfg.cache_slots``)."""
    slots = cfg.cache_slots if slots is None else slots
    return data.StructLayout({"expert": unsigned(max(1, ceil_log2(cfg.n_experts))),
                              "slot": unsigned(max(1, ceil_log2(slots))), "hit": 1})


class LayerCore(wiring.Component):
    """One MoE layer over a batch of tokens (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        The layer and the hardware (MAC array, ``token_buffer_depth``, cache slots).
    slots : int, optional
        Weight slots behind ``w_rd`` (the grant's slot range), in [1, 65536]; default
        ``cfg.cache_slots``. A test fixture that keeps every expert's image in place uses
        ``n_experts``.

    Raises
    ------
    TypeError
        If `cfg` is not an `AccelConfig` or `slots` not an integer.
    ValueError
        If `slots` is out of range, or a unit cannot be built for `cfg` (e.g. ``d_model`` not
        a multiple of ``mac_rows`` and ``mac_cols``).
    """

    def __init__(self, cfg: AccelConfig, *, slots: int | None = None, src_loc_at: int = 0):
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        slots = cfg.cache_slots if slots is None else slots
        check_int("slots", slots, 1, 1 << 16)
        self.cfg, self.slots = cfg, slots
        D, C, R, T_max = cfg.d_model, cfg.mac_cols, cfg.mac_rows, cfg.token_buffer_depth
        self.image_words = ExpertImageLayout.from_config(cfg).words
        self.w_addr_width = max(1, ceil_log2(slots * self.image_words))
        loc = 1 + src_loc_at
        # the units (created here so that their parameter checks run now)
        self.router = Router.from_config(cfg, lanes=C, src_loc_at=loc)
        self.engine = ExpertFFN.from_config(cfg, w_addr_width=self.w_addr_width, src_loc_at=loc)
        self.shared = None
        self.shared_image_words = 0
        if cfg.shared_d_ff:
            self.shared = ExpertFFN(activation=cfg.activation, d_model=D, d_ff=cfg.shared_d_ff,
                                    rows=R, cols=C, t_max=T_max, rotation=cfg.rotation_block,
                                    weight_bits=cfg.weight_bits, src_loc_at=loc)
            self.shared_image_words = self.shared.image.words
        # the combiner on L = cfg.combiner_lanes lanes (it keeps up with the engines' R-lane
        # outputs); gearboxes split their contributions into L-lane beats and join its y into
        # the output buffer's R-lane words (wires only when L = R)
        self.combiner = Combiner.from_config(cfg, lanes=cfg.combiner_lanes, src_loc_at=loc)
        self.contrib_gearbox = Gearbox(contrib_layout(t_max=T_max, lanes=R),
                                       self.combiner.contrib_layout, src_loc_at=loc)
        self.y_gearbox = Gearbox(self.combiner.y_layout, y_layout(t_max=T_max, lanes=R),
                                 src_loc_at=loc)
        self.dispatch = Dispatch(n_experts=cfg.n_experts, top_k=cfg.top_k, t_max=T_max,
                                 shared=self.shared is not None, skip=bool(self.router.skip),
                                 src_loc_at=loc)
        self.wide = cfg.input_bits == X_WIDE_BITS
        self.token_word = data.ArrayLayout(signed(cfg.input_bits), C)
        self.feed = TokenReader(slices=D // C, t_max=T_max, word=self.token_word, src_loc_at=loc)
        self.shared_feed = (TokenReader(slices=D // C, t_max=T_max, word=self.token_word,
                                        src_loc_at=loc) if self.shared is not None else None)

        self.req_layout = request_layout(cfg)
        self.grant_layout = grant_layout(cfg, slots)
        self.run_layout = data.StructLayout({"n_tokens": unsigned(T_max.bit_length())})
        word_c, word_r = weight_word(C), weight_word(R)
        members = {
            "tok_wr": In(wiring.Signature({"addr": Out(index_shape(T_max * (D // C))),
                                           "data": Out(self.token_word), "en": Out(1)})),
            "router_wr": In(self.router.wr.signature.flip()),
        }
        if self.shared is not None:
            sh_aw = max(1, ceil_log2(self.shared_image_words))
            members["shared_wr"] = In(wiring.Signature({"addr": Out(sh_aw), "data": Out(word_c),
                                                        "en": Out(1)}))
        members.update({
            "y_mult": In(16),
            "y_shift": In(6),
            **({"x_shift": In(X_SHIFT_BITS)} if self.wide else {}),
            "expert_off": In(cfg.n_experts + (1 if cfg.shared_d_ff else 0)),
            "i_run": In(stream.Signature(self.run_layout)),
            "done": Out(1),
            "busy": Out(1),
            "out_rd": In(wiring.Signature({"addr": Out(index_shape(T_max * (D // R))),
                                           "en": Out(1), "data": In(word_r)})),
            "acc_rd": In(self.combiner.acc_rd.signature.flip()),
            "o_req": Out(stream.Signature(self.req_layout)),
            "i_grant": In(stream.Signature(self.grant_layout)),
            "release": Out(1),
            "w_rd": Out(wiring.Signature({"addr": Out(self.w_addr_width), "en": Out(1),
                                          "data": In(word_c)})),
        })
        members.update({name: Out(COUNTER_BITS) for name in CORE_COUNTERS})
        super().__init__(members, src_loc_at=loc)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, slots: int | None = None,
                    src_loc_at: int = 0) -> "LayerCore":
        """The layer core of `cfg` (the same as ``LayerCore(cfg, slots=slots)``)."""
        return cls(cfg, slots=slots, src_loc_at=1 + src_loc_at)

    def mac_ops(self, counts) -> int:
        """MAC-array ops of the routed engine for a batch whose experts got `counts` tokens
        (``Σ_e T_e · 3FD/(R·C)`` for SwiGLU, ``2FD/(R·C)`` for ReLU): the exact ``mac_busy``."""
        return sum(self.engine.busy(int(n)) for n in counts)

    def _expert_word(self, word):
        """The expert engines' int8 word of a token-buffer word: ``sat_8(rshift(x, S_x))`` per
        lane with a wide input (docs/arithmetic.md §2), the word itself otherwise."""
        if not self.wide:
            return word
        # each lane saturated to the int8 range, so its low 8 bits are the value
        return Cat(*(saturate(round_shift(word[i], self.x_shift, max_shift=X_SHIFT_MAX), X_BITS)[:X_BITS]
                     for i in range(self.cfg.mac_cols)))

    # ------------------------------------------------------------------ elaboration
    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        D, C, R, T_max = cfg.d_model, cfg.mac_cols, cfg.mac_rows, cfg.token_buffer_depth
        E, k = cfg.n_experts, cfg.top_k
        m.submodules.router = router = self.router
        m.submodules.dispatch = disp = self.dispatch
        m.submodules.engine = eng = self.engine
        m.submodules.combiner = comb = self.combiner
        m.submodules.contrib_gearbox = cgb = self.contrib_gearbox
        m.submodules.y_gearbox = ygb = self.y_gearbox
        wiring.connect(m, cgb.o, comb.i_contrib)
        wiring.connect(m, comb.o_y, ygb.i)
        m.submodules.feed = feed = self.feed
        sh = self.shared
        if sh is not None:
            m.submodules.shared = sh
            m.submodules.shared_feed = sfeed = self.shared_feed

        # -- buffers ----------------------------------------------------------------------------
        m.submodules.tok_buf = tbuf = Memory(shape=self.token_word, depth=max(2, T_max * (D // C)),
                                             init=[])
        twp = tbuf.write_port()
        m.d.comb += [twp.addr.eq(self.tok_wr.addr), twp.data.eq(self.tok_wr.data),
                     twp.en.eq(self.tok_wr.en)]
        trp = tbuf.read_port()
        m.d.comb += [trp.addr.eq(feed.rd.addr), trp.en.eq(feed.rd.en), feed.rd.data.eq(trp.data)]
        m.submodules.out_buf = obuf = Memory(shape=weight_word(R), depth=max(2, T_max * (D // R)),
                                             init=[])
        owp, orp = obuf.write_port(), obuf.read_port()
        m.d.comb += [orp.addr.eq(self.out_rd.addr), orp.en.eq(self.out_rd.en),
                     self.out_rd.data.eq(orp.data)]
        wiring.connect(m, wiring.flipped(self.router_wr), router.wr)
        wiring.connect(m, wiring.flipped(self.acc_rd), comb.acc_rd)
        m.d.comb += [self.w_rd.addr.eq(eng.w_rd.addr), self.w_rd.en.eq(eng.w_rd.en),
                     eng.w_rd.data.eq(self.w_rd.data)]

        # -- batch control ----------------------------------------------------------------------
        cb = T_max.bit_length()
        n_tok = Signal(cb, name="n_tokens")
        routing = Signal(name="routing")              # route phase (router fed, table filled)
        run = Signal(name="run")
        m.d.comb += [self.i_run.ready.eq(~self.busy), run.eq(self.i_run.valid & ~self.busy),
                     disp.clear.eq(run)]
        with m.If(run):
            m.d.sync += [n_tok.eq(self.i_run.payload.n_tokens), self.busy.eq(1), routing.eq(1)]
        routed_all = Signal(name="routed_all")
        m.d.comb += routed_all.eq(disp.n_routed == n_tok)
        with m.If(routing & routed_all):
            m.d.sync += routing.eq(0)

        # -- router feed and dispatch -----------------------------------------------------------
        rt = Signal(cb, name="route_token")           # next token into the feed (route phase)
        with m.If(run):
            m.d.sync += rt.eq(0)
        with m.Elif(routing & (rt != n_tok) & feed.i_token.ready):
            m.d.sync += rt.eq(rt + 1)
        rp = router.o_route.payload
        m.d.comb += [disp.i_route.valid.eq(router.o_route.valid),
                     router.o_route.ready.eq(disp.i_route.ready),
                     disp.i_route.payload.experts.eq(rp.experts),
                     disp.i_route.payload.gates.eq(rp.gates)]
        if sh is not None:
            m.d.comb += disp.i_route.payload.shared_gate.eq(rp.shared_gate)
        if self.router.skip:
            m.d.comb += disp.i_route.payload.keep.eq(rp.keep)

        # -- requests: experts with tokens, ascending, from the run on -------------------------
        # The scan visits experts in ascending index from the cycle after the run. An expert
        # with a token (counts only grow) is requested at once, during routing too, so its
        # fetch overlaps the routing. An expert without one is passed only once routing is over
        # (until then a later token may still choose it), a disabled one at once: the requests
        # are the same experts in the same order as for a scan after routing.
        req_e = Signal(range(E + 1), name="req_expert")
        scanning = Signal(name="scanning")
        with m.If(run):
            m.d.sync += [scanning.eq(1), req_e.eq(0)]
        # a disabled expert counts as chosen by no token
        req_off = pick([self.expert_off[e] for e in range(E)], req_e)
        req_count = Mux(req_off, 0, pick(disp.counts, req_e))
        m.d.comb += [self.o_req.valid.eq(scanning & (req_count != 0)),
                     self.o_req.payload.expert.eq(req_e[:len(self.o_req.payload.expert)])]
        with m.If(scanning & Mux(req_count == 0, req_off | ~routing, self.o_req.ready)):
            m.d.sync += req_e.eq(req_e + 1)
            with m.If(req_e == E - 1):
                m.d.sync += scanning.eq(0)
        n_req = Signal(range(E + 1), name="requests")
        n_grant = Signal(range(E + 1), name="grants")
        with m.If(run):
            m.d.sync += n_req.eq(0)
        with m.Elif(self.o_req.valid & self.o_req.ready):
            m.d.sync += n_req.eq(n_req + 1)

        # -- grants → jobs ----------------------------------------------------------------------
        jq_e = [Signal(disp.expert_shape, name=f"job{i}_expert") for i in range(JOB_QUEUE)]
        jq_n = [Signal(cb, name=f"job{i}_tokens") for i in range(JOB_QUEUE)]
        qb = ceil_log2(JOB_QUEUE) + 1
        q_wr, q_x, q_out = (Signal(qb, name=n) for n in ("jobq_wr", "jobq_x", "jobq_out"))
        q_full = Signal(name="jobq_full")
        m.d.comb += q_full.eq((q_wr - q_out)[:qb] == JOB_QUEUE)
        g = self.i_grant
        g_ok = Signal(name="grant_ok")
        # jobs start once routing is over: their token counts are final, the feed is free
        m.d.comb += g_ok.eq((n_req != n_grant) & ~q_full & ~routing)
        g_count = pick(disp.counts, g.payload.expert)
        ji = eng.i_job
        m.d.comb += [
            g.ready.eq(ji.ready & g_ok),
            ji.valid.eq(g.valid & g_ok),
            ji.payload.n_tokens.eq(g_count),
            ji.payload.w_base.eq(times_table(g.payload.slot, self.slots, self.image_words,
                                             self.w_addr_width)),
        ]
        granted = Signal(name="granted")
        m.d.comb += granted.eq(g.valid & g.ready)
        with m.If(run):
            m.d.sync += n_grant.eq(0)
        with m.If(granted):
            m.d.sync += [n_grant.eq(n_grant + 1), q_wr.eq(q_wr + 1),
                         self.experts_run.eq(self.experts_run + 1)]
            for i in range(JOB_QUEUE):
                with m.If(q_wr[:qb - 1] == i):
                    m.d.sync += [jq_e[i].eq(g.payload.expert), jq_n[i].eq(g_count)]
        # release: the first cycle after a grant in which the engine can take a job again
        rel_pending = Signal(name="release_pending")
        m.d.comb += self.release.eq(rel_pending & ji.ready)
        m.d.sync += rel_pending.eq(granted | (rel_pending & ~ji.ready))

        # -- routed x feed: each job's dispatch list → token indices → token words -------------
        x_has = Signal(name="x_has_job")
        m.d.comb += x_has.eq(q_x != q_wr)
        x_e = pick(jq_e, q_x[:qb - 1])
        x_n = pick(jq_n, q_x[:qb - 1])
        x_i = Signal(index_shape(T_max), name="x_index")
        l_v = Signal(name="list_valid")               # a token index in rd_x's data register
        l_en = Signal(name="list_en")
        m.d.comb += [l_en.eq(~l_v | (feed.i_token.ready & ~routing)),
                     disp.rd_x.expert.eq(x_e), disp.rd_x.index.eq(x_i), disp.rd_x.en.eq(l_en)]
        with m.If(l_en):
            m.d.sync += l_v.eq(x_has)
            with m.If(x_has):
                with m.If(x_i == x_n - 1):
                    m.d.sync += [x_i.eq(0), q_x.eq(q_x + 1)]
                with m.Else():
                    m.d.sync += x_i.eq(x_i + 1)
        # the feed: tokens 0..T-1 to the router, then the jobs' lists to the engine
        m.d.comb += [
            feed.i_token.valid.eq(Mux(routing, rt != n_tok, l_v)),
            feed.i_token.payload.token.eq(Mux(routing, rt[:disp.token_shape.width], disp.rd_x.token)),
            router.i_tokens.valid.eq(feed.o_x.valid & routing),
            eng.i_x.valid.eq(feed.o_x.valid & ~routing),
            feed.o_x.ready.eq(Mux(routing, router.i_tokens.ready, eng.i_x.ready)),
            router.i_tokens.payload.data.eq(feed.o_x.payload.data),
            router.i_tokens.payload.last.eq(feed.o_x.payload.last),
            eng.i_x.payload.data.eq(self._expert_word(feed.o_x.payload.data)),
            eng.i_x.payload.last.eq(feed.o_x.payload.last),
        ]

        # -- routed outputs → contributions (token and gate from the job's list) ---------------
        # the engine's outputs through a skid buffer: its o_y.ready is then a register, so the
        # combiner's ready (through the gearbox and the r stage) does not run on into the
        # engine's requantiser and MAC pipeline in the same cycle
        m.submodules.engine_out = eng_out = SkidBuffer(eng.o_y.payload.shape())
        wiring.connect(m, eng.o_y, eng_out.i)
        oy = eng_out.o
        o_e = pick(jq_e, q_out[:qb - 1])
        o_n = pick(jq_n, q_out[:qb - 1])
        r_v, r_en, r_take = Signal(name="r_valid"), Signal(name="r_en"), Signal(name="r_take")
        r_data = Signal(oy.payload.data.shape(), name="r_data")
        r_last = Signal(name="r_last")
        m.d.comb += [r_en.eq(~r_v | r_take), oy.ready.eq(r_en),
                     disp.rd_c.expert.eq(o_e), disp.rd_c.index.eq(oy.payload.token),
                     disp.rd_c.en.eq(r_en)]
        with m.If(r_en):
            m.d.sync += [r_v.eq(oy.valid), r_data.eq(oy.payload.data), r_last.eq(oy.payload.last)]
        with m.If(oy.valid & r_en & oy.payload.last & (oy.payload.token == o_n - 1)):
            m.d.sync += q_out.eq(q_out + 1)

        # -- shared engine: one job of all T tokens, from the run on ----------------------------
        ic = cgb.i                                    # R-lane contributions, to the combiner's L
        if sh is not None:
            sh_on = Signal(name="shared_on")           # the batch's shared expert is enabled
            sh_job = Signal(name="shared_job")
            with m.If(run):
                m.d.sync += [sh_job.eq(~self.expert_off[E]), sh_on.eq(~self.expert_off[E])]
            with m.Elif(sh.i_job.ready):
                m.d.sync += sh_job.eq(0)
            m.d.comb += [sh.i_job.valid.eq(sh_job), sh.i_job.payload.n_tokens.eq(n_tok),
                         sh.i_job.payload.w_base.eq(0)]
            m.submodules.shared_mem = smem = Memory(shape=weight_word(C),
                                                    depth=max(2, self.shared_image_words), init=[])
            swp, srp = smem.write_port(), smem.read_port()
            m.d.comb += [swp.addr.eq(self.shared_wr.addr), swp.data.eq(self.shared_wr.data),
                         swp.en.eq(self.shared_wr.en),
                         srp.addr.eq(sh.w_rd.addr), srp.en.eq(sh.w_rd.en), sh.w_rd.data.eq(srp.data)]
            srp2 = tbuf.read_port()
            m.d.comb += [srp2.addr.eq(sfeed.rd.addr), srp2.en.eq(sfeed.rd.en),
                         sfeed.rd.data.eq(srp2.data)]
            st = Signal(cb, name="shared_token")
            with m.If(run):
                m.d.sync += st.eq(0)
            with m.Elif(self.busy & sh_on & (st != n_tok) & sfeed.i_token.ready):
                m.d.sync += st.eq(st + 1)
            m.d.comb += [sfeed.i_token.valid.eq(self.busy & sh_on & (st != n_tok)),
                         sfeed.i_token.payload.token.eq(st[:disp.token_shape.width])]
            m.d.comb += [sh.i_x.valid.eq(sfeed.o_x.valid), sfeed.o_x.ready.eq(sh.i_x.ready),
                         sh.i_x.payload.data.eq(self._expert_word(sfeed.o_x.payload.data)),
                         sh.i_x.payload.last.eq(sfeed.o_x.payload.last)]
            # outputs: through a FIFO of two contributions (2·D/R beats), so that a shared
            # contribution enters the arbiter only once its last beat is in and then takes D/L
            # consecutive cycles, the combiner's (the shared engine's beats come one per S_F
            # cycles: unbuffered, a shared contribution would hold the routed engine's outputs,
            # and with them its down phase, for D/R·S_F cycles). A token's contribution also
            # waits until its shared gate is in the table.
            sy = sh.o_y
            y_layout = sy.payload.shape()
            per = D // R
            m.submodules.shared_out = sfifo = SyncFIFOBuffered(
                width=Shape.cast(y_layout).width, depth=2 * per)
            sf = data.View(y_layout, sfifo.r_data)
            m.d.comb += [sfifo.w_data.eq(sy.payload.as_value()), sfifo.w_en.eq(sy.valid),
                         sy.ready.eq(sfifo.w_rdy)]
            s_v, s_en, s_take = Signal(name="s_valid"), Signal(name="s_en"), Signal(name="s_take")
            s_data = Signal(sy.payload.data.shape(), name="s_data")
            s_tok = Signal(sy.payload.token.shape(), name="s_token")
            s_last = Signal(name="s_last")
            s_ok = Signal(name="s_gate_known")
            m.d.comb += [s_en.eq(~s_v | s_take), s_ok.eq(sf.token < disp.n_routed),
                         sfifo.r_en.eq(s_en & s_ok),
                         disp.rd_sh.token.eq(sf.token), disp.rd_sh.en.eq(s_en)]
            with m.If(s_en):
                m.d.sync += [s_v.eq(sfifo.r_rdy & s_ok), s_data.eq(sf.data),
                             s_tok.eq(sf.token), s_last.eq(sf.last)]
            # whole shared contributions in the FIFO and the s stage (the oldest is complete
            # when there is any: contributions come in order)
            s_whole = Signal(range(2 * per + 2), name="s_whole")
            m.d.sync += s_whole.eq(s_whole + (sy.valid & sy.ready & sy.payload.last)
                                   - (s_take & s_last))
            # arbiter: whole contributions, round robin; the choice holds while a beat waits
            locked, owner, prio = (Signal(name=n) for n in ("arb_locked", "arb_owner", "arb_prio"))
            use_s = Signal(name="arb_shared")
            m.d.comb += use_s.eq(Mux(locked, owner, s_v & (s_whole != 0) & (~r_v | prio)))
            m.d.comb += [
                ic.valid.eq(Mux(use_s, s_v, r_v)),
                ic.payload.token.eq(Mux(use_s, s_tok, disp.rd_c.token)),
                ic.payload.gate.eq(Mux(use_s, disp.rd_sh.gate, disp.rd_c.gate)),
                ic.payload.data.eq(Mux(use_s, s_data, r_data)),
                ic.payload.last.eq(Mux(use_s, s_last, r_last)),
                r_take.eq(ic.valid & ic.ready & ~use_s),
                s_take.eq(ic.valid & ic.ready & use_s),
            ]
            with m.If(ic.valid & ic.ready & ic.payload.last):
                m.d.sync += [locked.eq(0), prio.eq(~use_s)]
            with m.Elif(ic.valid):
                m.d.sync += [locked.eq(1), owner.eq(use_s)]
        else:
            m.d.comb += [ic.valid.eq(r_v), ic.payload.token.eq(disp.rd_c.token),
                         ic.payload.gate.eq(disp.rd_c.gate), ic.payload.data.eq(r_data),
                         ic.payload.last.eq(r_last), r_take.eq(ic.valid & ic.ready)]

        # -- flush when every contribution is in; y → output buffer; done -----------------------
        # Expected: T for an enabled shared expert, plus each requested expert's count as its
        # grant becomes a job (after routing: the count is final); final once the scan is over
        # and every request is granted.
        terms = k + (1 if sh is not None else 0)
        nb = (T_max * terms).bit_length()
        n_contrib = Signal(nb, name="contributions")
        n_expect = Signal(nb, name="contributions_expected")
        flushed = Signal(name="flushed")
        fl = comb.i_flush
        with m.If(run):
            m.d.sync += [n_contrib.eq(0), flushed.eq(0),
                         n_expect.eq(0 if sh is None else
                                     Mux(self.expert_off[E], 0, self.i_run.payload.n_tokens))]
        with m.Else():
            # counted as they enter the combiner (not the gearbox): the flush must follow them
            cin = comb.i_contrib
            with m.If(cin.valid & cin.ready & cin.payload.last):
                m.d.sync += n_contrib.eq(n_contrib + 1)
            with m.If(granted):
                m.d.sync += n_expect.eq(n_expect + g_count)
        m.d.comb += [fl.valid.eq(self.busy & ~flushed & ~routing & ~scanning &
                                 (n_req == n_grant) & (n_contrib == n_expect)),
                     fl.payload.n_tokens.eq(n_tok)]
        with m.If(fl.valid & fl.ready):
            m.d.sync += flushed.eq(1)
        cy = ygb.o
        o_addr = Signal(index_shape(T_max * (D // R)), name="out_addr")
        m.d.comb += [cy.ready.eq(1), owp.addr.eq(o_addr), owp.data.eq(cy.payload.data),
                     owp.en.eq(cy.valid)]
        with m.If(run):
            m.d.sync += o_addr.eq(0)
        with m.Elif(cy.valid):
            m.d.sync += o_addr.eq(o_addr + 1)
        finish = Signal(name="finish")
        m.d.comb += finish.eq(cy.valid & cy.payload.last & (cy.payload.token == n_tok - 1))
        m.d.sync += self.done.eq(finish)
        with m.If(finish):
            m.d.sync += self.busy.eq(0)
        m.d.comb += [comb.y_mult.eq(self.y_mult), comb.y_shift.eq(self.y_shift)]

        # -- counters ---------------------------------------------------------------------------
        with m.If(run):
            m.d.sync += [self.cycles.eq(1), self.router_cycles.eq(1), self.experts_run.eq(0)]
        with m.Else():
            with m.If(self.busy):
                m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(routing):
                m.d.sync += self.router_cycles.eq(self.router_cycles + 1)
        m.d.comb += self.tokens_routed.eq(disp.n_routed)
        _accumulate(m, run, eng.busy_cycles, eng.total_cycles, self.mac_busy, self.mac_total)
        if sh is not None:
            _accumulate(m, run, sh.busy_cycles, sh.total_cycles, self.shared_mac_busy, None)
        return m


def _accumulate(m, clear, busy, total, out_busy, out_total):
    """Sum an engine's MAC counters over its busy periods: each period restarts them (total
    drops to 1), so add the increments, or the value itself after a restart."""
    prev_b = Signal(COUNTER_BITS, name=f"{out_busy.name}_prev")
    prev_t = Signal(COUNTER_BITS, name=f"{out_busy.name}_prev_total")
    m.d.sync += [prev_b.eq(busy), prev_t.eq(total)]
    restart = Signal(name=f"{out_busy.name}_restart")
    m.d.comb += restart.eq(total < prev_t)
    d_b = Mux(restart, busy, (busy - prev_b)[:COUNTER_BITS])
    d_t = Mux(restart, total, (total - prev_t)[:COUNTER_BITS])
    with m.If(clear):
        m.d.sync += out_busy.eq(0)
        if out_total is not None:
            m.d.sync += out_total.eq(0)
    with m.Else():
        m.d.sync += out_busy.eq((out_busy + d_b)[:COUNTER_BITS])
        if out_total is not None:
            m.d.sync += out_total.eq((out_total + d_t)[:COUNTER_BITS])
