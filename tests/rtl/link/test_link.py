# amaranth: UnusedElaboratable=no
# (test_parameters_are_checked builds links whose constructor raises; they are never elaborated)

"""`HostLink` in Amaranth's simulator against the host's own framing (`host_runtime.framing`).

A Python stub stands in for the accelerator: it answers each command packet with status 0, the
number of packets it has executed and the packet itself; INFO and READ_COUNTERS with packets of
the real lengths (12 and 49 bytes); opcode 0x7F with a response of the length its u16 asks for.
Every test drives the rx stream, the tx stream's ready and both accelerator streams with random
stalls, and compares the link's frames byte for byte with `encode_frame`.
"""

import random
import struct

import pytest
from amaranth.sim import Simulator

from moeforge.host_runtime.framing import (FrameDecoder, FrameType, HelloReport, NackReason,
                                           encode_frame)
from moeforge.rtl.link.link import HostLink
from moeforge.spec.protocol import COUNTERS

CMD, HELLO, RSP, NACK = FrameType.CMD, FrameType.HELLO, FrameType.RSP, FrameType.NACK
STUB_HASH = bytes(range(0xC0, 0xC8))
STUB_COUNTERS = tuple(1000 + 7 * i for i in range(len(COUNTERS)))
LONG_OP = 0x7F


def stub_response(packet: bytes, executed: int) -> bytes:
    if packet == b"\x00":
        return bytes([0, 1]) + STUB_HASH + bytes([0, 0x0F])
    if packet == b"\x08":
        return bytes([0]) + struct.pack(f"<{len(COUNTERS)}I", *STUB_COUNTERS)
    if packet[0] == LONG_OP:
        (n,) = struct.unpack_from("<H", packet, 1)
        return bytes([0]) + bytes((3 * i) & 0xFF for i in range(n - 1))
    return bytes([0, executed & 0xFF]) + packet


def nack(seq: int, reason: int) -> bytes:
    return encode_frame(NACK, seq, bytes([reason]))


class Bench:
    """A `HostLink`, the stub accelerator and the host's end of the byte stream."""

    def __init__(self, *, max_payload=128, rx_timeout=64, stall=0.3, seed=1):
        self.dut = HostLink(max_payload=max_payload, rx_timeout=rx_timeout)
        self.stall, self.rng = stall, random.Random(seed)
        self.tx = bytearray()           # every byte the link sent
        self.packets = []               # every command packet the stub executed
        self.rx_ready_during_exec = False
        self.cycle = 0

    def _stalled(self):
        return self.rng.random() < self.stall

    async def _tx_monitor(self, ctx):
        tx = self.dut.o_tx
        while True:
            ready = not self._stalled()
            ctx.set(tx.ready, ready)
            _, _, valid, byte = await ctx.tick().sample(tx.valid, tx.payload)
            self.cycle += 1
            if ready and valid:
                self.tx.append(byte)

    async def _accelerator(self, ctx):
        cmd, rsp, rx = self.dut.o_cmd, self.dut.i_rsp, self.dut.i_rx
        packet = bytearray()
        while True:
            ready = not self._stalled()
            ctx.set(cmd.ready, ready)
            _, _, valid, byte, last, rx_ready = await ctx.tick().sample(
                cmd.valid, cmd.payload.data, cmd.payload.last, rx.ready)
            self.rx_ready_during_exec |= bool(valid and rx_ready)
            if not (ready and valid):
                continue
            packet.append(byte)
            if not last:
                continue
            ctx.set(cmd.ready, 0)
            self.packets.append(bytes(packet))
            answer = stub_response(bytes(packet), len(self.packets))
            packet.clear()
            for i, b in enumerate(answer):
                while self._stalled():
                    ctx.set(rsp.valid, 0)
                    await ctx.tick()
                ctx.set(rsp.valid, 1)
                ctx.set(rsp.payload, {"data": b, "last": i == len(answer) - 1})
                (rx_ready,) = await ctx.tick().sample(rx.ready).until(rsp.ready)
                self.rx_ready_during_exec |= bool(rx_ready)
            ctx.set(rsp.valid, 0)

    async def send(self, ctx, data: bytes, *, settle=True, max_cycles=20000):
        """Bytes to the link with random gaps; then (`settle`) wait until it is idle again."""
        rx = self.dut.i_rx
        for b in data:
            while self._stalled():
                ctx.set(rx.valid, 0)
                await ctx.tick()
            ctx.set(rx.valid, 1)
            ctx.set(rx.payload, b)
            for _ in range(max_cycles):
                _, _, taken = await ctx.tick().sample(rx.ready)
                if taken:
                    break
            else:
                raise AssertionError(f"rx not ready for {max_cycles} cycles")
        ctx.set(rx.valid, 0)
        if settle:
            await self.settle(ctx, max_cycles)

    async def settle(self, ctx, max_cycles=20000):
        for _ in range(max_cycles):
            if not ctx.get(self.dut.busy):
                return
            await ctx.tick()
        raise AssertionError(f"the link is still busy after {max_cycles} cycles")

    async def exchange(self, ctx, data: bytes) -> bytes:
        """Send `data`, wait for idle, return what the link sent meanwhile."""
        start = len(self.tx)
        await self.send(ctx, data)
        return bytes(self.tx[start:])

    def run(self, script):
        sim = Simulator(self.dut)
        sim.add_clock(1e-6)
        sim.add_testbench(self._tx_monitor, background=True)
        sim.add_testbench(self._accelerator, background=True)
        async def main(ctx):
            await script(self, ctx)
        sim.add_testbench(main)
        sim.run()
        assert not self.rx_ready_during_exec, "rx was ready while a command executed"


