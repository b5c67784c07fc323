"""The hidden unit: an expert's int32 GEMM accumulators → its int8 hidden activation ``h``.

Per token it computes exactly ``ExpertBank.hidden`` (docs/arithmetic.md §4) from the
accumulators the up (and gate) GEMMs produce, channel ``c`` of ``F = d_ff``:

* SwiGLU: ``g = rq_24(acc_g, M_g[c], S_g[c])`` (units 2^-12), ``u = rq_16(acc_u, M_u[c], S_u[c])``,
  ``σ = SIGLUT[(g >> 6) + 512]`` (``2^15`` for ``g >= 8·4096``, ``0`` for ``g < -8·4096``),
  ``t = rshift(g·σ, 15)``, ``p = t·u`` (int40);
* ReLU: ``u = rq_16(acc_u, M_u[c], S_u[c])``, ``p = max(0, u)``;
* the unnormalised Walsh-Hadamard transform of each block of ``R = rotation`` consecutive
  channels (Sylvester order, exact: ``p'`` has ``log2 R`` more bits than ``p``);
* ``h = rq_8(p', M_h, S_h)``, one multiplier and shift per expert.

Interface
---------
``i_acc`` (in stream, `acc_layout`): ``{gate: lanes × int32, up: lanes × int32, last}`` (ReLU:
no ``gate`` field). A token is ``F / lanes`` beats, channel ``c = beat·lanes + lane``, ``last``
set on its final beat. Tokens may be shorter than ``d_ff`` (e.g. a shared expert of
``shared_d_ff`` channels run through the routed experts' unit): any multiple of
``lcm(lanes, R)`` channels up to ``d_ff``; the token ends at ``last``, which must fall on a
block boundary.

``o_h`` (out stream, `h_layout`): ``{data: lanes × int8, last}``, the token's ``h`` in the same
channel order, ``last`` on its final beat.

``wr`` (in, a plain write port ``{addr, data, en}``; Verilog ``wr__addr``, ``wr__data``,
``wr__en``): the runtime state, one word per cycle while ``en`` is high. The address map
(`HiddenAddressMap`; `hidden_image` produces the writes of one expert of an `ExpertBank`):

=================  ===========================================================================
address            word (`channel_layout`, `hid_layout`; fields LSB first)
=================  ===========================================================================
``0``              ``M_h`` (bits 0-15), ``S_h`` (bits 16-21): the expert's hidden requantiser
``1 + c``          channel ``c`` (``0 <= c < d_ff``): ``M_u[c]`` (bits 0-15), ``S_u[c]``
                   (bits 16-21); SwiGLU also ``M_g[c]`` (bits 22-37), ``S_g[c]`` (bits 38-43)
=================  ===========================================================================

The map does not depend on ``lanes`` or ``d_ff`` (an image loads into any unit with enough
channels). ``wr__data`` is 44 bits wide (SwiGLU) or 22 (ReLU); writes to other addresses are
ignored. A write presented in cycle ``k`` has landed by the end of cycle ``k + 1`` (the port
is registered). The host writes the state between tokens (the unit drained): a token processed
while its state changes gets an unspecified result. Multipliers are unsigned 16-bit, shifts in
``[1, 62]`` (a shift of 0 is outside the spec; it gives a defined but meaningless result).
The state is not reset (memory; ``M_h``/``S_h`` reset to 0).

Pipeline
--------
Every stage is a register with its own enable (the stage loads when it is empty or the next
one loads), so bubbles are squeezed out and the unit takes one beat per cycle while ``o_h`` is
ready. ``o_h.valid`` is a register; ``i_acc.ready`` is combinational from ``o_h.ready`` and the
stage valids (stream rule 4 allows it). Stages, per lane:

=====  =========================================================================================
 1     ``acc_g``, ``acc_u`` in; the beat's channel parameters read (memory, one word per beat)
 1P    the parameters in registers (with ``acc_g``, ``acc_u``), so that the memory's slow
       output (a block RAM's, at most sizes) and the wide products are in separate cycles
 2     ``acc·M`` (gate and up; 48-bit)
 3     ``rshift(·, S)``
 4     ``sat_24`` → ``g``, ``sat_16`` → ``u`` (ReLU: ``p = max(0, u)``; stages 4S-7 absent).
       The sigmoid LUT is read alongside: its address is ``(g >> 6) + 512`` of the value stage
       4 loads (or holds), so its data always belongs to stage 4's ``g``
 4S    ``σ`` = ``2^15`` / ``0`` / the LUT's value by the range of ``g``, in a register (with
       ``g``, ``u``): likewise, the LUT's output (a block RAM's) and ``g·σ`` apart
 5     ``g·σ``
 6     ``t = rshift(g·σ, 15)`` (int24, exact)
 7     ``p = t·u`` (int40)
 R     Walsh-Hadamard butterflies inside the beat (blocks of ``min(R, lanes)`` lanes;
       absent for ``R = 1`` or ``lanes = 1``)
 B     (``R > lanes`` only) cross-beat transform: ``B = R / lanes`` accumulators of a beat
       each; the block's last beat moves the results into a ``B``-beat shift register that
       feeds the next stage one beat per cycle while the next block accumulates
 C1    ``p'·M_h``
 C2    ``rshift(·, S_h)``
 C3    ``sat_8`` → ``o_h.payload`` (this register is the output)
=====  =========================================================================================

With ``R > lanes`` the transform uses ``H_R = H_B ⊗ H_lanes`` (Sylvester order, ``lanes`` a
power of two): each beat is transformed inside (stage R), then output beat ``i`` of a block is
``Σ_j (-1)^popcount(i & j) · q_j`` over the block's beats ``j`` (stage B).

`HiddenUnit.latency`: at one beat per cycle, output beat ``n`` becomes valid ``latency`` cycles
after input beat ``n`` is accepted: the number of stages, plus ``B - 1`` for the block wait.

Resources per lane: multipliers 32×16 (gate), 32×16 (up), 24×16 (``g·σ``), 24×16 (``t·u``),
``(P + log2 R)``×16 (``h``; ``P`` = 40 SwiGLU, 16 ReLU): five for SwiGLU, two for ReLU. Barrel
shifters for the three requantisers. ``2R`` accumulator/buffer registers of ``P + log2 R`` bits
for ``R > lanes``. One parameter memory of ``d_ff / lanes`` words × ``lanes·44`` bits (ReLU 22),
written one lane at a time; one 1024 × 15-bit sigmoid ROM per lane.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moeforge.config import ACTIVATIONS, AccelConfig
from moeforge.hls_models.fixed_point import sigmoid_lut
from moeforge.spec.arith import (ACC_BITS, GATE_FRAC, GATE_ONE, HIDDEN_BITS, MULT_BITS, SHIFT_BITS, SIG_BITS,
                                 SIG_LIMIT, SIG_SIZE, SIG_STEP_SHIFT, SILU_BITS, UP_BITS)
from moeforge.checks import check_int
from moeforge.spec.image import HiddenAddressMap, hidden_image

from ..datapath.arith import round_shift
from ..datapath.requantiser import RequantPipeline

__all__ = ["HiddenUnit", "HiddenAddressMap", "hidden_image", "acc_layout", "h_layout",
           "channel_layout", "hid_layout", "sigmoid_rom", "P_BITS"]

P_BITS = {"swiglu": SILU_BITS + UP_BITS, "relu": UP_BITS}   # p = t·u (int40), or max(0, u)
MAX_LANES = 1024
MAX_ROTATION = 64


def _check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# ---------------------------------------------------------------------------------- layouts

def acc_layout(*, lanes: int, activation: str) -> data.StructLayout:
    """``i_acc`` payload: ``gate`` (SwiGLU only) and ``up``, lanes × signed 32, then ``last``."""
    _check_activation(activation)
    fields = {}
    if activation == "swiglu":
        fields["gate"] = data.ArrayLayout(signed(ACC_BITS), lanes)
    fields["up"] = data.ArrayLayout(signed(ACC_BITS), lanes)
    fields["last"] = unsigned(1)
    return data.StructLayout(fields)


def h_layout(*, lanes: int) -> data.StructLayout:
    """``o_h`` payload: ``data`` (lanes × signed 8), ``last``."""
    return data.StructLayout({"data": data.ArrayLayout(signed(HIDDEN_BITS), lanes),
                              "last": unsigned(1)})


def channel_layout(activation: str) -> data.StructLayout:
    """One channel's parameter word: ``up_mult``, ``up_shift`` (and ``gate_mult``,
    ``gate_shift`` for SwiGLU), LSB first."""
    _check_activation(activation)
    fields = {"up_mult": unsigned(MULT_BITS), "up_shift": unsigned(SHIFT_BITS)}
    if activation == "swiglu":
        fields |= {"gate_mult": unsigned(MULT_BITS), "gate_shift": unsigned(SHIFT_BITS)}
    return data.StructLayout(fields)


def hid_layout() -> data.StructLayout:
    """The hidden requantiser's word: ``mult`` (bits 0-15), ``shift`` (bits 16-21)."""
    return data.StructLayout({"mult": unsigned(MULT_BITS), "shift": unsigned(SHIFT_BITS)})


