"""`Gearbox`: a stream of ``n``-lane beats as a stream of ``m``-lane beats, ``n`` and ``m`` dividing
one another (a width converter).

The payload is a `data.StructLayout` with a ``data`` member (an `data.ArrayLayout` of lanes),
optionally a one-bit ``last`` member, and any other members (*side* fields, e.g. a token index
and a gate) that belong to the whole packet. Input and output layouts are equal member for
member except for the number of lanes of ``data``. Lane ``i`` of a wide beat is lane
``i mod k`` of its narrow beat ``i // k`` (``k`` the narrow side's lanes): lane 0 first, in
either direction.

Narrowing (``n = r·m``): each input beat leaves as ``r`` output beats, lanes ``j·m .. j·m+m-1``
in beat ``j``, each with the input beat's side fields, ``last`` only on the final one (and only
if the input beat had it).

Widening (``m = r·n``): every ``r`` consecutive input beats leave as one output beat, the side
fields and ``last`` from the ``r``-th. The producer keeps packets a whole number of wide beats
long (``last`` only on an ``r``-th beat) and the side fields equal across the ``r`` beats; the
unit checks neither.

Equal widths: the ports are wired through (no register, no cycle).

Timing: one register stage; one narrow beat per cycle when the consumer keeps up (narrowing: a
new input beat is taken in the cycle its predecessor's final output beat leaves; widening: a
new input beat goes in while the complete wide beat leaves). ``o.valid`` is a register, and
``i.ready`` depends only on registers and ``o.ready``, never on ``i.valid``.

Ports: ``i`` (in stream, the input layout), ``o`` (out stream, the output layout).
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Gearbox"]


def _lanes(layout, what):
    if not isinstance(layout, data.StructLayout):
        raise TypeError(f"{what} must be a data.StructLayout, not {layout!r}")
    members = dict(layout.members)
    if not isinstance(members.get("data"), data.ArrayLayout):
        raise ValueError(f"{what} must have a 'data' member that is a data.ArrayLayout, "
                         f"not {members.get('data')!r}")
    if "last" in members and Shape.cast(members["last"]).width != 1:
        raise ValueError(f"{what}'s 'last' member must be one bit, not {members['last']!r}")
    return members["data"].length


class Gearbox(wiring.Component):
    """``n``-lane beats in, ``m``-lane beats out (see the module docstring).

    Parameters
    ----------
    i_layout, o_layout : data.StructLayout
        The payloads of ``i`` and ``o``: the same members in the same order, ``data`` an
        `data.ArrayLayout` of the same element shape in both, its lane counts dividing one
        another; ``last``, if present, one bit.
    src_loc_at : int
        Stack frames between the caller to name in Amaranth's unused-component warning and
        this constructor.

    Attributes
    ----------
    i : ``In(stream.Signature(i_layout))``
    o : ``Out(stream.Signature(o_layout))``
    i_lanes, o_lanes : int
        Lanes of ``data`` in and out.
    ratio : int
        ``max(i_lanes, o_lanes) // min(i_lanes, o_lanes)``: output beats per input beat
        (narrowing) or input beats per output beat (widening).

    Raises
    ------
    TypeError
        If a layout is not a `data.StructLayout`.
    ValueError
        If the layouts differ in anything but the lanes of ``data``, ``data`` is not an array,
        ``last`` is not one bit, or neither lane count divides the other.
    """

    def __init__(self, i_layout, o_layout, *, src_loc_at: int = 0):
        n, m = _lanes(i_layout, "i_layout"), _lanes(o_layout, "o_layout")
        i_members, o_members = dict(i_layout.members), dict(o_layout.members)
        if list(i_members) != list(o_members):
            raise ValueError(f"i_layout and o_layout must have the same members, not "
                             f"{list(i_members)} and {list(o_members)}")
        for name in i_members:
            if name != "data" and Shape.cast(i_members[name]) != Shape.cast(o_members[name]):
                raise ValueError(f"member {name!r} must have one shape in and out, not "
                                 f"{i_members[name]!r} and {o_members[name]!r}")
        if i_members["data"].elem_shape != o_members["data"].elem_shape:
            raise ValueError(f"the lanes of 'data' must have one shape in and out, not "
                             f"{i_members['data'].elem_shape!r} and "
                             f"{o_members['data'].elem_shape!r}")
        if n % m and m % n:
            raise ValueError(f"the lane counts must divide one another, not {n} and {m}")
        self.i_layout, self.o_layout = i_layout, o_layout
        self.i_lanes, self.o_lanes = n, m
        self.ratio = max(n, m) // min(n, m)
        self.side = [name for name in i_members if name not in ("data", "last")]
        self.has_last = "last" in i_members
        super().__init__({"i": In(stream.Signature(i_layout)),
                          "o": Out(stream.Signature(o_layout))}, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        i, o, r = self.i, self.o, self.ratio
        n, w = self.i_lanes, self.o_lanes
        if r == 1:
            m.d.comb += [o.valid.eq(i.valid), i.ready.eq(o.ready),
                         o.payload.as_value().eq(i.payload.as_value())]
            return m
        beat = Signal(range(r), name="beat")       # narrow beat in progress
        final = Signal(name="final")
        m.d.comb += final.eq(beat == r - 1)
        if n > w:
            # narrowing: the wide beat in a register, its lanes sent beat by beat
            held = Signal(self.i_layout, name="held")
            m.d.comb += i.ready.eq(~o.valid | (o.ready & final))
            with m.If(i.valid & i.ready):
                m.d.sync += [held.eq(i.payload), o.valid.eq(1), beat.eq(0)]
            with m.Elif(o.valid & o.ready):
                m.d.sync += beat.eq(Mux(final, 0, beat + 1))
                with m.If(final):
                    m.d.sync += o.valid.eq(0)
            for name in self.side:
                m.d.comb += o.payload[name].eq(held[name])
            for lane in range(w):
                m.d.comb += o.payload.data[lane].eq(
                    Array(held.data[j * w + lane] for j in range(r))[beat])
            if self.has_last:
                m.d.comb += o.payload.last.eq(held.last & final)
        else:
            # widening: narrow beats into the lanes of the output register
            m.d.comb += i.ready.eq(~o.valid | o.ready)
            with m.If(o.valid & o.ready):
                m.d.sync += o.valid.eq(0)
            with m.If(i.valid & i.ready):
                m.d.sync += beat.eq(Mux(final, 0, beat + 1))
                for j in range(r):
                    with m.If(beat == j):
                        for lane in range(n):
                            m.d.sync += o.payload.data[j * n + lane].eq(i.payload.data[lane])
                with m.If(final):
                    m.d.sync += o.valid.eq(1)
                    for name in self.side:
                        m.d.sync += o.payload[name].eq(i.payload[name])
                    if self.has_last:
                        m.d.sync += o.payload.last.eq(i.payload.last)
        return m

