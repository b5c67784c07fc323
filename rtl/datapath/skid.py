"""`SkidBuffer`: a stream register slice whose ``valid`` and ``ready`` are both registers.

A pipeline whose stages pass ``ready`` back combinationally (each stage loads when the next one
does) builds one long path from the last consumer to the first producer: on the ECP5 85F build
the combiner's gearbox state reached the expert engine's operand registers through 27 logic
levels. A skid buffer cuts that path: ``i.ready`` is a register (the skid slot is empty), so
nothing behind it sees the consumer's ``ready`` in the same cycle.

Two entries: the output register and the skid slot. A beat taken while the output register
stalls waits in the skid slot; ``i.ready`` falls for as long as it is there. With ``o.ready``
high one beat moves every cycle (the skid slot stays empty), one cycle after it went in. Beats
leave in order, none lost or repeated, and a stalled output beat holds still.

Ports: ``i`` (in stream), ``o`` (out stream), of the same payload layout.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """A two-entry register slice with registered ``valid`` and ``ready``; see the module
    docstring.

    Parameters
    ----------
    layout : shape-castable
        The payload of ``i`` and ``o``.

    Attributes
    ----------
    i : ``In(stream.Signature(layout))``
    o : ``Out(stream.Signature(layout))``
    latency : int
        Cycles from a beat's transfer on ``i`` to its first cycle on ``o`` (1).
    """

    latency = 1

    def __init__(self, layout):
        self.layout = layout
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        held = Signal(self.layout, name="held", reset_less=True)
        skid_valid = Signal(name="skid_valid")
        m.d.comb += i.ready.eq(~skid_valid)
        with m.If(~o.valid | o.ready):
            # the output register moves: the skid slot's beat first, else the input's
            with m.If(skid_valid):
                m.d.sync += [o.payload.eq(held), o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [o.payload.eq(i.payload), o.valid.eq(i.valid)]
        with m.Elif(i.valid & i.ready):
            m.d.sync += [held.eq(i.payload), skid_valid.eq(1)]
        return m