def sigmoid_rom() -> list[int]:
    """The SiLU sigmoid table, from `hls_models.fixed_point.sigmoid_lut` (the single source)."""
    table = [int(v) for v in sigmoid_lut().tolist()]
    assert len(table) == SIG_SIZE and 0 <= min(table) and max(table) < GATE_ONE
    return table


# ------------------------------------------------------------------------------ address map

# -------------------------------------------------------------------------------- the unit

def _fwht(values: list) -> list:
    """Sylvester-order butterflies (a, b) → (a + b, a − b) over a list (len a power of two),
    as `hls_models.fixed_point.fwht_blocks` does them."""
    v = list(values)
    h = 1
    while h < len(v):
        for base in range(0, len(v), 2 * h):
            for j in range(base, base + h):
                v[j], v[j + h] = v[j] + v[j + h], v[j] - v[j + h]
        h *= 2
    return v


class HiddenUnit(wiring.Component):
    """Activation, Walsh-Hadamard rotation and int8 requantisation of an expert's hidden
    layer (see the module docstring for the interface, address map and pipeline).

    Parameters
    ----------
    activation : str
        ``swiglu`` (gate and up accumulators) or ``relu`` (up only).
    d_ff : int
        Channels per token (the parameter memory's size), a multiple of `lanes` and `rotation`.
    lanes : int
        Channels per beat, in [1, 1024].
    rotation : int
        Walsh-Hadamard block ``R``, a power of two in [1, 64]; `lanes` must divide it or be a
        multiple of it.

    Attributes
    ----------
    i_acc : ``In(stream.Signature(acc_layout(...)))``
    o_h : ``Out(stream.Signature(h_layout(...)))``
    wr : ``In(Signature({addr, data, en}))``
    address_map : HiddenAddressMap
    latency : int
        Cycles from accepting input beat ``n`` to output beat ``n`` becoming valid, at one
        beat per cycle.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range or they do not fit together.
    """

    def __init__(self, *, activation: str, d_ff: int, lanes: int, rotation: int,
                 src_loc_at: int = 0):
        _check_activation(activation)
        check_int("lanes", lanes, 1, MAX_LANES)
        check_int("d_ff", d_ff, 1, 1 << 20)
        check_int("rotation", rotation, 1, MAX_ROTATION)
        if not _is_pow2(rotation):
            raise ValueError(f"rotation must be a power of two in [1, {MAX_ROTATION}], "
                             f"not {rotation!r}")
        if d_ff % lanes:
            raise ValueError(f"lanes must divide d_ff={d_ff}, not {lanes!r}")
        if d_ff % rotation:
            raise ValueError(f"rotation must divide d_ff={d_ff}, not {rotation!r}")
        if rotation % lanes and lanes % rotation:
            raise ValueError(f"lanes must divide rotation={rotation} or be a multiple of it, "
                             f"not {lanes!r}")
        self.activation = activation
        self.d_ff = d_ff
        self.lanes = lanes
        self.rotation = rotation
        self.address_map = HiddenAddressMap(d_ff=d_ff, activation=activation)
        self.acc_layout = acc_layout(lanes=lanes, activation=activation)
        self.h_layout = h_layout(lanes=lanes)
        amap = self.address_map
        super().__init__({
            "i_acc": In(stream.Signature(self.acc_layout)),
            "o_h": Out(stream.Signature(self.h_layout)),
            "wr": In(wiring.Signature({"addr": Out(amap.addr_bits), "data": Out(amap.data_bits),
                                       "en": Out(1)})),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, lanes: int, src_loc_at: int = 0) -> "HiddenUnit":
        """The hidden unit of `cfg`: its activation, ``rotation_block`` and
        ``max(d_ff, shared_d_ff)`` channels (so the shared expert can use the same unit).

        Raises
        ------
        TypeError
            If `cfg` is not an `AccelConfig`.
        ValueError
            If `lanes` does not divide the channel count or fit the rotation block.
        """
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        return cls(activation=cfg.activation, d_ff=max(cfg.d_ff, cfg.shared_d_ff), lanes=lanes,
                   rotation=cfg.rotation_block, src_loc_at=1 + src_loc_at)

    # ------------------------------------------------------------------ derived properties
    @property
    def swiglu(self) -> bool:
        return self.activation == "swiglu"

    @property
    def beats(self) -> int:
        """Beats of a full ``d_ff`` token."""
        return self.d_ff // self.lanes

    @property
    def inner_rotation(self) -> int:
        """Butterfly block inside a beat: ``min(R, lanes)``."""
        return min(self.rotation, self.lanes)

    @property
    def block_beats(self) -> int:
        """``B = R / lanes`` beats per rotation block when ``R > lanes``, else 1."""
        return max(1, self.rotation // self.lanes)

    @property
    def p_bits(self) -> int:
        return P_BITS[self.activation]

    @property
    def rotated_bits(self) -> int:
        """Width of ``p'``: ``p`` plus ``log2 R``."""
        return self.p_bits + _log2(self.rotation)

    @property
    def stages(self) -> int:
        """Register stages from ``i_acc`` to ``o_h`` (the table in the module docstring)."""
        front = 9 if self.swiglu else 5
        return (front + (1 if self.inner_rotation > 1 else 0)
                + (1 if self.block_beats > 1 else 0) + 3)

    @property
    def latency(self) -> int:
        return self.stages + self.block_beats - 1

    @property
    def multipliers_per_lane(self) -> int:
        return 5 if self.swiglu else 2

    # ------------------------------------------------------------------ elaboration
    def elaborate(self, platform):
        m = Module()
        L, R, B = self.lanes, self.rotation, self.block_beats
        swiglu = self.swiglu
        amap = self.address_map
        i_p = self.i_acc.payload

        # ---------------------------------------------------------- runtime state, write port
        # Verilog hygiene (Verilator -Wall with sim.toolchain.AMARANTH_LINT_WAIVERS, no waivers
        # of our own): a memory port signal that is a plain copy or slice of another signal is
        # emitted as an alias wire nobody reads. So the write port's signals are registers
        # themselves, read addresses are Mux outputs and read enables are left at 1.
        wr = self.wr
        hid_mult = Signal(MULT_BITS, name="hid_mult")
        hid_shift = Signal(SHIFT_BITS, name="hid_shift")
        w_word = wr.data
        with m.If(wr.en & (wr.addr == amap.HID)):
            # hid_layout is the first 22 bits of a channel word
            m.d.sync += [hid_mult.eq(w_word[:MULT_BITS]),
                         hid_shift.eq(w_word[MULT_BITS:MULT_BITS + SHIFT_BITS])]

        depth = max(2, self.beats)
        m.submodules.params = params = Memory(
            shape=data.ArrayLayout(channel_layout(self.activation), L), depth=depth, init=[])
        p_wp = params.write_port(granularity=1)
        p_rp = params.read_port()
        chan = (wr.addr - 1)[:amap.addr_bits]           # the channel of a write to 1 + c
        if _is_pow2(L):
            lane_bits = _log2(L)
            beat, lane = chan[lane_bits:], chan[:lane_bits]
        else:
            # c // L as (c · ⌈2^k / L⌉) >> k, exact for c < 2^n when k = n + ⌈log2 L⌉
            # (Granlund-Montgomery); Amaranth's // and % would add unused divide-by-zero guards.
            k = amap.addr_bits + (L - 1).bit_length()
            beat = (chan * -(-(1 << k) // L)) >> k
            lane = (chan - beat * L)[:(L - 1).bit_length()]
        chan_write = wr.en & (wr.addr != amap.HID) & (wr.addr <= self.d_ff)
        m.d.sync += [p_wp.addr.eq(beat), p_wp.data.eq(Cat(*[w_word] * L))]
        for i in range(L):
            m.d.sync += p_wp.en[i].eq(chan_write & (lane == i) if L > 1 else chan_write)

        # ---------------------------------------------------------- pipeline plumbing
        # A stage loads when it is empty or when the next one loads.
        def new_stage(name, src_valid, prev):
            """A register stage fed by `src_valid`; `prev` is the previous (valid, en) pair,
            whose enable this stage's completes. Returns (valid, en)."""
            valid, en = Signal(name=f"{name}_valid"), Signal(name=f"{name}_en")
            if prev is not None:
                m.d.comb += prev[1].eq(~prev[0] | en)
            with m.If(en):
                m.d.sync += valid.eq(src_valid)
            return valid, en

        def regs(name, shape, n=L):
            return [Signal(shape, name=f"{name}{i}") for i in range(n)]

        # ---------------------------------------------------------- 1: input, parameter read
        s1_valid = Signal(name="s1_valid")
        s1_en = self.i_acc.ready
        with m.If(s1_en):
            m.d.sync += s1_valid.eq(self.i_acc.valid)
        stage = (s1_valid, s1_en)
        last = Signal(name="s1_last")
        acc_u = regs("s1_up", signed(ACC_BITS))
        acc_g = regs("s1_gate", signed(ACC_BITS)) if swiglu else []
        with m.If(s1_en):
            m.d.sync += last.eq(i_p.last)
            for i in range(L):
                m.d.sync += acc_u[i].eq(i_p.up[i])
                if swiglu:
                    m.d.sync += acc_g[i].eq(i_p.gate[i])
        # The parameter read: the beat entering stage 1, or the one it holds.
        beat_cnt = Signal(range(depth), name="beat_cnt")
        s1_beat = Signal(range(depth), name="s1_beat")
        with m.If(self.i_acc.valid & self.i_acc.ready):
            m.d.sync += beat_cnt.eq(Mux(i_p.last | (beat_cnt == self.beats - 1), 0, beat_cnt + 1))
        with m.If(s1_en):
            m.d.sync += s1_beat.eq(beat_cnt)
        m.d.comb += p_rp.addr.eq(Mux(s1_en, beat_cnt, s1_beat))
        prm = p_rp.data                                   # registered: aligned with stage 1

        def carry_last(name, en):
            nonlocal last
            nxt = Signal(name=f"{name}_last")
            with m.If(en):
                m.d.sync += nxt.eq(last)
            last = nxt

        # ---------------------------------------------------------- 1P: parameters registered
        # A block RAM's output is slow and the products after it wide: in one cycle they were
        # the longest path of the expert engine's down requantiser, which reads its parameters
        # the same way; so here too each has a cycle of its own.
        stage = new_stage("s1p", stage[0], stage)
        carry_last("s1p", stage[1])
        acc_u1, acc_g1 = acc_u, acc_g
        acc_u = regs("s1p_up", signed(ACC_BITS))
        acc_g = regs("s1p_gate", signed(ACC_BITS)) if swiglu else []
        fields = ("up_mult", "up_shift") + (("gate_mult", "gate_shift") if swiglu else ())
        par = {f: regs(f"s1p_{f}", channel_layout(self.activation)[f].shape) for f in fields}
        with m.If(stage[1]):
            for i in range(L):
                m.d.sync += acc_u[i].eq(acc_u1[i])
                if swiglu:
                    m.d.sync += acc_g[i].eq(acc_g1[i])
                for f in fields:
                    m.d.sync += par[f][i].eq(getattr(prm[i], f))

        # ---------------------------------------------------------- 2: products
        stage = new_stage("s2", stage[0], stage)
        carry_last("s2", stage[1])
        # u = rq_16(acc_u, M_u, S_u) and g = rq_24(acc_g, M_g, S_g) in stages 2-3 (products,
        # rounding), each lane with its channel's M and S; stage 4 saturates (below).
        rq_u = RequantPipeline(lanes=L, acc_bits=ACC_BITS, out_bits=UP_BITS,
                               names=("s2_up", "s2_up_shift", "s3_up"))
        rq_g = RequantPipeline(lanes=L, acc_bits=ACC_BITS, out_bits=SILU_BITS,
                               names=("s2_gate", "s2_gate_shift", "s3_gate"))
        with m.If(stage[1]):
            rq_u.product(m, acc_u, par["up_mult"], par["up_shift"])
            if swiglu:
                rq_g.product(m, acc_g, par["gate_mult"], par["gate_shift"])

        # ---------------------------------------------------------- 3: rounding shifts
        stage = new_stage("s3", stage[0], stage)
        carry_last("s3", stage[1])
        with m.If(stage[1]):
            rq_u.round(m)
            if swiglu:
                rq_g.round(m)

        # ---------------------------------------------------------- 4: saturation (ReLU: p)
        stage = new_stage("s4", stage[0], stage)
        carry_last("s4", stage[1])
        if swiglu:
            u = regs("s4_u", signed(UP_BITS))
            g = regs("s4_g", signed(SILU_BITS))
            rom_data = sigmoid_rom()
            rom_bits = max(rom_data).bit_length()
            sig4 = []

            def lut_index(v):
                """(v >> 6) + 512 modulo 1024 (only used inside [-8, 8))."""
                top = SIG_STEP_SHIFT + _log2(SIG_SIZE) - 1
                return Cat(v[SIG_STEP_SHIFT:top], ~v[top])

            for i in range(L):
                g_next = rq_g.saturated[i]
                with m.If(stage[1]):
                    m.d.sync += [u[i].eq(rq_u.saturated[i]), g[i].eq(g_next)]
                # The sigmoid LUT is read alongside: its data is always that of g[i].
                rom = Memory(shape=unsigned(rom_bits), depth=SIG_SIZE, init=rom_data)
                m.submodules[f"sig_rom{i}"] = rom
                rp = rom.read_port()
                m.d.comb += rp.addr.eq(Mux(stage[1], lut_index(g_next), lut_index(g[i])))
                sig4.append(rp.data)
        else:
            p = regs("s4_p", signed(UP_BITS))
            with m.If(stage[1]):
                for i in range(L):
                    us = rq_u.saturated[i]
                    m.d.sync += p[i].eq(Mux(us < 0, 0, us))

        if swiglu:
            # ------------------------------------------------------ 4S: σ registered
            # (the LUT is a block RAM, as slow as the parameter memory: see stage 1P)
            stage = new_stage("s4s", stage[0], stage)
            carry_last("s4s", stage[1])
            sig = regs("s4s_sig", unsigned(SIG_BITS))      # 0 .. 2^15
            g4, u4 = regs("s4s_g", signed(SILU_BITS)), regs("s4s_u", signed(UP_BITS))
            with m.If(stage[1]):
                for i in range(L):
                    m.d.sync += [sig[i].eq(Mux(g[i] >= SIG_LIMIT, GATE_ONE,
                                               Mux(g[i] < -SIG_LIMIT, 0, sig4[i]))),
                                 g4[i].eq(g[i]), u4[i].eq(u[i])]

            # ------------------------------------------------------ 5: g·σ
            stage = new_stage("s5", stage[0], stage)
            carry_last("s5", stage[1])
            gs_bits = SILU_BITS + GATE_FRAC + 1
            gs, u5 = regs("s5_gs", signed(gs_bits)), regs("s5_u", signed(UP_BITS))
            with m.If(stage[1]):
                for i in range(L):
                    m.d.sync += [gs[i].eq(g4[i] * sig[i]), u5[i].eq(u4[i])]

            # ------------------------------------------------------ 6: t = rshift(g·σ, 15)
            stage = new_stage("s6", stage[0], stage)
            carry_last("s6", stage[1])
            t, u6 = regs("s6_t", signed(SILU_BITS)), regs("s6_u", signed(UP_BITS))
            with m.If(stage[1]):
                for i in range(L):
                    # |g·σ| < 2^38 and t = g for σ = 2^15: exact in int24 (docs §4)
                    m.d.sync += [t[i].eq(round_shift(gs[i], GATE_FRAC)), u6[i].eq(u5[i])]

            # ------------------------------------------------------ 7: p = t·u
            stage = new_stage("s7", stage[0], stage)
            carry_last("s7", stage[1])
            p = regs("s7_p", signed(self.p_bits))
            with m.If(stage[1]):
                for i in range(L):
                    m.d.sync += p[i].eq(t[i] * u6[i])

        # ---------------------------------------------------------- R: butterflies in a beat
        r_in = self.inner_rotation
        q_bits = self.p_bits + _log2(r_in)
        if r_in > 1:
            stage = new_stage("rot", stage[0], stage)
            carry_last("rot", stage[1])
            q = regs("rot_q", signed(q_bits))
            rotated = []
            for base in range(0, L, r_in):
                rotated += _fwht(p[base:base + r_in])
            with m.If(stage[1]):
                for i in range(L):
                    m.d.sync += q[i].eq(rotated[i])
        else:
            q = p

        # ---------------------------------------------------------- B: across beats
        pw = self.rotated_bits
        if B > 1:
            in_valid, in_en = stage
            jb = Signal(range(B), name="blk_beat")
            count = Signal(range(B + 1), name="blk_count")   # beats left in the out buffer
            blk_last = Signal(name="blk_last")
            acc = [regs(f"blk_acc{ib}_", signed(pw)) for ib in range(B)]
            obuf = [regs(f"blk_out{ib}_", signed(pw)) for ib in range(B)]
            out_valid = count != 0
            next_en = Signal(name="c1_en")
            accept = Signal(name="blk_accept")
            take = out_valid & next_en
            m.d.comb += [
                accept.eq((jb != B - 1) | (count == 0) | ((count == 1) & next_en)),
                in_en.eq(~in_valid | accept),
            ]
            load = in_valid & accept
            final = jb == B - 1
            with m.If(load):
                m.d.sync += jb.eq(Mux(final | last, 0, jb + 1))
            sums = []
            for ib in range(B):
                bits = [jb[k] for k in range(_log2(B)) if ib >> k & 1]
                row = []
                for i in range(L):
                    base = Mux(jb == 0, 0, acc[ib][i])
                    # sign (-1)^popcount(ib & jb): block row 0 only adds
                    row.append(Mux(Cat(*bits).xor(), base - q[i], base + q[i]) if bits
                               else base + q[i])
                sums.append(row)
            with m.If(load & ~final):
                for ib in range(B):
                    for i in range(L):
                        m.d.sync += acc[ib][i].eq(sums[ib][i])
            with m.If(load & final):
                m.d.sync += [count.eq(B), blk_last.eq(last)]
                for ib in range(B):
                    for i in range(L):
                        m.d.sync += obuf[ib][i].eq(sums[ib][i])
            with m.Elif(take):
                m.d.sync += count.eq(count - 1)
                for ib in range(B - 1):
                    for i in range(L):
                        m.d.sync += obuf[ib][i].eq(obuf[ib + 1][i])
            # C1 is fed by the buffer's head
            c1_valid = Signal(name="c1_valid")
            with m.If(next_en):
                m.d.sync += c1_valid.eq(out_valid)
            stage = (c1_valid, next_en)
            src = obuf[0]
            c1_last = Signal(name="c1_last")
            with m.If(next_en):
                m.d.sync += c1_last.eq(blk_last & (count == 1))
            last = c1_last
        else:
            stage = new_stage("c1", stage[0], stage)
            carry_last("c1", stage[1])
            src = q

        # ---------------------------------------------------------- C1-C3: h = rq_8(p', M_h, S_h)
        # (S_h is the expert's register, steady while beats are in flight: not carried along)
        rq_h = RequantPipeline(lanes=L, acc_bits=pw, out_bits=HIDDEN_BITS,
                               names=("c1_prod", None, "c2_round"))
        with m.If(stage[1]):
            rq_h.product(m, src, hid_mult, hid_shift)

        stage = new_stage("c2", stage[0], stage)
        carry_last("c2", stage[1])
        with m.If(stage[1]):
            rq_h.round(m)

        o_en = Signal(name="c3_en")
        m.d.comb += [stage[1].eq(~stage[0] | o_en),
                     o_en.eq(~self.o_h.valid | self.o_h.ready)]
        with m.If(o_en):
            m.d.sync += [self.o_h.valid.eq(stage[0]), self.o_h.payload.last.eq(last)]
            rq_h.output(m, self.o_h.payload.data)
        return m