def test_command_is_answered_with_its_response():
    packets = [bytes([0x05, 1, 2, 3]), bytes(range(40)), bytes([0x09]), bytes([0xA5] * 7)]

    async def script(b, ctx):
        for i, p in enumerate(packets):
            got = await b.exchange(ctx, encode_frame(CMD, 10 + i, p))
            assert got == encode_frame(RSP, 10 + i, stub_response(p, i + 1))
    b = Bench()
    b.run(script)
    assert b.packets == packets


def test_default_parameters_carry_long_packets():
    """max_payload 1024: a command of 1000 bytes, a response of exactly 1024."""
    long_cmd = bytes((7 * i + 1) & 0xFF for i in range(1000))
    exact = bytes([LONG_OP]) + struct.pack("<H", 1024)

    async def script(b, ctx):
        assert await b.exchange(ctx, encode_frame(CMD, 1, long_cmd)) == \
            encode_frame(RSP, 1, stub_response(long_cmd, 1))
        assert await b.exchange(ctx, encode_frame(CMD, 2, exact)) == \
            encode_frame(RSP, 2, stub_response(exact, 2))
    b = Bench(max_payload=1024, rx_timeout=4096, stall=0.1)
    b.run(script)
    assert len(b.packets) == 2


def test_crc_error_is_nacked_and_not_executed():
    good = encode_frame(CMD, 3, b"\x05\x10\x20")
    bad = bytearray(good)
    bad[6] ^= 0x04

    async def script(b, ctx):
        assert await b.exchange(ctx, bytes(bad)) == nack(3, NackReason.CRC)
        assert b.packets == []
        bad_crc = good[:-1] + bytes([good[-1] ^ 0x80])
        assert await b.exchange(ctx, bad_crc) == nack(3, NackReason.CRC)
        assert await b.exchange(ctx, good) == \
            encode_frame(RSP, 3, stub_response(b"\x05\x10\x20", 1))
    Bench().run(script)


def test_duplicate_is_answered_from_the_stored_response():
    p, q = b"\x07\x01\x00\x02\x00", b"\x07\x03\x00\x01\x00"

    async def script(b, ctx):
        first = await b.exchange(ctx, encode_frame(CMD, 200, p))
        assert first == encode_frame(RSP, 200, stub_response(p, 1))
        assert await b.exchange(ctx, encode_frame(CMD, 200, p)) == first
        assert await b.exchange(ctx, encode_frame(CMD, 200, p)) == first
        assert b.packets == [p]
        # the next sequence number executes, the one before it is no longer the last
        assert await b.exchange(ctx, encode_frame(CMD, 201, q)) == \
            encode_frame(RSP, 201, stub_response(q, 2))
        assert await b.exchange(ctx, encode_frame(CMD, 200, p)) == \
            encode_frame(RSP, 200, stub_response(p, 3))
        # HELLO forgets the last sequence number: the same number executes again
        await b.exchange(ctx, encode_frame(HELLO, 9))
        assert await b.exchange(ctx, encode_frame(CMD, 200, p)) == \
            encode_frame(RSP, 200, stub_response(p, 6))
    b = Bench()
    b.run(script)
    assert b.packets == [p, q, p, b"\x00", b"\x08", p]


