"""The router: input tokens (int8, or int16 with ``input_bits = 16``) → top-k experts, their gate
weights and the shared-expert gate.

Per token it computes exactly what ``QuantizedMoELayer.route_int`` (docs/arithmetic.md §3) gives
as ``indices``, ``gates`` and ``shared_gate``:

1. logits ``L_r = rq_32(x · W_r, M_r, S_r)`` for the ``R`` router rows (``E`` experts, plus
   Qwen2's shared-expert gate row with ``shared_gate="sigmoid"``), units 2^-16;
2. ``sigmoid_topk``: ``SIG(L_e)`` for every expert; Qwen2: ``SIG(L_shared)``;
3. selection scores ``c_e`` (``L_e``, or ``SIG(L_e) + b_e`` for ``sigmoid_topk``), the
   ``topk_group`` best groups (``n_group > 1``), the ``k`` best allowed experts, best first,
   ties to the lower index;
4. gates: ``EXP``, sums and ``div15`` (one shared sequential divider), routed scaling.

Interface
---------
``i_tokens`` (in stream, `token_layout`): ``{data: lanes × int(input_bits), last}``. A token is
``d_model / lanes`` consecutive slices, element ``s·lanes + i`` in lane ``i`` of slice ``s``,
``last`` set on its final slice (and only there: the token ends at ``last``).

``o_route`` (out stream, `route_layout`): one beat per token, in token order:
``{experts: k × unsigned(ebits), gates: k × unsigned(22), shared_gate: unsigned(16)}``
(and ``keep: k bits`` with expert skipping), ``ebits = max(1, ceil(log2 E))``. ``experts[j]`` is
the ``j``-th best expert, ``gates[j]`` its Q1.15 weight after routed scaling
(``<= 2^15 · 64 = 2^21``; 0 when skipped), ``shared_gate`` is ``SIG(L_shared)``
(``shared_gate="sigmoid"``), ``32768`` (``"always"``: DeepSeek's always-on shared expert) or
``0`` (``"none"``). ``keep`` bit ``j``: the token keeps ``experts[j]`` (bit 0 always set).

``wr`` (in, a plain write port ``{addr, data, en}``; Verilog ``wr__addr``, ``wr__data``,
``wr__en``): the runtime state, one word per cycle while ``en`` is high. The address map
(`RouterAddressMap`; `router_image` produces the writes from a `QuantizedMoELayer`):

===========================  =================================================================
address                      word
===========================  =================================================================
``r·S + s``                  router weights ``W[r, s·lanes : (s+1)·lanes]``, ``S = D/lanes``,
(``0 <= r < R``,             rows in the order of ``QuantizedMoELayer.router_weight`` (experts,
``0 <= s < S``)              then the shared gate row); lane ``i`` in bits
                             ``[i·rb, (i+1)·rb)`` as ``router_bits``-bit two's complement
``R·S``                      router multiplier ``M_r`` (bits 0-15, unsigned)
``R·S + 1``                  router shift ``S_r`` (bits 0-5, 1..62)
``R·S + 2 + e``              selection bias ``b_e`` (bits 0-31, int32 Q1.15), ``0 <= e < E``;
                             only with ``selection_bias``
===========================  =================================================================

``wr__data`` is ``max(lanes·router_bits, 32 with selection bias else 16)`` bits wide (with the
default ``router_bits = 16`` a weight word is ``lanes`` int16 values); writes to other addresses
are ignored. A write presented in cycle ``c`` (``en`` high) lands at the end of cycle ``c + 1``
(the port is registered). The host writes the state between tokens: a token routed while its
state changes gets an unspecified result. The state is not reset (memories; ``M_r``/``S_r``
reset to 0).

Datapath and cycles
-------------------
A token is buffered (``S`` words of ``lanes`` input values), then a state machine runs the phases below
while ``i_tokens.ready`` is low; the next token is accepted once the route beat has transferred.
Without stalls a token takes `Router.cycles_per_token` cycles from its first slice to the cycle
its route beat transfers (both counted), and the next token's first slice is taken in the cycle
after: that is the throughput, one token per `cycles_per_token` cycles. With ``Q = 16`` (quotient
bits of ``div15``)::

    cycles_per_token = S                         LOAD: one slice per cycle
                     + R·S + 8                   GEMV
                     + n_sig · (Q + 8)           SIG
                     + [E + 1 + topk_group·n_group]   GROUPS, GSEL (n_group > 1)
                     + k · (E + 1)               TOPK
                     + [k + 4 (+ E + 5)]         EXP_SEL (+ EXP_ALL): softmax routings
                     + [k · (Q + 3)]             DIV: unless sigmoid_topk without renormalisation
                     + [1]                       KEEP: skipping, in a routing that normalises
                     + 1                         OUT (plus o_route back-pressure)

e.g. 143 cycles for Mixtral-style d_model 64, E 8, k 2, 8 lanes; 698 for the DeepSeek-V3 family
config (d_model 64, E 16, k 4, 16 sigmoids).

* GEMV: one weight word per cycle (``lanes`` int(ib) × int(rb) products, ``ib = input_bits``,
  registered), an adder tree, the ``ib + rb + ceil(log2 D)``-bit accumulator, ``acc · M_r``, ``sat_32(rshift(·, S_r))``
  and the logit memory write: 8 pipeline stages after the first read. The largest routed logit
  (``softmax_topk``'s reference) is tracked as the logits are written.
* SIG (``n_sig = E`` with ``sigmoid_topk``, +1 for Qwen2's shared gate; 0 otherwise): per row,
  read ``L``, ``EXP(|L|)`` (4 stages: ROM addresses, ROM data, the data registered, rounded
  ``HI·LO``),
  ``div15(L >= 0 ? 2^15 : e, 2^15 + e)`` on the divider (``Q + 1`` cycles).
* GROUPS: one scan of the scores (memory reads, one per cycle) keeping each group's best (and
  second best) score; GSEL: ``topk_group`` passes over the group scores (registers).
* TOPK: ``k`` scans of the scores, each keeping the best allowed expert not taken yet (strictly
  greater replaces: ties to the lower index), ``E + 1`` cycles each.
* EXP_SEL: ``EXP(ref − L_j)`` of the ``k`` selected experts through the EXP pipeline (and their
  sum ``Z``); EXP_ALL (``softmax_topk`` without renormalisation): ``Z`` over every expert.
* DIV: ``div15(e_j, Z)`` (or ``div15(s_j, Σ s)``) per selected expert, then routed scaling
  ``rshift(g · RSF, 12)`` (a constant multiplier; none for a factor of 1.0).
* Expert skipping (``skip`` = ``τ_q`` > 0): the first choice is kept; in a routing that normalises
  over the selected experts, KEEP tests ``div15(num_j, Z) >= τ_q`` as ``num_j·2^15 + (Z >> 1) >=
  τ_q·Z`` (``Z > 0``) for every ``j`` at once and makes ``Z`` the kept experts' sum, so DIV
  divides once, by that sum; otherwise each quotient (or ``s_j``) is compared with ``τ_q`` as it
  is produced. Skipped gates are 0.

The memories: token buffer (``S × lanes·ib`` bits), router weights (``R·S × lanes·rb``), logits
(``R × 32``), ``SIG`` values (``E × 16``, ``sigmoid_topk``), selection bias (``E × 32``), the two
``EXP`` ROMs (512 and 128 × 16, `router_tables`); all read synchronously. Group scores, the
``k`` selected experts and their gates are registers; the divider is `divider_logic`, inlined.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moeforge.config import GROUP_SCORES, INPUT_BITS_CHOICES, MAX_DIM, ROUTINGS, AccelConfig
from moeforge.spec.arith import (BIAS_BITS, EXP_A_LIMIT, EXP_ARG_SHIFT, EXP_HI_SHIFT, EXP_HI_SIZE, EXP_LO_SIZE,
                                 EXP_ROM_BITS, GATE_BITS, GATE_FRAC, GATE_ONE, LOGIT_BITS, MULT_BITS, QUO_BITS,
                                 ROUTER_BITS_MAX, ROUTER_BITS_MIN, RSF_FRAC, RSF_MAX, SHARED_GATE_BITS, SHIFT_BITS,
                                 SIG_BITS, X_BITS)

from moeforge.checks import check_choice, check_int
from moeforge.spec.image import RouterAddressMap, router_image

from ..datapath.arith import round_shift
from ..datapath.divider import divider_logic, divider_op_layout, divider_result_layout
from ..datapath.requantiser import RequantPipeline
from .router_tables import exp_hi_rom, exp_lo_rom

__all__ = ["Router", "RouterAddressMap", "router_image", "token_layout", "route_layout", "DEFAULT_LANES"]

DEFAULT_LANES = 8
SHARED_GATES = ("none", "always", "sigmoid")


def _bits(n: int) -> int:
    """Bits of an index below n (at least 1)."""
    return max(1, (n - 1).bit_length())


def _pick(values, index):
    """``values[index]`` as a multiplexer over every value of `index`: an index past the end
    of `values` reads 0."""
    values = list(values)
    values += [Const(0, values[0].shape())] * ((1 << len(index)) - len(values))
    return Array(values)[index]


def token_layout(*, lanes: int, input_bits: int = X_BITS) -> data.StructLayout:
    """``i_tokens`` payload: ``data`` (lanes × signed `input_bits`, lane 0 in the low bits), ``last``."""
    return data.StructLayout({"data": data.ArrayLayout(signed(input_bits), lanes), "last": unsigned(1)})


def route_layout(*, n_experts: int, top_k: int, skip: bool = False) -> data.StructLayout:
    """``o_route`` payload: ``experts`` (k × unsigned ebits), ``gates`` (k × unsigned 22),
    ``shared_gate`` (unsigned 16), and with expert skipping ``keep`` (k bits); fields LSB first
    in that order."""
    fields = {
        "experts": data.ArrayLayout(unsigned(_bits(n_experts)), top_k),
        "gates": data.ArrayLayout(unsigned(GATE_BITS), top_k),
        "shared_gate": unsigned(SHARED_GATE_BITS),
    }
    if skip:
        fields["keep"] = unsigned(top_k)
    return data.StructLayout(fields)


class Router(wiring.Component):
    """The MoE router (see the module docstring for the interface, address map and cycles).

    Parameters
    ----------
    d_model : int
        Token length, in [1, 65536].
    n_experts : int
        ``E``, in [1, 1024].
    top_k : int
        ``k``, in [1, n_experts].
    routing : str
        ``softmax_topk``, ``topk_softmax`` or ``sigmoid_topk``.
    renormalize : bool
        Divide the selected gates by their sum (``softmax_topk``, ``sigmoid_topk``;
        ``topk_softmax`` always normalises over the k).
    n_group, topk_group : int
        Group-limited selection: ``n_group`` divides ``E``; ``topk_group`` in [1, n_group].
    group_score : str
        ``max`` or ``top2_sum`` (needs two experts per group).
    selection_bias : bool
        Per-expert selection bias (``sigmoid_topk`` only), written through ``wr``.
    rsf : int
        Routed scaling factor in Q.12 (`hls_models.routing.rsf_fixed`), in [0, 64·4096].
    shared_gate : str
        ``none`` (no shared expert: 0), ``always`` (32768) or ``sigmoid`` (Qwen2: one more
        router row, ``SIG`` of its logit).
    router_bits : int
        Router weight width, in [8, 16].
    input_bits : int
        Token element width, 8 or 16 (`AccelConfig.input_bits`).
    skip : int
        Expert skipping threshold ``τ_q`` in Q1.15 (`hls_models.routing.skip_fixed`), in
        [0, 2^15); 0: none. Needs ``top_k >= 2``.
    lanes : int
        Token values per ``i_tokens`` slice and weights per word; divides `d_model`.

    Attributes
    ----------
    i_tokens : ``In(stream.Signature(token_layout(...)))``
    o_route : ``Out(stream.Signature(route_layout(...)))``
    wr : ``In(Signature({addr, data, en}))``
    address_map : RouterAddressMap
    rows : int
        ``R``: router GEMV rows.

    Raises
    ------
    TypeError
        If a parameter has the wrong type.
    ValueError
        If a parameter is out of range or the combination is not a routing the device has.
    """

    def __init__(self, *, d_model: int, n_experts: int, top_k: int,
                 routing: str = "softmax_topk", renormalize: bool = False, n_group: int = 1,
                 topk_group: int = 1, group_score: str = "max", selection_bias: bool = False,
                 rsf: int = 1 << RSF_FRAC, shared_gate: str = "none", router_bits: int = 16,
                 input_bits: int = X_BITS, skip: int = 0, lanes: int = DEFAULT_LANES,
                 src_loc_at: int = 0):
        check_int("d_model", d_model, 1, MAX_DIM)
        check_int("n_experts", n_experts, 1, 1024)
        check_int("top_k", top_k, 1, n_experts)
        check_choice("routing", routing, ROUTINGS)
        for name, flag in (("renormalize", renormalize), ("selection_bias", selection_bias)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, not {flag!r}")
        check_int("n_group", n_group, 1, n_experts)
        if n_experts % n_group:
            raise ValueError(f"n_group must divide n_experts={n_experts}, not {n_group!r}")
        check_int("topk_group", topk_group, 1, n_group)
        per_group = n_experts // n_group
        if top_k > topk_group * per_group:
            raise ValueError(f"top_k must be at most topk_group × experts per group = "
                             f"{topk_group * per_group}, not {top_k!r}")
        check_choice("group_score", group_score, GROUP_SCORES)
        if group_score == "top2_sum" and n_group > 1 and per_group < 2:
            raise ValueError(f"group_score 'top2_sum' needs at least 2 experts per group, "
                             f"not {per_group}")
        if selection_bias and routing != "sigmoid_topk":
            raise ValueError(f"selection_bias is only defined for routing 'sigmoid_topk', "
                             f"not {routing!r}")
        check_int("rsf", rsf, 0, RSF_MAX)
        check_choice("shared_gate", shared_gate, SHARED_GATES)
        check_int("router_bits", router_bits, ROUTER_BITS_MIN, ROUTER_BITS_MAX)
        check_choice("input_bits", input_bits, INPUT_BITS_CHOICES)
        check_int("skip", skip, 0, GATE_ONE - 1)
        if skip and top_k < 2:
            raise ValueError("skip needs top_k >= 2 (the first choice is always kept)")
        check_int("lanes", lanes, 1, d_model)
        if d_model % lanes:
            raise ValueError(f"lanes must divide d_model={d_model}, not {lanes!r}")

        self.d_model = d_model
        self.n_experts = n_experts
        self.top_k = top_k
        self.routing = routing
        self.renormalize = renormalize
        self.n_group = n_group
        self.topk_group = topk_group
        self.group_score = group_score
        self.selection_bias = selection_bias
        self.rsf = rsf
        self.shared_gate = shared_gate
        self.router_bits = router_bits
        self.input_bits = input_bits
        self.skip = skip
        self.lanes = lanes
        self.slices = d_model // lanes
        self.rows = n_experts + (1 if shared_gate == "sigmoid" else 0)
        self.address_map = RouterAddressMap(rows=self.rows, slices=self.slices, lanes=lanes,
                                            router_bits=router_bits,
                                            n_bias=n_experts if selection_bias else 0)
        self.token_layout = token_layout(lanes=lanes, input_bits=input_bits)
        self.route_layout = route_layout(n_experts=n_experts, top_k=top_k, skip=bool(skip))
        amap = self.address_map
        super().__init__({
            "i_tokens": In(stream.Signature(self.token_layout)),
            "o_route": Out(stream.Signature(self.route_layout)),
            "wr": In(wiring.Signature({"addr": Out(amap.addr_bits), "data": Out(amap.data_bits),
                                       "en": Out(1)})),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, lanes: int = DEFAULT_LANES,
                    src_loc_at: int = 0) -> "Router":
        """The router of `cfg` (every routing field, ``router_bits``, the shared expert).

        Raises
        ------
        TypeError
            If `cfg` is not an `AccelConfig`.
        ValueError
            If `lanes` does not divide ``cfg.d_model``.
        """
        from moeforge.hls_models.routing import rsf_fixed, skip_fixed
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        shared = ("sigmoid" if cfg.shared_gate == "sigmoid"
                  else "always" if cfg.shared_d_ff else "none")
        return cls(d_model=cfg.d_model, n_experts=cfg.n_experts, top_k=cfg.top_k,
                   routing=cfg.routing, renormalize=cfg.renormalize, n_group=cfg.n_group,
                   topk_group=cfg.topk_group, group_score=cfg.group_score,
                   selection_bias=cfg.selection_bias, rsf=rsf_fixed(cfg), shared_gate=shared,
                   router_bits=cfg.router_bits, input_bits=cfg.input_bits, skip=skip_fixed(cfg),
                   lanes=lanes,
                   src_loc_at=1 + src_loc_at)

    # ------------------------------------------------------------------ derived properties
    @property
    def n_sig(self) -> int:
        """Sigmoids per token: every expert's (``sigmoid_topk``) and the shared gate's."""
        return ((self.n_experts if self.routing == "sigmoid_topk" else 0)
                + (1 if self.shared_gate == "sigmoid" else 0))

    @property
    def divides(self) -> bool:
        """Whether the gates go through ``div15`` (all but un-normalised sigmoid routing)."""
        return self.routing != "sigmoid_topk" or self.renormalize

    @property
    def normalises(self) -> bool:
        """The gates are normalised over the selected experts (over the kept ones with skipping)."""
        return self.routing == "topk_softmax" or self.renormalize

    @property
    def keeps_before_dividing(self) -> bool:
        """Skipping in a routing that normalises: KEEP decides the kept experts from the sums
        before the divisions, which then divide by the kept experts' sum."""
        return bool(self.skip) and self.normalises

    @property
    def z_over_all(self) -> bool:
        """``softmax_topk`` without renormalisation: ``Z`` sums ``EXP`` over every expert."""
        return self.routing == "softmax_topk" and not self.renormalize

    @property
    def acc_width(self) -> int:
        """GEMV accumulator: ``input_bits + router_bits + ceil(log2 d_model)`` signed bits (exact)."""
        return self.input_bits + self.router_bits + (self.d_model - 1).bit_length()

    def cycles_per_token(self) -> int:
        """Cycles per token without stalls (see the module docstring's table)."""
        E, k, S, R, q = self.n_experts, self.top_k, self.slices, self.rows, QUO_BITS
        cycles = S + R * S + 8 + self.n_sig * (q + 8) + k * (E + 1) + 1
        if self.n_group > 1:
            cycles += E + 1 + self.topk_group * self.n_group
        if self.routing != "sigmoid_topk":
            cycles += k + 4 + (E + 5 if self.z_over_all else 0)
        if self.divides:
            cycles += k * (q + 3) + (1 if self.keeps_before_dividing else 0)
        return cycles

    # ------------------------------------------------------------------ elaboration
    #
    # `elaborate` calls one part per stage of the pipeline, in datapath order, each adding to the
    # same Module; `net` carries the signals and helpers a later part needs. The phases are an
    # If/Elif chain on a state register whose encoding lists only the states this configuration
    # has (`_states`). Memory port signals are registers themselves or driven by expressions, and
    # read data is used in place; the divider is `divider_logic`, inlined.
    def elaborate(self, platform):
        m = Module()
        net = SimpleNamespace()
        self._states(net)
        self._memories(m, net)
        self._host_writes(m, net)
        self._divider(m, net)
        self._exp_pipeline(m, net)
        self._token_load(m, net)
        self._gemv(m, net)
        self._expert_scan(m, net)
        self._selection_score(m, net)
        if self.n_group > 1:
            self._group_limit(m, net)
        else:
            net.allowed_now = Const(1, 1)
        self._topk_registers(m, net)
        self._fixed_shared_gate(m, net)
        self._control(m, net)
        return m

    def _states(self, net) -> None:
        """The state register and its encoding: one code per phase this configuration has."""
        sigmoid = self.routing == "sigmoid_topk"
        names = ["LOAD", "GEMV"]
        if self.n_sig:
            names += ["SIG_RD", "SIG_EXP", "SIG_WAIT", "SIG_GO", "SIG_DONE"]
        if self.n_group > 1:
            names += ["GROUPS", "GSEL"]
        names += ["TOPK"]
        if not sigmoid:
            names += ["EXP_SEL"] + (["EXP_ALL"] if self.z_over_all else [])
        if self.keeps_before_dividing:
            names += ["KEEP"]
        if self.divides:
            names += ["DIV_LOAD", "DIV_GO", "DIV_DONE"]
        names += ["OUT"]
        code = {n: i for i, n in enumerate(names)}
        state = Signal(range(len(names)), name="state")

        def goto(name):
            return state.eq(code[name])

        net.code, net.state, net.goto = code, state, goto

    def _memories(self, m, net) -> None:
        """Token buffer, router weights, logits, SIG values, selection bias and the EXP ROMs."""
        E, R, S, lanes, rb = self.n_experts, self.rows, self.slices, self.lanes, self.router_bits
        m.submodules.x_mem = x_mem = Memory(shape=data.ArrayLayout(signed(self.input_bits), lanes),
                                            depth=max(2, S), init=[])
        m.submodules.w_mem = w_mem = Memory(shape=data.ArrayLayout(signed(rb), lanes),
                                            depth=max(2, R * S), init=[])
        m.submodules.l_mem = l_mem = Memory(shape=signed(LOGIT_BITS), depth=max(2, R), init=[])
        m.submodules.hi_rom = hi_rom = Memory(shape=unsigned(EXP_ROM_BITS), depth=EXP_HI_SIZE,
                                              init=exp_hi_rom())
        m.submodules.lo_rom = lo_rom = Memory(shape=unsigned(EXP_ROM_BITS), depth=EXP_LO_SIZE,
                                              init=exp_lo_rom())
        net.x_wp = x_mem.write_port()
        net.x_rp = x_mem.read_port(transparent_for=(net.x_wp,))  # a one-slice token: written, read
        net.w_wp = w_mem.write_port()
        net.w_rp = w_mem.read_port()
        net.l_wp = l_mem.write_port()
        net.l_rp = l_mem.read_port()
        net.hi_rp = hi_rom.read_port()
        net.lo_rp = lo_rom.read_port()
        net.scan_ports = [net.l_rp]
        if self.routing == "sigmoid_topk":
            m.submodules.s_mem = s_mem = Memory(shape=unsigned(SIG_BITS), depth=max(2, E), init=[])
            net.s_wp = s_mem.write_port()
            net.s_rp = s_mem.read_port(transparent_for=(net.s_wp,))  # E = 1: written, then read
            net.scan_ports.append(net.s_rp)
        if self.selection_bias:
            m.submodules.b_mem = b_mem = Memory(shape=signed(BIAS_BITS), depth=max(2, E), init=[])
            net.b_wp = b_mem.write_port()
            net.b_rp = b_mem.read_port()
            net.scan_ports.append(net.b_rp)

    def _host_writes(self, m, net) -> None:
        """The registered ``wr`` port: weight words, ``M_r``, ``S_r`` and the selection bias."""
        wr, amap, rb, w_wp = self.wr, self.address_map, self.router_bits, net.w_wp
        net.r_mult = r_mult = Signal(MULT_BITS, name="r_mult")
        net.r_shift = r_shift = Signal(SHIFT_BITS, name="r_shift")
        m.d.sync += [
            w_wp.addr.eq(wr.addr),
            w_wp.en.eq(wr.en & (wr.addr < amap.weight_words)),
        ]
        m.d.sync += [w_wp.data[i].eq(wr.data[i * rb:(i + 1) * rb]) for i in range(self.lanes)]
        with m.If(wr.en & (wr.addr == amap.mult)):
            m.d.sync += r_mult.eq(wr.data[:MULT_BITS])
        with m.If(wr.en & (wr.addr == amap.shift)):
            m.d.sync += r_shift.eq(wr.data[:SHIFT_BITS])
        if self.selection_bias:
            m.d.sync += [
                net.b_wp.addr.eq(wr.addr - amap.bias),
                net.b_wp.en.eq(wr.en & (wr.addr >= amap.bias)
                               & (wr.addr < amap.bias + self.n_experts)),
                net.b_wp.data.eq(wr.data[:BIAS_BITS]),
            ]

    def _divider(self, m, net) -> None:
        """The one ``div15`` divider (`divider_logic`), shared by the sigmoids and the gates."""
        zmax = max(self.n_experts * GATE_ONE, 2 * GATE_ONE)  # Σ of EXP/SIG values; SIG's 2^15 + e
        net.den_bits = den_bits = zmax.bit_length()
        num_bits = (GATE_ONE * GATE_ONE + (zmax >> 1)).bit_length()
        net.div_op = div_op = stream.Signature(
            divider_op_layout(num_bits=num_bits, den_bits=den_bits)).create(path=("div", "op"))
        net.div_res = div_res = stream.Signature(
            divider_result_layout(quo_bits=QUO_BITS, den_bits=None)).create(path=("div", "res"))
        divider_logic(m, div_op, div_res, quo_bits=QUO_BITS)
        net.quotient = div_res.payload.quotient

        def div15_operands(n, d):
            """Load div15(n, d) = (n·2^15 + (d >> 1)) // d into the divider's operands."""
            return [div_op.payload.num.eq(n * GATE_ONE + (d >> 1)), div_op.payload.den.eq(d)]

        net.div15_operands = div15_operands

    def _scale(self, g):
        """Routed scaling rshift(g · RSF, 12); the identity for a factor of 1.0."""
        if self.rsf == 1 << RSF_FRAC:
            return g
        return round_shift(g * self.rsf, RSF_FRAC)

    def _exp_pipeline(self, m, net) -> None:
        """``EXP(d)`` in four stages: ROM addresses, ROM data, the data registered, the rounded
        product."""
        # In (comb, from the states): exp_v, exp_a = rshift(d, 4), exp_tag. Out four cycles
        # later: e3_v, e3 = EXP(d), e3_tag. Stage 1 registers the ROM addresses, stage 2 has the
        # ROM data, stage 2r the data in flip-flops (a block RAM's output does not feed the
        # multiplier in the same cycle: hi_rom -> e3 was the ECP5 builds' critical path), stage
        # 3 the rounded product (0 for a >= 16.0).
        hi_rp, lo_rp = net.hi_rp, net.lo_rp
        tag_bits = _bits(max(self.n_experts, self.top_k) + 1)
        exp_v = Signal(name="exp_v")
        exp_a = Signal(LOGIT_BITS + 2 - EXP_ARG_SHIFT, name="exp_a")   # d < 2^33
        e1_v, e1_in = Signal(name="e1_v"), Signal(name="e1_in")
        e2_v, e2_in = Signal(name="e2_v"), Signal(name="e2_in")
        e2r_v, e2r_in = Signal(name="e2r_v"), Signal(name="e2r_in")
        e2r_hi = Signal(EXP_ROM_BITS, name="e2r_hi", reset_less=True)
        e2r_lo = Signal(EXP_ROM_BITS, name="e2r_lo", reset_less=True)
        net.e3_v, net.e3 = e3_v, e3 = Signal(name="e3_v"), Signal(SIG_BITS, name="e3")
        m.d.sync += [
            hi_rp.addr.eq(exp_a[EXP_HI_SHIFT:]), lo_rp.addr.eq(exp_a[:EXP_HI_SHIFT]),
            e1_v.eq(exp_v), e1_in.eq(exp_a < EXP_A_LIMIT),
            e2_v.eq(e1_v), e2_in.eq(e1_in),
            e2r_v.eq(e2_v), e2r_in.eq(e2_in), e2r_hi.eq(hi_rp.data), e2r_lo.eq(lo_rp.data),
            e3_v.eq(e2r_v), e3.eq(Mux(e2r_in, round_shift(e2r_hi * e2r_lo, GATE_FRAC), 0)),
        ]
        if self.routing != "sigmoid_topk":                  # softmax routings tag their values
            net.exp_tag = exp_tag = Signal(tag_bits, name="exp_tag")
            e1_tag, e2_tag = Signal(tag_bits, name="e1_tag"), Signal(tag_bits, name="e2_tag")
            e2r_tag = Signal(tag_bits, name="e2r_tag")
            net.e3_tag = e3_tag = Signal(tag_bits, name="e3_tag")
            m.d.sync += [e1_tag.eq(exp_tag), e2_tag.eq(e1_tag), e2r_tag.eq(e2_tag),
                         e3_tag.eq(e2r_tag)]

        def exp_of(d):
            """Statements feeding d (>= 0, units 2^-16) into the EXP pipeline."""
            return [exp_v.eq(1), exp_a.eq(round_shift(d, EXP_ARG_SHIFT))]

        net.exp_of = exp_of

    def _token_load(self, m, net) -> None:
        """The token buffer's write: one ``i_tokens`` slice per cycle."""
        it, x_wp = self.i_tokens, net.x_wp
        net.load_s = load_s = Signal(range(max(2, self.slices)), name="load_s")
        accept = it.valid & it.ready
        m.d.sync += [x_wp.addr.eq(load_s), x_wp.data.eq(it.payload.data), x_wp.en.eq(accept)]

    def _gemv(self, m, net) -> None:
        """The logit GEMV: products, adder tree, accumulator, ``· M_r``, rounding shift, saturation."""
        R, S, lanes, rb, aw = self.rows, self.slices, self.lanes, self.router_bits, self.acc_width
        w_rp, x_rp, l_wp = net.w_rp, net.x_rp, net.l_wp
        # The read addresses are the issue counters: w_rp.addr (word), x_rp.addr (slice).
        g_issue = Signal(name="g_issue")
        g_r = Signal(range(max(2, R)), name="g_row")
        g_s = x_rp.addr
        net.g_start = [g_issue.eq(1), w_rp.addr.eq(0), x_rp.addr.eq(0), g_r.eq(0)]
        slice_last = (g_s == S - 1) if S > 1 else Const(1, 1)
        with m.If(g_issue):
            m.d.sync += w_rp.addr.eq(w_rp.addr + 1)
            if S > 1:
                m.d.sync += g_s.eq(Mux(slice_last, 0, g_s + 1))
            with m.If(slice_last):
                m.d.sync += g_r.eq(g_r + 1)
            with m.If(w_rp.addr == R * S - 1):
                m.d.sync += g_issue.eq(0)
        row_shape = g_r.shape()
        # stage 1: memory data → products
        g1_v, g1_first = Signal(name="g1_v"), Signal(name="g1_first")
        g1_last, g1_row = Signal(name="g1_last"), Signal(row_shape, name="g1_row")
        if S == 1:                      # every slice is a row's first and last
            m.d.sync += [g1_first.eq(1), g1_last.eq(1)]
        else:
            m.d.sync += [g1_first.eq(g_s == 0), g1_last.eq(slice_last)]
        m.d.sync += [g1_v.eq(g_issue), g1_row.eq(g_r)]
        # stage 1r: the memories' read data registered, so that no block RAM output drives a
        # multiplier in the same cycle (w_mem DOB -> g2_prod was the ECP5-25F's critical path)
        g1r_v, g1r_first = Signal(name="g1r_v"), Signal(name="g1r_first")
        g1r_last, g1r_row = Signal(name="g1r_last"), Signal(row_shape, name="g1r_row")
        ib = self.input_bits
        g1r_x = [Signal(signed(ib), name=f"g1r_x{i}") for i in range(lanes)]
        g1r_w = [Signal(signed(rb), name=f"g1r_w{i}") for i in range(lanes)]
        m.d.sync += [g1r_v.eq(g1_v), g1r_first.eq(g1_first), g1r_last.eq(g1_last), g1r_row.eq(g1_row)]
        m.d.sync += [g1r_x[i].eq(x_rp.data[i]) for i in range(lanes)]
        m.d.sync += [g1r_w[i].eq(w_rp.data[i]) for i in range(lanes)]
        g2_v, g2_first = Signal(name="g2_v"), Signal(name="g2_first")
        g2_last, g2_row = Signal(name="g2_last"), Signal(row_shape, name="g2_row")
        g2_prod = [Signal(signed(ib + rb), name=f"g2_prod{i}") for i in range(lanes)]
        m.d.sync += [g2_v.eq(g1r_v), g2_first.eq(g1r_first), g2_last.eq(g1r_last), g2_row.eq(g1r_row)]
        m.d.sync += [g2_prod[i].eq(g1r_x[i] * g1r_w[i]) for i in range(lanes)]
        # stage 2: adder tree → dot
        terms = list(g2_prod)
        while len(terms) > 1:
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                     for i in range(0, len(terms), 2)]
        g3_v, g3_first = Signal(name="g3_v"), Signal(name="g3_first")
        g3_last, g3_row = Signal(name="g3_last"), Signal(row_shape, name="g3_row")
        g3_dot = Signal(signed(ib + rb + (lanes - 1).bit_length()), name="g3_dot")
        m.d.sync += [g3_v.eq(g2_v), g3_first.eq(g2_first), g3_last.eq(g2_last), g3_row.eq(g2_row),
                     g3_dot.eq(terms[0])]
        # stage 3: accumulate the row's slices
        acc = Signal(signed(aw), name="acc")
        g4_v, g4_row = Signal(name="g4_v"), Signal(row_shape, name="g4_row")
        with m.If(g3_v):
            m.d.sync += acc.eq(Mux(g3_first, g3_dot, acc + g3_dot))
        m.d.sync += [g4_v.eq(g3_v & g3_last), g4_row.eq(g3_row)]
        # stages 4-6: sat_32(rshift(acc · M_r, S_r)) in `RequantPipeline`'s three stages (product,
        # rounding shift, saturation into the logit memory's write port registers): the shift and
        # the saturation in one cycle were the ECP5-25F's critical path (r_shift -> l_wp data).
        # S_r is a register the host holds steady between tokens, so it is not registered again.
        rq = RequantPipeline(lanes=1, acc_bits=aw, out_bits=LOGIT_BITS,
                             names=("g5_prod", None, "g6_round"))
        g5_v, g5_row = Signal(name="g5_v"), Signal(row_shape, name="g5_row")
        g6_v, g6_row = Signal(name="g6_v"), Signal(row_shape, name="g6_row")
        m.d.sync += [g5_v.eq(g4_v), g5_row.eq(g4_row), g6_v.eq(g5_v), g6_row.eq(g5_row)]
        rq.product(m, [acc], net.r_mult, net.r_shift)
        rq.round(m)
        m.d.sync += [l_wp.en.eq(g6_v), l_wp.addr.eq(g6_row)]
        rq.output(m, [l_wp.data])
        logit = l_wp.data
        net.gemv_done = l_wp.en & (l_wp.addr == R - 1)
        if self.routing == "softmax_topk":
            net.ref_all = ref_all = Signal(signed(LOGIT_BITS), name="ref_all")  # largest routed logit
            first_or_larger = (l_wp.addr == 0) | (logit > ref_all)
            with m.If(l_wp.en & (l_wp.addr < self.n_experts) & first_or_larger):
                m.d.sync += ref_all.eq(logit)

    def _expert_scan(self, m, net) -> None:
        """The scan over the experts that GROUPS, TOPK and EXP_ALL share (and its group position)."""
        # A scanning state raises scan_go; sc_i issues 0..E-1 to the logit/SIG/bias memories;
        # one cycle later p_v/p_i (and p_pos/p_g: position in the group, group) come with the
        # read data. After E-1 is processed (p_end) sc_i restarts from 0 (for the next pass).
        E, G, NG = self.n_experts, self.n_experts // self.n_group, self.n_group
        grouped = NG > 1
        net.scan_go = scan_go = Signal(name="scan_go")
        net.sc_i = sc_i = Signal(range(E + 1), name="sc_i")
        net.p_v = p_v = Signal(name="p_v")
        net.p_i = p_i = Signal(range(max(2, E)), name="p_i")
        scan_issue = scan_go & (sc_i != E)
        with m.If(scan_go):
            m.d.comb += [port.addr.eq(sc_i) for port in net.scan_ports]
        m.d.sync += [p_v.eq(scan_issue), p_i.eq(sc_i)]
        with m.If(scan_issue):
            m.d.sync += sc_i.eq(sc_i + 1)
        net.p_end = p_end = p_v & (p_i == E - 1)
        with m.If(p_end):
            m.d.sync += sc_i.eq(0)
        if grouped:
            # p_first/p_last: the expert is its group's first/last (constants for groups of one)
            net.p_g = p_g = Signal(range(NG), name="p_g")
            if G > 1:
                net.p_pos = p_pos = Signal(range(G), name="p_pos")
                p_first, p_last = p_pos == 0, p_pos == G - 1
                with m.If(p_v):
                    m.d.sync += p_pos.eq(Mux(p_last, 0, p_pos + 1))
            else:
                p_first = p_last = Const(1, 1)
            net.p_first, net.p_last = p_first, p_last
            with m.If(p_v & p_last):
                m.d.sync += p_g.eq(Mux(p_g == NG - 1, 0, p_g + 1))

        def scan_reset():
            if not grouped:
                return [sc_i.eq(0)]
            return [sc_i.eq(0), p_g.eq(0)] + ([p_pos.eq(0)] if G > 1 else [])

        net.scan_reset = scan_reset

    def _selection_score(self, m, net) -> None:
        """``c_e`` of the expert being scanned: ``L_e``, ``SIG(L_e)`` or ``SIG(L_e) + b_e``."""
        # read data, used in place
        if self.routing == "sigmoid_topk":
            net.c_bits = BIAS_BITS + 2            # SIG (unsigned 16) + bias (int32)
            if self.selection_bias:
                total = net.s_rp.data + net.b_rp.data
                net.score = Signal(total.shape(), name="score")
                m.d.comb += net.score.eq(total)
            else:
                net.score = net.s_rp.data
        else:
            net.c_bits = LOGIT_BITS
            net.score = net.l_rp.data

    def _group_limit(self, m, net) -> None:
        """Group scores (``max`` or ``top2_sum``) and the ``topk_group`` passes choosing groups."""
        G, NG, score, c_bits = self.n_experts // self.n_group, self.n_group, net.score, net.c_bits
        # The group's best (and second best) score so far, including the expert at hand;
        # g_value is the group score once the group's last expert is at hand.
        g_bits = c_bits + 2
        net.grp_regs = []
        if G == 1:                                   # group_score "max" of one expert
            net.g_value = score
        elif self.group_score == "max":
            b1 = Signal(signed(c_bits), name="grp_b1")
            nb1 = Signal(signed(c_bits), name="grp_nb1")
            m.d.comb += nb1.eq(Mux(net.p_first | (score > b1), score, b1))
            net.grp_regs = [b1.eq(nb1)]
            net.g_value = nb1
        else:                                        # top2_sum, at least 2 per group
            b1 = Signal(signed(c_bits), name="grp_b1")
            b2 = Signal(signed(c_bits), name="grp_b2")
            nb1 = Signal(signed(c_bits), name="grp_nb1")
            nb2 = Signal(signed(c_bits), name="grp_nb2")
            with m.If(net.p_first):                  # b2 is set by the second expert
                m.d.comb += [nb1.eq(score), nb2.eq(score)]
            with m.Elif(score > b1):
                m.d.comb += [nb1.eq(score), nb2.eq(b1)]
            with m.Elif((net.p_pos == 1) | (score > b2)):
                m.d.comb += [nb1.eq(b1), nb2.eq(score)]
            with m.Else():
                m.d.comb += [nb1.eq(b1), nb2.eq(b2)]
            net.grp_regs = [b1.eq(nb1), b2.eq(nb2)]
            net.g_value = nb1 + nb2
        net.gscore = gscore = [Signal(signed(g_bits), name=f"gscore{g}") for g in range(NG)]
        net.gs_i = gs_i = Signal(range(NG), name="gs_i")
        net.gs_pass = Signal(range(max(2, self.topk_group)), name="gs_pass")
        net.gs_best = gs_best = Signal(signed(g_bits), name="gs_best")
        net.gs_best_i = gs_best_i = Signal(range(NG), name="gs_best_i")
        net.gs_have = gs_have = Signal(name="gs_have")
        net.allowed = allowed = Signal(NG, name="allowed")                  # the chosen groups
        net.gs_take = gs_take = Signal(name="gs_take")
        m.d.comb += gs_take.eq(~(allowed >> gs_i)[0] &
                               (~gs_have | (_pick(gscore, gs_i) > gs_best)))
        net.gs_nb_i = Mux(gs_take, gs_i, gs_best_i)
        net.allowed_now = (allowed >> net.p_g)[0]

    def _topk_registers(self, m, net) -> None:
        """The top-k pass's best-so-far registers, and the selected experts' values for the gates."""
        E, k, score, p_i = self.n_experts, self.top_k, net.score, net.p_i
        net.used = used = Signal(E, name="used")
        net.t_pass = Signal(range(max(2, k)), name="t_pass")
        net.t_have = t_have = Signal(name="t_have")
        net.t_best = t_best = Signal(signed(net.c_bits), name="t_best")
        net.t_best_i = t_best_i = Signal(range(max(2, E)), name="t_best_i")
        net.t_take = t_take = Signal(name="t_take")
        m.d.comb += t_take.eq(net.p_v & ~(used >> p_i)[0] & net.allowed_now &
                              (~t_have | (score > t_best)))
        net.t_nb_i = Mux(t_take, p_i, t_best_i)
        if self.routing == "sigmoid_topk":
            net.t_best_sig = t_best_sig = Signal(SIG_BITS, name="t_best_sig")
            net.t_nb_sig = Mux(t_take, net.s_rp.data, t_best_sig)
        else:
            net.t_nb = Mux(t_take, score, t_best)
            net.sel_l = [Signal(signed(LOGIT_BITS), name=f"sel_l{j}") for j in range(k)]
            net.ref_sel = net.sel_l[0] if self.routing == "topk_softmax" else net.ref_all
        if self.divides:
            net.ej = Signal(range(k + 1), name="ej")          # EXP feed / division counter
            net.num = [Signal(SIG_BITS, name=f"num{j}") for j in range(k)]  # EXP or SIG values
            net.z = Signal(net.den_bits, name="z")

    def _fixed_shared_gate(self, m, net) -> None:
        """The shared gate without a sigmoid row: 32768 (always-on shared expert) or 0 (none)."""
        if self.shared_gate != "sigmoid":
            m.d.comb += self.o_route.payload.shared_gate.eq(
                GATE_ONE if self.shared_gate == "always" else 0)

    def _start_selection(self, net) -> list:
        """Statements entering GROUPS (or TOPK)."""
        stmts = net.scan_reset() + [net.used.eq(0), net.t_pass.eq(0), net.t_have.eq(0)]
        if self.divides:
            stmts.append(net.z.eq(0))
        if self.n_group > 1:
            stmts += [net.gs_i.eq(0), net.gs_pass.eq(0), net.gs_have.eq(0), net.allowed.eq(0),
                      net.goto("GROUPS")]
        else:
            stmts.append(net.goto("TOPK"))
        return stmts

    def _control(self, m, net) -> None:
        """The state machine: the phases' states as one If/Elif chain on the state register."""
        if self.n_sig:
            net.sg_r = Signal(range(self.rows + 1), name="sig_row")
            net.sg_neg = Signal(name="sig_neg")
        if self.routing == "sigmoid_topk":
            m.d.sync += net.s_wp.en.eq(0)          # a one-cycle write from SIG_DONE
        chain = []

        def in_state(name):
            """The If/Elif chain over the states (the default, Else, is OUT)."""
            first = not chain
            chain.append(name)
            cond = net.state == net.code[name]
            return m.If(cond) if first else m.Elif(cond)

        net.in_state = in_state
        self._load_states(m, net)
        if self.n_sig:
            self._sigmoid_states(m, net)
        if self.n_group > 1:
            self._group_states(m, net)
        self._topk_state(m, net)
        if self.routing != "sigmoid_topk":
            self._exp_states(m, net)
        if self.divides:
            self._gate_division_states(m, net)
        with m.Else():                                 # OUT (and unused encodings)
            m.d.comb += self.o_route.valid.eq(1)
            with m.If(self.o_route.ready):
                m.d.sync += net.goto("LOAD")

    def _load_states(self, m, net) -> None:
        """LOAD (a token's slices into the buffer) and GEMV (until the last logit is written)."""
        it, goto = self.i_tokens, net.goto
        with net.in_state("LOAD"):
            m.d.comb += it.ready.eq(1)
            with m.If(it.valid):
                m.d.sync += net.load_s.eq(net.load_s + 1)
                with m.If(it.payload.last):
                    m.d.sync += [net.load_s.eq(0), goto("GEMV")] + net.g_start
        with net.in_state("GEMV"):
            with m.If(net.gemv_done):
                if self.n_sig:
                    sig_first = 0 if self.routing == "sigmoid_topk" else self.n_experts
                    m.d.sync += [net.sg_r.eq(sig_first), goto("SIG_RD")]
                else:
                    m.d.sync += self._start_selection(net)

    @contextmanager
    def _division(self, m, net, go: str, done: str):
        """States `go` (until the divider takes its operands) and `done` (until its quotient is
        valid); the body of the ``with`` runs in the cycle the quotient transfers."""
        with net.in_state(go):
            m.d.comb += net.div_op.valid.eq(1)
            with m.If(net.div_op.ready):
                m.d.sync += net.goto(done)
        with net.in_state(done):
            m.d.comb += net.div_res.ready.eq(1)
            with m.If(net.div_res.valid):
                yield

    def _sigmoid_states(self, m, net) -> None:
        """SIG_*: ``SIG(L) = div15(L >= 0 ? 2^15 : e, 2^15 + e)``, ``e = EXP(|L|)``, per row."""
        E, goto, sg_r, l_rp, e3 = self.n_experts, net.goto, net.sg_r, net.l_rp, net.e3
        with net.in_state("SIG_RD"):
            m.d.comb += l_rp.addr.eq(sg_r)
            m.d.sync += goto("SIG_EXP")
        with net.in_state("SIG_EXP"):
            m.d.comb += net.exp_of(abs(l_rp.data))
            m.d.sync += [net.sg_neg.eq(l_rp.data < 0), goto("SIG_WAIT")]
        with net.in_state("SIG_WAIT"):
            with m.If(net.e3_v):
                m.d.sync += net.div15_operands(Mux(net.sg_neg, e3, GATE_ONE), GATE_ONE + e3)
                m.d.sync += goto("SIG_GO")
        with self._division(m, net, "SIG_GO", "SIG_DONE"):
            if self.routing == "sigmoid_topk":
                s_wp = net.s_wp
                m.d.sync += [s_wp.addr.eq(sg_r), s_wp.data.eq(net.quotient), s_wp.en.eq(sg_r < E)]
            if self.shared_gate == "sigmoid":
                with m.If(sg_r == E):
                    m.d.sync += self.o_route.payload.shared_gate.eq(net.quotient)
            m.d.sync += sg_r.eq(sg_r + 1)
            with m.If(sg_r == self.rows - 1):
                m.d.sync += self._start_selection(net)
            with m.Else():
                m.d.sync += goto("SIG_RD")

    def _group_states(self, m, net) -> None:
        """GROUPS (one scan: every group's score) and GSEL (``topk_group`` passes over them)."""
        NG, goto, gs_i = self.n_group, net.goto, net.gs_i
        with net.in_state("GROUPS"):
            m.d.comb += net.scan_go.eq(1)
            with m.If(net.p_v):
                m.d.sync += net.grp_regs
                for g in range(NG):
                    with m.If(net.p_last & (net.p_g == g)):
                        m.d.sync += net.gscore[g].eq(net.g_value)
            with m.If(net.p_end):
                m.d.sync += goto("GSEL")
        with net.in_state("GSEL"):
            with m.If(gs_i == NG - 1):
                m.d.sync += [net.allowed.eq(net.allowed | (Const(1, NG) << net.gs_nb_i)[:NG]),
                             gs_i.eq(0), net.gs_have.eq(0), net.gs_pass.eq(net.gs_pass + 1)]
                with m.If(net.gs_pass == self.topk_group - 1):
                    m.d.sync += goto("TOPK")
            with m.Else():
                m.d.sync += gs_i.eq(gs_i + 1)
                with m.If(net.gs_take):
                    m.d.sync += [net.gs_best.eq(_pick(net.gscore, gs_i)), net.gs_best_i.eq(gs_i),
                                 net.gs_have.eq(1)]

    def _topk_state(self, m, net) -> None:
        """TOPK: ``k`` scans, each taking the best allowed expert not taken yet."""
        E, k, goto, orp = self.n_experts, self.top_k, net.goto, self.o_route.payload
        sigmoid = self.routing == "sigmoid_topk"
        with net.in_state("TOPK"):
            m.d.comb += net.scan_go.eq(1)
            with m.If(net.p_end):
                m.d.sync += [net.used.eq(net.used | (Const(1, E) << net.t_nb_i)[:E]),
                             net.t_have.eq(0), net.t_pass.eq(net.t_pass + 1)]
                for j in range(k):
                    with m.If(net.t_pass == j):
                        m.d.sync += orp.experts[j].eq(net.t_nb_i)
                        if sigmoid and self.divides:
                            m.d.sync += net.num[j].eq(net.t_nb_sig)
                        elif sigmoid:
                            m.d.sync += self._gate_out(j, net.t_nb_sig, net.t_nb_sig)
                        else:
                            m.d.sync += net.sel_l[j].eq(net.t_nb)
                if sigmoid and self.divides:
                    m.d.sync += net.z.eq(net.z + net.t_nb_sig)
                with m.If(net.t_pass == k - 1):
                    if self.divides:
                        m.d.sync += net.ej.eq(0)
                    if not sigmoid:
                        m.d.sync += goto("EXP_SEL")
                    elif self.divides:
                        m.d.sync += goto(self._after_sums())
                    else:
                        m.d.sync += goto("OUT")
            with m.Elif(net.t_take):
                m.d.sync += [net.t_best.eq(net.score), net.t_best_i.eq(net.p_i), net.t_have.eq(1)]
                if sigmoid:
                    m.d.sync += net.t_best_sig.eq(net.s_rp.data)

    def _exp_states(self, m, net) -> None:
        """EXP_SEL (``EXP(ref − L_j)`` of the selected experts) and EXP_ALL (``Z`` over all)."""
        E, k, goto, ej, z, e3 = self.n_experts, self.top_k, net.goto, net.ej, net.z, net.e3
        with net.in_state("EXP_SEL"):
            with m.If(ej != k):
                m.d.comb += net.exp_of((net.ref_sel - _pick(net.sel_l, ej)).as_unsigned())
                m.d.comb += net.exp_tag.eq(ej)
                m.d.sync += ej.eq(ej + 1)
            with m.If(net.e3_v):
                for j in range(k):
                    with m.If(net.e3_tag == j):
                        m.d.sync += net.num[j].eq(e3)
                if not self.z_over_all:
                    m.d.sync += z.eq(z + e3)
                with m.If(net.e3_tag == k - 1):
                    m.d.sync += [ej.eq(0)] + net.scan_reset()
                    m.d.sync += goto("EXP_ALL" if self.z_over_all else self._after_sums())
        if self.z_over_all:
            with net.in_state("EXP_ALL"):
                m.d.comb += net.scan_go.eq(1)
                with m.If(net.p_v):
                    m.d.comb += net.exp_of((net.ref_all - net.l_rp.data).as_unsigned())
                    m.d.comb += net.exp_tag.eq(net.p_i)
                with m.If(net.p_end):
                    m.d.sync += net.sc_i.eq(E)            # one pass only
                with m.If(net.e3_v):
                    m.d.sync += z.eq(z + e3)
                    with m.If(net.e3_tag == E - 1):
                        m.d.sync += goto("DIV_LOAD")

    def _kept(self, j: int, gate):
        """Whether selected expert `j` with unscaled gate `gate` is kept: the first choice always,
        the others when ``gate >= τ_q`` (docs/arithmetic.md §3.7)."""
        return Const(1, 1) if j == 0 else gate >= self.skip

    def _gate_out(self, j: int, gate, kept_gate) -> list:
        """``o_route`` gate `j` from its unscaled value `gate`: routed scaling, and with skipping
        0 unless `kept_gate` (the value the threshold sees) keeps the expert."""
        orp = self.o_route.payload
        if not self.skip:
            return [orp.gates[j].eq(self._scale(gate))]
        kept = self._kept(j, kept_gate)
        return [orp.gates[j].eq(Mux(kept, self._scale(gate), 0)), orp.keep[j].eq(kept)]

    def _after_sums(self) -> str:
        """The state after the selected experts' values and their sum ``Z`` are in."""
        return "KEEP" if self.keeps_before_dividing else "DIV_LOAD"

    def _keep_state(self, m, net) -> None:
        """KEEP (one cycle, skipping in a routing that normalises): expert ``j`` is kept when
        ``div15(num_j, Z) >= τ_q``, i.e. ``num_j·2^15 + (Z >> 1) >= τ_q·Z`` with ``Z > 0`` — the
        same test without the division — and ``Z`` becomes the kept experts' sum."""
        k, orp, z = self.top_k, self.o_route.payload, net.z
        kept = [Const(1, 1)] + [(z != 0) & ((net.num[j] * GATE_ONE + (z >> 1)) >= z * self.skip)
                                for j in range(1, k)]
        with net.in_state("KEEP"):
            total = net.num[0]                                # the first choice: always kept
            for j in range(1, k):
                total = total + Mux(kept[j], net.num[j], 0)
            m.d.sync += [orp.keep[j].eq(kept[j]) for j in range(k)]
            m.d.sync += [z.eq(total), net.goto("DIV_LOAD")]

    def _gate_division_states(self, m, net) -> None:
        """DIV_*: each selected gate ``div15(num_j, Z)``, then routed scaling, into ``o_route``
        (with skipping: 0 for a skipped expert)."""
        k, goto, ej, orp = self.top_k, net.goto, net.ej, self.o_route.payload
        if self.keeps_before_dividing:
            self._keep_state(m, net)
        with net.in_state("DIV_LOAD"):
            m.d.sync += net.div15_operands(_pick(net.num, ej), net.z)
            m.d.sync += goto("DIV_GO")
        with self._division(m, net, "DIV_GO", "DIV_DONE"):
            q = net.quotient
            for j in range(k):
                with m.If(ej == j):
                    if self.keeps_before_dividing:          # KEEP has decided
                        m.d.sync += orp.gates[j].eq(Mux(orp.keep[j], self._scale(q), 0))
                    else:
                        m.d.sync += self._gate_out(j, q, q)
            m.d.sync += ej.eq(ej + 1)
            with m.If(ej == k - 1):
                m.d.sync += goto("OUT")
            with m.Else():
                m.d.sync += goto("DIV_LOAD")
