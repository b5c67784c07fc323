"""`HostLink`: the device side of the host link protocol (``docs/protocol.md``).

The host talks to the accelerator over a lossy byte stream (a UART on a board, a socket to the
simulated device); the link turns that stream into the accelerator's command packets and its
response packets back into frames, and makes retransmission safe: a frame is executed only
when its CRC checks, and a retransmitted command (same sequence number as the last one
executed) is answered from the stored response instead of running twice.

Interface
---------
``i_rx`` (in stream of bytes): the bytes from the host. ``ready`` is high while the link is
hunting for a frame or receiving one, and low while a frame is handled (a command runs, a
response goes out): on the simulated device's byte stream the host's bytes wait.

``o_tx`` (out stream of bytes): frames to the host, ``RSP`` or ``NACK``.

``o_cmd`` (out stream ``{data: 8, last}``) / ``i_rsp`` (in stream ``{data: 8, last}``): toward
the accelerator (`MoEAccelerator`'s ``i_cmd`` / ``o_rsp``), one response packet per command
packet. The response is taken while the command is still going out, so an accelerator that
answers early cannot deadlock the link.

``busy`` (out): high from a frame's magic byte until it is handled, while a command runs and
while a frame is sent; low only while hunting. The simulated device stops its clock when the
SoC is idle, so everything that must advance on its own (the receive timeout) is busy.

Frame handling
--------------
One state machine, one frame at a time: hunt for ``0xA5``; take type, sequence, length; answer
an unknown type (NACK 4) or a length above ``max_payload`` (NACK 2) at once; take the payload
into the receive buffer and the CRC, computing the CRC as the bytes arrive (`CRC32`); check
it (NACK 1); then execute. An empty ``CMD`` is NACK 4 (after its CRC checked). A ``HELLO``
forgets the last sequence number, writes the report's header (`HELLO_HEADER_BYTES`: version,
``max_payload``, the link counters) into the response buffer, and injects the accelerator's
``INFO`` and ``READ_COUNTERS`` commands, whose response packets follow in the buffer. A response longer
than ``max_payload`` is taken to its end and answered NACK 5, and a duplicate of that command
answers NACK 5 again. A byte missing for ``rx_timeout`` cycles mid-frame answers NACK 3 once
the header is read and silently resumes hunting before. Frames go out with their CRC computed
as the bytes leave; the sequence number of every answer is the one received.

Link counters (u32, wrapping, reported by HELLO): frames executed (``CMD`` frames passed to
the accelerator; not duplicates, not HELLO), CRC errors, duplicates, receive timeouts (every
mid-frame timeout, header read or not).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from moeforge.spec.protocol import (COUNTER_BYTES, CRC_BYTES, DEFAULT_MAX_PAYLOAD, HELLO_BYTES,
                                    HELLO_HEADER_BYTES, LINK_COUNTERS, LINK_VERSION, MAGIC,
                                    MAX_LENGTH_FIELD, FrameType, NackReason, Op)

from ..top.accelerator import byte_layout
from .crc32 import CRC32

__all__ = ["HostLink", "DEFAULT_RX_TIMEOUT"]

DEFAULT_RX_TIMEOUT = 4096               # cycles without a byte mid-frame


class HostLink(wiring.Component):
    """The device side of the host link (see the module docstring).

    Parameters
    ----------
    max_payload : int
        Longest payload received or sent, in bytes: the size of the receive buffer and of the
        response buffer. At least the HELLO report (`HELLO_BYTES`, 80), at most 65535 (the
        length field).
    rx_timeout : int
        Cycles without a byte after which a frame being received is abandoned, at least 1.

    Raises
    ------
    TypeError, ValueError
        For a parameter of the wrong type or out of its range.
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 rx_timeout: int = DEFAULT_RX_TIMEOUT, src_loc_at: int = 0):
        for name, value in (("max_payload", max_payload), ("rx_timeout", rx_timeout)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
        if not HELLO_BYTES <= max_payload <= MAX_LENGTH_FIELD:
            raise ValueError(f"max_payload must be in [{HELLO_BYTES}, {MAX_LENGTH_FIELD}] "
                             f"(the HELLO report must fit, the length field is u16), "
                             f"not {max_payload!r}")
        if rx_timeout < 1:
            raise ValueError(f"rx_timeout must be at least 1 cycle, not {rx_timeout!r}")
        self.max_payload = max_payload
        self.rx_timeout = rx_timeout
        super().__init__({
            "i_rx": In(stream.Signature(8)),
            "o_tx": Out(stream.Signature(8)),
            "o_cmd": Out(stream.Signature(byte_layout())),
            "i_rsp": In(stream.Signature(byte_layout())),
            "busy": Out(1),
        }, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        P = self.max_payload
        aw = max(1, ceil_log2(P))
        m.submodules.rx_buf = rx_buf = Memory(shape=8, depth=P, init=[])
        m.submodules.rsp_buf = rsp_buf = Memory(shape=8, depth=P, init=[])
        rx_wr, rx_rd = rx_buf.write_port(), rx_buf.read_port()
        rsp_wr, rsp_rd = rsp_buf.write_port(), rsp_buf.read_port()
        m.submodules.rx_crc = rx_crc = CRC32()
        m.submodules.tx_crc = tx_crc = CRC32()

        rx, tx, cmd, rsp = self.i_rx, self.o_tx, self.o_cmd, self.i_rsp
        rx_take = rx.valid & rx.ready
        tx_take = tx.valid & tx.ready
        cmd_take = cmd.valid & cmd.ready
        rsp_take = rsp.valid & rsp.ready

        # the frame received
        ftype, seq = Signal(8), Signal(8)
        length = Signal(16)
        crc_rx = Signal(32)
        idx = Signal(16)                        # byte of the field, payload or packet at hand
        timer = Signal(range(self.rx_timeout))  # cycles without a byte, mid-frame

        # the stored response: of the last command executed, or the HELLO report
        have_last, last_seq = Signal(), Signal(8)
        rsp_len = Signal(range(P + 1))
        rsp_too_long = Signal()
        rcount = Signal(range(P + 1))           # response bytes stored so far
        overflow = Signal()                     # the response did not fit
        cmd_sent, rsp_done = Signal(), Signal()
        hello = Signal()                        # executing a HELLO's injected commands
        inject = Signal(8)                      # the injected command's opcode

        # the frame sent
        nack = Signal()
        reason = Signal(8)
        tx_len = Signal(16)
        m.d.comb += tx_len.eq(Mux(nack, 1, rsp_len))

        frames, crc_errors, duplicates, rx_timeouts = (Signal(8 * COUNTER_BYTES, name=n) for n in (
            "frames_executed", "crc_errors", "duplicates", "rx_timeouts"))
        link_counters = dict(zip(LINK_COUNTERS, (frames, crc_errors, duplicates, rx_timeouts),
                                 strict=True))
        # the HELLO report's header (HELLO_HEADER_FORMAT): version, max_payload, link counters
        report = [Const(LINK_VERSION, 8), Const(P & 0xFF, 8), Const(P >> 8, 8)] + [
            link_counters[n][8 * i:8 * i + 8] for n in LINK_COUNTERS for i in range(COUNTER_BYTES)]
        assert len(report) == HELLO_HEADER_BYTES

        m.d.comb += [rx_crc.data.eq(rx.payload), tx_crc.data.eq(tx.payload),
                     rx_wr.addr.eq(idx[:aw]), rx_wr.data.eq(rx.payload),
                     rsp_wr.addr.eq(rcount[:aw]),
                     cmd.payload.data.eq(Mux(hello, inject, rx_rd.data))]

        def nack_with(code):
            m.d.sync += [nack.eq(1), reason.eq(code)]
            m.next = "TX_MAGIC"

        def respond():
            m.d.sync += nack.eq(0)
            m.next = "TX_MAGIC"

        def receiving(header_read: bool):
            """Take a byte of the frame; abandon the frame after `rx_timeout` cycles without."""
            m.d.comb += rx.ready.eq(1)
            with m.If(rx_take):
                m.d.sync += timer.eq(0)
            with m.Elif(timer == self.rx_timeout - 1):
                m.d.sync += [timer.eq(0), rx_timeouts.eq(rx_timeouts + 1)]
                if header_read:
                    nack_with(NackReason.TIMEOUT)
                else:
                    m.next = "HUNT"
            with m.Else():
                m.d.sync += timer.eq(timer + 1)

        def header_byte(target, next_state):
            receiving(header_read=False)
            m.d.comb += rx_crc.en.eq(rx_take)
            with m.If(rx_take):
                m.d.sync += target.eq(rx.payload)
                m.next = next_state

        def sending(value, next_state=None):
            """Offer `value` to the host. With `next_state`: a byte the CRC covers (type,
            sequence, length), added to it and followed by `next_state` when taken."""
            m.d.comb += [tx.valid.eq(1), tx.payload.eq(value)]
            if next_state is not None:
                m.d.comb += tx_crc.en.eq(tx_take)
                with m.If(tx_take):
                    m.next = next_state

        with m.FSM(name="link") as fsm:
            with m.State("HUNT"):
                m.d.comb += [rx.ready.eq(1), rx_crc.clear.eq(1)]
                m.d.sync += timer.eq(0)
                with m.If(rx_take & (rx.payload == MAGIC)):
                    m.next = "TYPE"

            with m.State("TYPE"):
                header_byte(ftype, "SEQ")
            with m.State("SEQ"):
                header_byte(seq, "LEN_LO")
            with m.State("LEN_LO"):
                header_byte(length[:8], "LEN_HI")
            with m.State("LEN_HI"):
                header_byte(length[8:], "HEADER")

            with m.State("HEADER"):
                m.d.sync += idx.eq(0)
                with m.If((ftype != FrameType.CMD) & (ftype != FrameType.HELLO)):
                    nack_with(NackReason.BAD_FRAME)
                with m.Elif(length > P):
                    nack_with(NackReason.TOO_LONG)
                with m.Elif(length == 0):
                    m.next = "CRC"
                with m.Else():
                    m.next = "PAYLOAD"

            with m.State("PAYLOAD"):
                receiving(header_read=True)
                m.d.comb += [rx_crc.en.eq(rx_take), rx_wr.en.eq(rx_take)]
                with m.If(rx_take):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == length - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "CRC"

            with m.State("CRC"):
                receiving(header_read=True)
                with m.If(rx_take):
                    m.d.sync += [crc_rx.eq(Cat(crc_rx[8:], rx.payload)), idx.eq(idx + 1)]
                    with m.If(idx == CRC_BYTES - 1):
                        m.next = "CHECK"

            with m.State("CHECK"):
                m.d.sync += [idx.eq(0), rcount.eq(0), overflow.eq(0), cmd_sent.eq(0),
                             rsp_done.eq(0), hello.eq(0)]
                m.d.comb += [rx_rd.addr.eq(0), rx_rd.en.eq(1)]     # the command's first byte
                with m.If(crc_rx != rx_crc.value):
                    m.d.sync += crc_errors.eq(crc_errors + 1)
                    nack_with(NackReason.CRC)
                with m.Elif(ftype == FrameType.HELLO):
                    m.d.sync += [have_last.eq(0), hello.eq(1), inject.eq(Op.INFO)]
                    m.next = "HELLO_HEADER"
                with m.Elif(length == 0):
                    nack_with(NackReason.BAD_FRAME)
                with m.Elif(have_last & (seq == last_seq)):
                    m.d.sync += duplicates.eq(duplicates + 1)
                    with m.If(rsp_too_long):
                        nack_with(NackReason.RESPONSE_TOO_LONG)
                    with m.Else():
                        respond()
                with m.Else():
                    m.next = "EXEC"

            with m.State("HELLO_HEADER"):       # the report's first bytes, then INFO's packet
                m.d.comb += [rsp_wr.en.eq(1), rsp_wr.data.eq(Array(report)[rcount[:ceil_log2(len(report))]])]
                m.d.sync += rcount.eq(rcount + 1)
                with m.If(rcount == HELLO_HEADER_BYTES - 1):
                    m.next = "EXEC"

            with m.State("EXEC"):               # command out, response in, concurrently
                m.d.comb += [cmd.valid.eq(~cmd_sent),
                             cmd.payload.last.eq(hello | (idx == length - 1)),
                             rx_rd.addr.eq((idx + 1)[:aw]), rx_rd.en.eq(cmd.ready),
                             rsp.ready.eq(~rsp_done)]
                with m.If(cmd_take):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(cmd.payload.last):
                        m.d.sync += cmd_sent.eq(1)
                with m.If(rsp_take):
                    with m.If(rcount == P):
                        m.d.sync += overflow.eq(1)
                    with m.Else():
                        m.d.comb += [rsp_wr.en.eq(1), rsp_wr.data.eq(rsp.payload.data)]
                        m.d.sync += rcount.eq(rcount + 1)
                    with m.If(rsp.payload.last):
                        m.d.sync += rsp_done.eq(1)
                with m.If(cmd_sent & rsp_done):
                    m.next = "EXECUTED"

            with m.State("EXECUTED"):
                with m.If(hello & (inject == Op.INFO)):
                    m.d.sync += [inject.eq(Op.READ_COUNTERS), cmd_sent.eq(0), rsp_done.eq(0)]
                    m.next = "EXEC"
                with m.Else():
                    m.d.sync += [rsp_len.eq(rcount), rsp_too_long.eq(overflow)]
                    with m.If(~hello):
                        m.d.sync += [last_seq.eq(seq), have_last.eq(1), frames.eq(frames + 1)]
                    with m.If(overflow):
                        nack_with(NackReason.RESPONSE_TOO_LONG)
                    with m.Else():
                        respond()

            with m.State("TX_MAGIC"):
                m.d.comb += tx_crc.clear.eq(1)
                m.d.comb += [tx.valid.eq(1), tx.payload.eq(MAGIC)]
                with m.If(tx_take):
                    m.next = "TX_TYPE"
            with m.State("TX_TYPE"):
                sending(Mux(nack, FrameType.NACK, FrameType.RSP), "TX_SEQ")
            with m.State("TX_SEQ"):
                sending(seq, "TX_LEN_LO")
            with m.State("TX_LEN_LO"):
                sending(tx_len[:8], "TX_LEN_HI")
            with m.State("TX_LEN_HI"):
                sending(tx_len[8:])
                m.d.sync += idx.eq(0)
                m.d.comb += [rsp_rd.addr.eq(0), rsp_rd.en.eq(1)]   # the payload's first byte
                m.d.comb += tx_crc.en.eq(tx_take)
                with m.If(tx_take):
                    m.next = "TX_PAYLOAD"
                    with m.If(tx_len == 0):       # (a response packet has at least its status)
                        m.next = "TX_CRC"
            with m.State("TX_PAYLOAD"):
                sending(Mux(nack, reason, rsp_rd.data))
                m.d.comb += [tx_crc.en.eq(tx_take), rsp_rd.addr.eq((idx + 1)[:aw]),
                             rsp_rd.en.eq(tx.ready)]
                with m.If(tx_take):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == tx_len - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "TX_CRC"
            with m.State("TX_CRC"):
                sending(Array(tx_crc.value[8 * i:8 * i + 8] for i in range(CRC_BYTES))[idx[:2]])
                with m.If(tx_take):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == CRC_BYTES - 1):
                        m.d.sync += idx.eq(0)
                        m.next = "HUNT"

        m.d.comb += self.busy.eq(~fsm.ongoing("HUNT"))
        return m