def test_hello_reports_link_counters_and_the_accelerator():
    p = b"\x05\x00\x00\x01\x00" + bytes(4)

    async def script(b, ctx):
        report = await b.exchange(ctx, encode_frame(HELLO, 0))
        frame, = FrameDecoder().feed(report)
        assert (frame.type, frame.seq) == (RSP, 0)
        h = HelloReport.parse(frame.payload)
        assert (h.link_version, h.max_payload) == (1, 128)
        assert h.link_counters == dict(frames=0, crc_errors=0, duplicates=0, rx_timeouts=0)
        assert h.config_hash == STUB_HASH and h.accel_version == 1 and h.loaded_flags == 0x0F
        assert tuple(h.counters.values()) == STUB_COUNTERS
        assert frame.payload[19:] == stub_response(b"\x00", 0) + stub_response(b"\x08", 0)

        await b.exchange(ctx, encode_frame(CMD, 1, p))                  # executed
        await b.exchange(ctx, encode_frame(CMD, 1, p))                  # duplicate
        await b.exchange(ctx, encode_frame(CMD, 2, p)[:-1] + b"\x00")   # CRC error
        await b.exchange(ctx, encode_frame(CMD, 2, p)[:8])              # timeout
        await b.exchange(ctx, b"\xa5\x01")                              # timeout in the header
        await b.exchange(ctx, encode_frame(CMD, 2, p))                  # executed
        frame, = FrameDecoder().feed(await b.exchange(ctx, encode_frame(HELLO, 77)))
        assert frame.seq == 77
        h = HelloReport.parse(frame.payload)
        assert h.link_counters == dict(frames=2, crc_errors=1, duplicates=1, rx_timeouts=2)
    b = Bench()
    b.run(script)
    assert b.packets == [b"\x00", b"\x08", p, p, b"\x00", b"\x08"]


def test_length_above_max_payload_is_nacked_at_the_header():
    async def script(b, ctx):
        header = bytes([0xA5, CMD, 4]) + struct.pack("<H", 129)
        # the link answers at the header and hunts through the rest (no magic byte in it)
        assert await b.exchange(ctx, header + bytes(range(20))) == nack(4, NackReason.TOO_LONG)
        header = bytes([0xA5, HELLO, 5]) + struct.pack("<H", 0xFFFF)
        assert await b.exchange(ctx, header) == nack(5, NackReason.TOO_LONG)
        fits = bytes([0x05] * 126)                  # its response is exactly max_payload
        assert await b.exchange(ctx, encode_frame(CMD, 6, fits)) == \
            encode_frame(RSP, 6, stub_response(fits, 1))
    b = Bench()
    b.run(script)
    assert len(b.packets) == 1


def test_truncated_frame_times_out():
    timeout = 64
    frame = encode_frame(CMD, 8, b"\x05\x01\x02\x03")

    async def script(b, ctx):
        for cut in (5, 7, len(frame) - 1):          # payload missing, part of it, the CRC's end
            start = len(b.tx)
            await b.send(ctx, frame[:cut], settle=False)
            sent_at = b.cycle
            await b.settle(ctx)
            assert bytes(b.tx[start:]) == nack(8, NackReason.TIMEOUT)
            assert b.cycle - sent_at >= timeout
        # a header cut short is abandoned silently
        assert await b.exchange(ctx, frame[:3]) == b""
        assert await b.exchange(ctx, frame) == encode_frame(RSP, 8, stub_response(frame[5:-4], 1))
    b = Bench(rx_timeout=timeout)
    b.run(script)
    assert len(b.packets) == 1


def test_empty_command_and_unknown_type_are_nacked():
    async def script(b, ctx):
        assert await b.exchange(ctx, encode_frame(CMD, 11)) == nack(11, NackReason.BAD_FRAME)
        for ftype in (0x00, 0x03, RSP, NACK, 0xFF):
            assert await b.exchange(ctx, encode_frame(ftype, 12, b"\x01")[:5]) == \
                nack(12, NackReason.BAD_FRAME)
        assert await b.exchange(ctx, encode_frame(CMD, 13, b"\x09")) == \
            encode_frame(RSP, 13, stub_response(b"\x09", 1))
    b = Bench()
    b.run(script)
    assert b.packets == [b"\x09"]


def test_response_above_max_payload_is_nacked_and_not_rerun():
    too_long = bytes([LONG_OP]) + struct.pack("<H", 129)
    exact = bytes([LONG_OP]) + struct.pack("<H", 128)

    async def script(b, ctx):
        assert await b.exchange(ctx, encode_frame(CMD, 20, too_long)) == \
            nack(20, NackReason.RESPONSE_TOO_LONG)
        assert await b.exchange(ctx, encode_frame(CMD, 20, too_long)) == \
            nack(20, NackReason.RESPONSE_TOO_LONG)
        assert len(b.packets) == 1
        assert await b.exchange(ctx, encode_frame(CMD, 21, exact)) == \
            encode_frame(RSP, 21, stub_response(exact, 2))
        assert await b.exchange(ctx, encode_frame(CMD, 21, exact)) == \
            encode_frame(RSP, 21, stub_response(exact, 2))
    b = Bench()
    b.run(script)
    assert b.packets == [too_long, exact]


