"""A sequential restoring divider: ``floor(num / den)`` one quotient bit per cycle.

Interface
---------
``i_op`` (in stream): ``{num: unsigned(num_bits), den: unsigned(den_bits)}``.
``o_quo`` (out stream): ``{quotient: unsigned(quo_bits), remainder: unsigned(den_bits)}``.

One operation at a time: ``i_op.ready`` is high while the unit is idle (no division running and
no result waiting), a function of registers only, never of ``i_op.valid``. An operation
accepted in cycle ``c`` has its result valid in cycle ``c + quo_bits + 1`` (`latency` cycles
later); the result is held until ``o_quo.ready``, and the unit takes the next operation in the
cycle after the result has transferred.

``den = 0`` gives ``quotient = 0`` and ``remainder = 0`` (the device's ``div15`` convention).

Quotient width
--------------
With ``quo_bits == num_bits`` (the default) every quotient fits. A narrower quotient saves
cycles when the caller knows ``num < den · 2^quo_bits`` (the quotient fits ``quo_bits``); for
other operands the result is unspecified. The router's ``div15(n, d) = (n·2^15 + (d >> 1)) // d``
has ``n <= d``, hence a quotient ``<= 2^15``: 16 quotient bits.

Algorithm
---------
The remainder register starts as ``num >> quo_bits`` (``< den`` by the precondition), the
quotient register as the low ``quo_bits`` of ``num``. Each cycle shifts the top bit of the
quotient register into the remainder, subtracts ``den`` if the result is not smaller, and
shifts the comparison result into the bottom of the quotient register (classic restoring
division, the numerator's bits and the quotient's sharing one register).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.checks import check_int

__all__ = ["Divider", "divider_logic", "divider_op_layout", "divider_result_layout"]


def divider_op_layout(*, num_bits: int, den_bits: int) -> data.StructLayout:
    """``i_op`` payload: ``num`` then ``den``, unsigned, LSB first."""
    return data.StructLayout({"num": unsigned(num_bits), "den": unsigned(den_bits)})


def divider_result_layout(*, quo_bits: int, den_bits: int | None) -> data.StructLayout:
    """``o_quo`` payload: ``quotient`` then ``remainder``, unsigned, LSB first (no remainder
    field for ``den_bits=None``)."""
    if den_bits is None:
        return data.StructLayout({"quotient": unsigned(quo_bits)})
    return data.StructLayout({"quotient": unsigned(quo_bits), "remainder": unsigned(den_bits)})


class Divider(wiring.Component):
    """Unsigned restoring divider with stream handshakes (see the module docstring).

    Parameters
    ----------
    num_bits : int
        Numerator width, in [1, 128].
    den_bits : int
        Denominator (and remainder) width, in [1, 128].
    quo_bits : int, optional
        Quotient width and cycles per division, in [max(1, num_bits - den_bits), num_bits];
        default `num_bits`.

    Attributes
    ----------
    i_op : ``In(stream.Signature(divider_op_layout(...)))``
    o_quo : ``Out(stream.Signature(divider_result_layout(...)))``
    latency : int
        ``quo_bits + 1``: cycles from accepting an operation to its result being valid.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, *, num_bits: int, den_bits: int, quo_bits: int | None = None,
                 src_loc_at: int = 0):
        check_int("num_bits", num_bits, 1, 128)
        check_int("den_bits", den_bits, 1, 128)
        if quo_bits is None:
            quo_bits = num_bits
        check_int("quo_bits", quo_bits, 1, num_bits)
        if num_bits - quo_bits > den_bits:
            raise ValueError(f"quo_bits must be at least num_bits - den_bits = "
                             f"{num_bits - den_bits}, not {quo_bits!r}")
        self.num_bits = num_bits
        self.den_bits = den_bits
        self.quo_bits = quo_bits
        self.latency = quo_bits + 1
        self.op_layout = divider_op_layout(num_bits=num_bits, den_bits=den_bits)
        self.result_layout = divider_result_layout(quo_bits=quo_bits, den_bits=den_bits)
        super().__init__({
            "i_op": In(stream.Signature(self.op_layout)),
            "o_quo": Out(stream.Signature(self.result_layout)),
        }, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        divider_logic(m, self.i_op, self.o_quo, quo_bits=self.quo_bits)
        return m


def divider_logic(m: Module, op, res, *, quo_bits: int, name: str = "div") -> None:
    """Add a restoring divider serving `op` and `res` to module `m` (no submodule).

    `Divider` is this function in a component of its own; a unit that needs a divider but
    keeps its Verilog in one module (no ``router.div`` module, which Verilator's
    ``DECLFILENAME`` lint flags) calls it with stream interfaces of its own, e.g.
    ``stream.Signature(divider_op_layout(...)).create()``. The result layout may leave out
    ``remainder``. Signals are named ``<name>_*``.
    """
    qb = quo_bits
    db = len(op.payload.den)
    nb = len(op.payload.num)
    if nb - qb > db:
        raise ValueError(f"quo_bits must be at least num_bits - den_bits = {nb - db}, not {qb!r}")

    busy = Signal(name=f"{name}_busy")
    count = Signal(range(qb + 1), name=f"{name}_count")
    den = Signal(db, name=f"{name}_den")
    rem = Signal(db, name=f"{name}_rem")     # < den throughout (the precondition starts it so)
    quo = Signal(qb, name=f"{name}_quo")     # numerator bits still to shift in, then quotient
    zero = Signal(name=f"{name}_zero")       # den == 0: the result is 0

    m.d.comb += op.ready.eq(~busy & ~res.valid)
    with m.If(res.valid & res.ready):
        m.d.sync += res.valid.eq(0)

    with m.If(op.valid & op.ready):
        m.d.sync += [
            busy.eq(1),
            count.eq(qb),
            den.eq(op.payload.den),
            zero.eq(op.payload.den == 0),
            quo.eq(op.payload.num[:qb]),
        ]
        if nb > qb:
            # The precondition num < den · 2^qb makes num >> qb < den: it fits den_bits.
            m.d.sync += rem.eq(op.payload.num[qb:])
        else:
            m.d.sync += rem.eq(0)

    trial = Cat(quo[qb - 1], rem)                       # rem · 2 + next numerator bit
    fits = trial >= den
    with m.If(busy):
        m.d.sync += [
            rem.eq(Mux(fits, trial - den, trial)[:db]),
            quo.eq(Cat(fits, quo[:qb - 1]) if qb > 1 else fits),
            count.eq(count - 1),
        ]
        with m.If(count == 1):
            m.d.sync += [busy.eq(0), res.valid.eq(1)]

    m.d.comb += res.payload.quotient.eq(Mux(zero, 0, quo))
    if "remainder" in res.payload.shape().members:
        m.d.comb += res.payload.remainder.eq(Mux(zero, 0, rem))
