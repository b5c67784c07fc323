"""`UARTRx`, `UARTTx`: the 8N1 PHY of the host link on boards.

8N1: a start bit (0), eight data bits LSB first, a stop bit (1); the line idles at 1. Both
sides count bits in clock cycles, ``divisor = round(clock_hz / baud)`` (`uart_divisor`).

The receiver sees a pin driven by another clock: it passes it through a two-flop synchroniser,
starts on a falling edge, checks the start bit at its middle (a shorter pulse is a glitch, not
a byte) and samples every bit there after, ``divisor`` cycles apart, so a baud rate off by a
few percent still lands inside each bit. A stop bit of 0 is a framing error: the byte is
dropped and counted. A UART cannot wait: a byte completed while the previous one was not
taken yet is dropped and counted as an overrun (the host link then times out or NACKs and the
host retransmits); the byte already offered stays, as a stream requires.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor", "MIN_DIVISOR", "MAX_BAUD_ERROR"]

MIN_DIVISOR = 4             # cycles a bit: fewer leave no middle to sample
MAX_BAUD_ERROR = 0.03       # both ends together must stay well inside half a bit over 10 bits
COUNTER_BITS = 16


def _check_divisor(divisor) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool):
        raise TypeError(f"divisor must be an integer, not {divisor!r}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be at least {MIN_DIVISOR} clock cycles a bit, "
                         f"not {divisor!r}")
    return divisor


def uart_divisor(clock_hz: float, baud: float) -> int:
    """``round(clock_hz / baud)``, checked.

    Raises
    ------
    ValueError
        If either rate is not positive, the divisor is below `MIN_DIVISOR`, or the baud rate it
        gives is more than `MAX_BAUD_ERROR` off `baud`.
    """
    if not clock_hz > 0 or not baud > 0:
        raise ValueError(f"clock_hz and baud must be positive, not {clock_hz!r} and {baud!r}")
    divisor = round(clock_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud!r} is too fast for a {clock_hz!r} Hz clock: "
                         f"{clock_hz / baud:.2f} cycles a bit, at least {MIN_DIVISOR} needed")
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud!r} from a {clock_hz!r} Hz clock is {100 * error:.1f}% off "
                         f"(divisor {divisor}); at most {100 * MAX_BAUD_ERROR:.0f}% is reliable")
    return divisor


class UARTTx(wiring.Component):
    """Bytes from ``i_data`` out on the ``tx`` pin, 8N1.

    ``i_data.ready`` is high while the line idles; ``busy`` while a byte is going out.

    Parameters
    ----------
    divisor : int
        Clock cycles a bit, at least `MIN_DIVISOR`.
    """

    def __init__(self, *, divisor: int, src_loc_at: int = 0):
        self.divisor = _check_divisor(divisor)
        super().__init__({"i_data": In(stream.Signature(8)), "tx": Out(1, init=1),
                          "busy": Out(1)}, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        shift = Signal(10)                      # start, data LSB first, stop: sent from bit 0
        bits_left = Signal(range(11))
        timer = Signal(range(self.divisor))
        m.d.comb += [self.busy.eq(bits_left != 0), self.i_data.ready.eq(bits_left == 0)]
        with m.If(self.i_data.valid & self.i_data.ready):
            m.d.sync += [shift.eq(Cat(0, self.i_data.payload, 1)), bits_left.eq(10),
                         timer.eq(0)]
        with m.Elif(bits_left != 0):
            m.d.sync += self.tx.eq(shift[0])
            m.d.sync += timer.eq(timer + 1)
            with m.If(timer == self.divisor - 1):
                m.d.sync += [timer.eq(0), shift.eq(shift >> 1), bits_left.eq(bits_left - 1)]
        with m.Else():
            m.d.sync += self.tx.eq(1)
        return m


class UARTRx(wiring.Component):
    """Bytes from the ``rx`` pin, 8N1, on ``o_data``.

    ``overruns`` and ``frame_errors`` count (wrapping, 16 bits) bytes dropped because the last
    was not taken yet and bytes whose stop bit was 0. ``busy`` is high while a byte is being
    received.

    Parameters
    ----------
    divisor : int
        Clock cycles a bit, at least `MIN_DIVISOR`.
    """

    def __init__(self, *, divisor: int, src_loc_at: int = 0):
        self.divisor = _check_divisor(divisor)
        super().__init__({"rx": In(1, init=1), "o_data": Out(stream.Signature(8)),
                          "overruns": Out(COUNTER_BITS),
                          "frame_errors": Out(COUNTER_BITS), "busy": Out(1)},
                         src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1, reset_less=False)

        timer = Signal(range(self.divisor))
        shift = Signal(8)
        bit = Signal(range(8))
        out = self.o_data
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)

        with m.FSM(name="uart_rx") as fsm:
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(self.divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):              # to the middle of the start bit
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "DATA"
                    with m.If(line):            # gone already: a glitch
                        m.next = "IDLE"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(self.divisor - 1), shift.eq(Cat(shift[1:], line)),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.next = "IDLE"             # at mid stop bit: ready for the next start edge
                    with m.If(~line):
                        m.d.sync += self.frame_errors.eq(self.frame_errors + 1)
                    with m.Elif(out.valid & ~out.ready):
                        m.d.sync += self.overruns.eq(self.overruns + 1)
                    with m.Else():
                        m.d.sync += [out.payload.eq(shift), out.valid.eq(1)]
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m