def test_garbage_between_frames_is_skipped():
    p = b"\x05\x01\x00\x01\x00"
    rng = random.Random(4)
    garbage = bytes(rng.choice([0x00, 0x11, 0xFF, 0x5A, 0x01]) for _ in range(30))

    async def script(b, ctx):
        stream = garbage + encode_frame(CMD, 30, p) + garbage[:7] + encode_frame(CMD, 31, p)
        got = await b.exchange(ctx, stream)
        assert got == encode_frame(RSP, 30, stub_response(p, 1)) + \
            encode_frame(RSP, 31, stub_response(p, 2))
    Bench().run(script)


def test_heavy_stalls_everywhere():
    rng = random.Random(9)
    packets = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 60))) for _ in range(6)]
    packets = [p for p in packets if p[0] not in (0x00, 0x08, LONG_OP)]

    async def script(b, ctx):
        for i, p in enumerate(packets):
            assert await b.exchange(ctx, encode_frame(CMD, i, p)) == \
                encode_frame(RSP, i, stub_response(p, i + 1))
    b = Bench(stall=0.7, seed=3)
    b.run(script)
    assert b.packets == packets


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="max_payload"):
        HostLink(max_payload=79)
    with pytest.raises(ValueError, match="max_payload"):
        HostLink(max_payload=65536)
    with pytest.raises(ValueError, match="rx_timeout"):
        HostLink(rx_timeout=0)
    with pytest.raises(TypeError, match="max_payload"):
        HostLink(max_payload=100.0)


def test_crc32_unit_matches_zlib():
    import zlib
    from moeforge.rtl.link.crc32 import CRC32
    dut = CRC32()
    rng = random.Random(2)
    runs = [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 5, 64)]

    async def bench(ctx):
        for data in runs:
            for i, b in enumerate(data):
                ctx.set(dut.clear, i == 0)              # the first byte restarts the CRC
                ctx.set(dut.en, 1)
                ctx.set(dut.data, b)
                await ctx.tick()
                ctx.set(dut.en, 0)
                ctx.set(dut.clear, 0)
                if rng.random() < 0.3:
                    await ctx.tick()                    # idle cycles change nothing
            assert ctx.get(dut.value) == zlib.crc32(data)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert ctx.get(dut.value) == 0                  # the CRC of no bytes

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_soc_stream_phy_on_the_real_accelerator():
    """`MoESoC` (phy="stream", tiny config): HELLO carries the accelerator's INFO, a command
    runs once however often it is retransmitted, and the SoC goes idle after each frame."""
    from moeforge import AccelConfig
    from moeforge.spec.protocol import Op, Status
    from moeforge.rtl.top.soc import MoESoC
    cfg = AccelConfig.from_toml("configs/tiny.toml")
    soc = MoESoC(cfg, max_payload=128)
    rng = random.Random(6)
    out = bytearray()

    async def monitor(ctx):
        while True:
            ready = rng.random() < 0.7
            ctx.set(soc.tx.ready, ready)
            _, _, valid, byte = await ctx.tick().sample(soc.tx.valid, soc.tx.payload)
            if ready and valid:
                out.append(byte)

    async def exchange(ctx, data):
        start = len(out)
        for b in data:
            ctx.set(soc.rx.valid, 1)
            ctx.set(soc.rx.payload, b)
            await ctx.tick().until(soc.rx.ready)
        ctx.set(soc.rx.valid, 0)
        for _ in range(5000):
            if not ctx.get(soc.busy):
                break
            await ctx.tick()
        else:
            raise AssertionError("the SoC stays busy")
        return bytes(out[start:])

    async def bench(ctx):
        frame, = FrameDecoder().feed(await exchange(ctx, encode_frame(HELLO, 1)))
        report = HelloReport.parse(frame.payload)
        assert report.config_hash == bytes.fromhex(cfg.content_hash()[:16])
        assert (report.max_payload, report.link_version) == (128, 1)
        # a RUN before anything is loaded fails and sets the last error; INFO reports and
        # clears it, so a re-executed INFO would report 0: its duplicate must not run again
        run = encode_frame(CMD, 2, bytes([Op.RUN, 1, 0]))
        assert await exchange(ctx, run) == encode_frame(RSP, 2, bytes([Status.NOT_LOADED]))
        info = encode_frame(CMD, 3, bytes([Op.INFO]))
        answer = await exchange(ctx, info)
        frame, = FrameDecoder().feed(answer)
        assert frame.payload[0] == Status.OK and frame.payload[10] == Status.NOT_LOADED
        assert await exchange(ctx, info) == answer
        frame, = FrameDecoder().feed(await exchange(ctx, encode_frame(CMD, 4, bytes([Op.INFO]))))
        assert frame.payload[10] == Status.OK
        frame, = FrameDecoder().feed(await exchange(ctx, encode_frame(HELLO, 5)))
        assert HelloReport.parse(frame.payload).link_counters == dict(
            frames=3, crc_errors=0, duplicates=1, rx_timeouts=0)

    sim = Simulator(soc)
    sim.add_clock(1e-6)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(bench)
    sim.run()
