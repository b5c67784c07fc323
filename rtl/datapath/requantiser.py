"""The requantiser: ``sat_b(rshift(acc · M, S))`` on N lanes per beat, one beat per cycle.

This is ``rq_b`` of docs/arithmetic.md (``hls_models.fixed_point.requantize`` in code):
``((acc * mult) + 2^(shift-1)) >> shift`` with an arithmetic (floor) shift, so rounding is half
up, then saturation to the signed ``out_bits`` range.

Implementation
--------------
The arithmetic is `rtl.arith.round_shift` and `rtl.arith.saturate`, shared by every unit. The
rounding add is folded into the shift with the identity (``p`` an integer, ``s >= 1``)::

    (p + 2^(s-1)) >> s  ==  ((p >> (s-1)) + 1) >> 1

which needs no ``2^(s-1)`` constant as wide as the largest shift. For a product ``p`` of ``P``
signed bits every ``s >= P`` gives 0, so the variable shift amount ``s-1`` is clamped to
``P-1`` and the barrel shifter is only ``P`` bits wide and ``ceil(log2 P)`` levels deep.
A shift of 0 is outside the device's arithmetic (``S >= 1``); the unit outputs 0 for it.

Three register stages, each with its own enable so that bubbles are squeezed out and the
unit accepts one beat per cycle while the consumer is ready:

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
from moeforge.spec.image import check_int

from .arith import round_shift, saturate

__all__ = ["Requantiser", "requantiser_input_layout", "requantiser_output_layout"]


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
        self.in_width = in_width
        self.out_bits = out_bits
        self.lanes = lanes
        self.mult_bits = mult_bits
        self.shift_bits = shift_bits
        self.in_layout = requantiser_input_layout(in_width=in_width, lanes=lanes,
                                                  mult_bits=mult_bits, shift_bits=shift_bits)
        self.out_layout = requantiser_output_layout(out_bits=out_bits, lanes=lanes)
        super().__init__({
            "i_stream": In(stream.Signature(self.in_layout)),
            "o_stream": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        prod_bits = self.in_width + self.mult_bits   # exact: |acc·M| < 2^(in_width+mult_bits-1)
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

        # Stage 1: products, and the beat's shift.
        prod = [Signal(signed(prod_bits), name=f"s0_prod{i}") for i in range(lanes)]
        shift = Signal(self.shift_bits, name="s0_shift")
        with m.If(en[0]):
            m.d.sync += shift.eq(i_p.shift)
            for i in range(lanes):
                m.d.sync += prod[i].eq(i_p.acc[i] * i_p.mult[i])

        # Stage 2: rshift, as ((p >> t) + 1) >> 1 with t = min(S - 1, P - 1); fits in P bits.
        rounded = [Signal(signed(prod_bits), name=f"s1_round{i}") for i in range(lanes)]
        with m.If(en[1]):
            for i in range(lanes):
                m.d.sync += rounded[i].eq(round_shift(prod[i], shift))

        # Stage 3: saturate into the output payload register.
        with m.If(en[2]):
            for i in range(lanes):
                m.d.sync += self.o_stream.payload[i].eq(saturate(rounded[i], self.out_bits))

        return m
