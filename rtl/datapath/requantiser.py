"""The requantiser: ``sat_b(rshift(acc · M, S))`` on N lanes per beat, one beat per cycle.

This is ``rq_b`` of docs/arithmetic.md (``hls_models.fixed_point.requantize`` in code):
``((acc * mult) + 2^(shift-1)) >> shift`` with an arithmetic (floor) shift, so rounding is half
up, then saturation to the signed ``out_bits`` range.

Implementation
--------------
`RequantPipeline` is the one implementation of this pipeline: `Requantiser` wraps it in streams,
and the units that requantise inside pipelines of their own (the hidden unit three times, the
expert engine's down projection, the combiner's flush) add its stages to theirs, under their
own enables and beside their own side fields. The arithmetic is `rtl.datapath.arith.round_shift`
and `rtl.datapath.arith.saturate`. The rounding add is folded into the shift with the identity
(``p`` an integer, ``s >= 1``)::

    (p + 2^(s-1)) >> s  ==  ((p >> (s-1)) + 1) >> 1

which needs no ``2^(s-1)`` constant as wide as the largest shift. For a product ``p`` of ``P``
signed bits every ``s >= P`` gives 0, so the variable shift amount ``s-1`` is clamped to
``P-1`` and the barrel shifter is only ``P`` bits wide and ``ceil(log2 P)`` levels deep.
A shift of 0 is outside the device's arithmetic (``S >= 1``); the pipeline outputs 0 for it.

The `Requantiser`'s three register stages, each with its own enable so that bubbles are
squeezed out and the unit accepts one beat per cycle while the consumer is ready:

1. ``acc[i] * mult[i]`` (``in_width + mult_bits`` signed bits), and the shift;
2. ``((p >> t) + 1) >> 1``;
3. saturation to ``out_bits``: this register *is* the output payload.

``o_stream.valid`` is a register (it never depends on ``o_stream.ready``); ``i_stream.ready``
is combinational from ``o_stream.ready`` and the stage valids (stream rule 4 allows it).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.spec.arith import ACC_BITS, MULT_BITS, SHIFT_BITS, Y_BITS
from moeforge.checks import check_int

from .arith import round_shift, saturate

__all__ = ["Requantiser", "RequantPipeline", "requantiser_input_layout",
           "requantiser_output_layout"]


def _lanes(value, lanes: int) -> list:
    """`value` per lane: a list or tuple as it is, one value repeated for every lane."""
    if isinstance(value, (list, tuple)):
        if len(value) != lanes:
            raise ValueError(f"expected {lanes} lanes, not {len(value)}")
        return list(value)
    return [value] * lanes


class RequantPipeline:
    """``rq_b(acc, M, S) = sat_b(rshift(acc · M, S))`` as register stages of a caller's module.

    The one implementation of the requantiser's pipeline (see the module docstring). Each
    method adds one stage's register loads to ``m.d.sync`` in the caller's current control
    block, which is the stage's ``with m.If(enable):`` (the stage loads while it is high), to be
    called in order: `product`, `round`, then `output` (or the caller registers `saturated` in
    a last stage of its own). The caller owns the stage valids and enables, so it keeps its own
    timing and loads its side fields (valid, token, last, ...) in the same blocks.

    Parameters
    ----------
    lanes : int
        Values per beat.
    acc_bits : int
        Width of the signed accumulators; the product registers are ``acc_bits + mult_bits``
        signed bits, exact.
    out_bits : int
        Width of the saturated result.
    names : (str, str or None, str)
        Names of the product, shift and rounding registers. No shift name: the shift is not
        registered (see `product`).
    mult_bits, shift_bits : int
        Widths of ``M`` (unsigned) and of the shift registers.
    packed : bool
        A stage's registers are one signal of ``lanes`` elements (`data.ArrayLayout`) named
        ``names[k]``, rather than one signal per lane named ``names[k]`` and the lane's index.

    Attributes
    ----------
    prod : list of Signal or Signal
        Stage 1: ``acc · M``, lane ``i`` at ``prod[i]``.
    shift : list of Signal, Signal or Value
        The shift the rounding stage uses.
    rounded : list of Signal or Signal
        Stage 2: ``rshift(prod, S)``.
    saturated : list of Value
        ``sat_b(rounded)``, what `output` registers.
    """

    def __init__(self, *, lanes: int, acc_bits: int, out_bits: int, names: tuple,
                 mult_bits: int = MULT_BITS, shift_bits: int = SHIFT_BITS, packed: bool = False):
        self.lanes = lanes
        self.prod_bits = acc_bits + mult_bits   # exact: |acc·M| < 2^(acc_bits+mult_bits-1)
        self.out_bits = out_bits
        self.names = names
        self.shift_bits = shift_bits
        self.packed = packed

    def _registers(self, name: str, shape):
        if self.packed:
            return Signal(data.ArrayLayout(shape, self.lanes), name=name)
        return [Signal(shape, name=f"{name}{i}") for i in range(self.lanes)]

    def product(self, m: Module, acc, mult, shift):
        """Stage 1: ``acc[i] · mult[i]``, and the shift.

        `acc` is a sequence of lanes; `mult` and `shift` one value for the beat or a sequence
        of lanes. The stage registers the shift beside the products, unless it has no name:
        the rounding stage then reads `shift` as it is, which the caller holds steady while
        beats are in flight (a per-expert parameter, or a register of its own in this stage).
        """
        prod_name, shift_name, _ = self.names
        mults = _lanes(mult, self.lanes)
        self.prod = self._registers(prod_name, signed(self.prod_bits))
        per_lane = isinstance(shift, (list, tuple))
        if shift_name is None:
            self.shift = shift
        elif per_lane:
            self.shift = [Signal(self.shift_bits, name=f"{shift_name}{i}") for i in range(self.lanes)]
        else:
            self.shift = Signal(self.shift_bits, name=shift_name)
            m.d.sync += self.shift.eq(shift)
        for i in range(self.lanes):
            m.d.sync += self.prod[i].eq(acc[i] * mults[i])
            if shift_name is not None and per_lane:
                m.d.sync += self.shift[i].eq(shift[i])
        return self.prod

    def round(self, m: Module):
        """Stage 2: ``rshift(p, S)``, as ``((p >> t) + 1) >> 1`` with ``t = min(S - 1, P - 1)``
        (fits in the product's ``P`` bits)."""
        shifts = _lanes(self.shift, self.lanes)
        self.rounded = self._registers(self.names[2], signed(self.prod_bits))
        for i in range(self.lanes):
            m.d.sync += self.rounded[i].eq(round_shift(self.prod[i], shifts[i]))
        self.saturated = [saturate(self.rounded[i], self.out_bits) for i in range(self.lanes)]
        return self.rounded

    def output(self, m: Module, out) -> None:
        """Stage 3: ``sat_b`` into `out`, the caller's registers (lane ``i`` at ``out[i]``, e.g.
        a stream's payload)."""
        for i in range(self.lanes):
            m.d.sync += out[i].eq(self.saturated[i])


def requantiser_input_layout(*, in_width: int, lanes: int, mult_bits: int = MULT_BITS,
                             shift_bits: int = SHIFT_BITS) -> data.StructLayout:
    """Input payload: ``acc`` (lanes × signed in_width), ``mult`` (lanes × unsigned mult_bits),
    ``shift`` (unsigned shift_bits, one per beat). Fields are packed LSB first in that order."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(in_width), lanes),
        "mult": data.ArrayLayout(unsigned(mult_bits), lanes),
        "shift": unsigned(shift_bits),
    })


def requantiser_output_layout(*, out_bits: int, lanes: int) -> data.ArrayLayout:
    """Output payload: lanes × signed out_bits, lane 0 in the least significant bits."""
    return data.ArrayLayout(signed(out_bits), lanes)


class Requantiser(wiring.Component):
    """Pipelined N-lane requantiser with stream input and output.

    Parameters
    ----------
    in_width : int
        Accumulator width in bits (signed), in [2, 64]; 32 for the int32 accumulators.
    out_bits : int
        Output width in bits (signed, saturated), in [2, 64].
    lanes : int
        Values per beat, in [1, 1024].
    mult_bits : int
        Multiplier width (unsigned); ``spec.arith.MULT_BITS`` (16) on the device.
    shift_bits : int
        Width of the per-beat shift field; ``spec.arith.SHIFT_BITS`` (6) holds the device's ``S``
        in [1, 62].

    Attributes
    ----------
    i_stream : ``In(stream.Signature(requantiser_input_layout(...)))``
    o_stream : ``Out(stream.Signature(requantiser_output_layout(...)))``
    latency : int
        Cycles from an accepted input beat to its output beat becoming valid (3).

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of its range.
    """

    latency = 3

    def __init__(self, *, in_width: int = ACC_BITS, out_bits: int = Y_BITS, lanes: int = 1,
                 mult_bits: int = MULT_BITS, shift_bits: int = SHIFT_BITS):
        check_int("in_width", in_width, 2, 64)
        check_int("out_bits", out_bits, 2, 64)
        check_int("lanes", lanes, 1, 1024)
        check_int("mult_bits", mult_bits, 1, 32)
        check_int("shift_bits", shift_bits, 1, 8)
        self.in_width, self.out_bits, self.lanes = in_width, out_bits, lanes
        self.mult_bits, self.shift_bits = mult_bits, shift_bits
        self.in_layout = requantiser_input_layout(in_width=in_width, lanes=lanes,
                                                  mult_bits=mult_bits, shift_bits=shift_bits)
        self.out_layout = requantiser_output_layout(out_bits=out_bits, lanes=lanes)
        super().__init__({
            "i_stream": In(stream.Signature(self.in_layout)),
            "o_stream": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        i_p = self.i_stream.payload

        # Per-stage valid and enable: a stage loads when it is empty or the next one loads.
        # The last stage's valid is o_stream.valid itself; the first stage's enable is
        # i_stream.ready.
        valid = [Signal(name="s0_valid"), Signal(name="s1_valid"), self.o_stream.valid]
        en = [self.i_stream.ready, Signal(name="s1_en"), Signal(name="s2_en")]
        m.d.comb += en[2].eq(~valid[2] | self.o_stream.ready)
        m.d.comb += en[1].eq(~valid[1] | en[2])
        m.d.comb += en[0].eq(~valid[0] | en[1])
        for k, upstream in enumerate([self.i_stream.valid, valid[0], valid[1]]):
            with m.If(en[k]):
                m.d.sync += valid[k].eq(upstream)

        lanes = range(self.lanes)
        rq = RequantPipeline(lanes=self.lanes, acc_bits=self.in_width, out_bits=self.out_bits,
                             names=("s0_prod", "s0_shift", "s1_round"),
                             mult_bits=self.mult_bits, shift_bits=self.shift_bits)
        with m.If(en[0]):
            rq.product(m, [i_p.acc[i] for i in lanes], [i_p.mult[i] for i in lanes], i_p.shift)
        with m.If(en[1]):
            rq.round(m)
        with m.If(en[2]):
            rq.output(m, self.o_stream.payload)
        return m
