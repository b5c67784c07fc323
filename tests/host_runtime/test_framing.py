"""Host-side frames: encoding matches the spec byte for byte; the decoder finds every intact
frame in a stream cut anywhere, and never returns a corrupted one."""

import random
import struct
import zlib

import pytest

from moeforge.host_runtime.framing import (MAGIC, FrameDecoder, FrameType, HelloReport,
                                           encode_frame)
from moeforge.host_runtime.transports import FaultyTransport, Transport


def test_frame_bytes_follow_the_spec():
    f = encode_frame(FrameType.CMD, 7, b"\x06\x20\x00")
    assert f[0] == MAGIC and f[1] == FrameType.CMD and f[2] == 7
    assert struct.unpack_from("<H", f, 3)[0] == 3 and f[5:8] == b"\x06\x20\x00"
    assert struct.unpack_from("<I", f, 8)[0] == zlib.crc32(f[1:8])
    assert len(f) == 12


def test_decoder_takes_any_cut_and_skips_garbage():
    rng = random.Random(3)
    sent = [(FrameType.RSP, i & 0xFF, rng.randbytes(rng.randrange(0, 300))) for i in range(200)]
    stream = b"".join(rng.randbytes(rng.randrange(0, 5)).replace(b"\xa5", b"\x00")
                      + encode_frame(*s) for s in sent)
    dec, got, i = FrameDecoder(max_payload=1024), [], 0
    while i < len(stream):
        n = rng.randrange(1, 64)
        got += dec.feed(stream[i:i + n])
        i += n
    assert [(f.type, f.seq, f.payload) for f in got] == sent


def test_decoder_never_returns_a_corrupted_frame():
    rng = random.Random(5)
    sent = {(i & 0xFF, rng.randbytes(rng.randrange(1, 200))) for i in range(2000)}
    stream = bytearray(b"".join(encode_frame(FrameType.RSP, s, p) for s, p in sorted(sent)))
    for _ in range(300):                    # flip random bits
        stream[rng.randrange(len(stream))] ^= 1 << rng.randrange(8)
    got = FrameDecoder(max_payload=1024).feed(bytes(stream))
    assert got, "some frames must survive"
    assert all((f.seq, f.payload) in sent for f in got)
    assert len(got) < len(sent)


class _Pipe(Transport):
    def __init__(self):
        self.out = bytearray()

    def write(self, data):
        self.out += data

    def read(self, timeout):
        data, self.out = bytes(self.out), bytearray()
        return data


def test_fault_injector_rates_and_replay():
    def run(seed):
        t = FaultyTransport(_Pipe(), flip=0.01, drop=0.01, dup=0.01, seed=seed)
        t.write(bytes(range(256)) * 400)
        return t.read(0), dict(t.injected)
    a, b = run(1), run(1)
    assert a == b                                   # the same seed replays the same faults
    n = 256 * 400
    for what in ("flip", "drop", "dup"):           # each byte crosses the injector twice here
        assert 0.8 * n * 0.02 < a[1][what] < 1.2 * n * 0.02, a[1]
    assert len(a[0]) == n - a[1]["drop"] + a[1]["dup"]
    with pytest.raises(ValueError, match="drop rate"):
        FaultyTransport(_Pipe(), drop=1.5)


def test_hello_report_parses_and_rejects_a_wrong_size():
    payload = (struct.pack("<BH4I", 1, 1024, 5, 1, 2, 0) + bytes([0, 1]) + bytes(range(8))
               + bytes([0, 0b111]) + bytes([0]) + struct.pack("<12I", *range(12)))
    r = HelloReport.parse(payload)
    assert r.max_payload == 1024 and r.config_hash == bytes(range(8))
    assert r.link_counters["crc_errors"] == 1 and r.counters["stall_cycles"] == 11
    with pytest.raises(ValueError, match="80"):
        HelloReport.parse(payload[:-1])


def test_the_specified_layouts_are_the_documented_ones():
    """The numbers of docs/protocol.md, as the one specification declares them."""
    from moeforge.spec import protocol as p
    assert (p.MAGIC, p.FRAME_HEADER_BYTES, p.CRC_BYTES, p.MAX_LENGTH_FIELD) == (0xA5, 5, 4, 65535)
    assert (p.LINK_VERSION, p.DEFAULT_MAX_PAYLOAD, p.PROTOCOL_VERSION) == (1, 1024, 3)
    assert (p.HELLO_HEADER_BYTES, p.HELLO_INFO_OFFSET, p.HELLO_COUNTERS_OFFSET, p.HELLO_BYTES) == \
        (19, 19, 31, 80)
    Op = p.Op
    assert p.HEADER_BYTES == {Op.WRITE_ROUTER: 8, Op.WRITE_MEMORY: 8, Op.WRITE_SHARED: 8,
                              Op.SET_SCALE: 4, Op.WRITE_TOKENS: 4, Op.RUN: 2, Op.READ_OUTPUT: 4,
                              Op.READ_PARTIAL: 4, Op.INFO: 0, Op.READ_COUNTERS: 0,
                              Op.INVALIDATE: 0, Op.READ_IMAGE_CRC: 0}
    assert p.WRITE_HEADER_BYTES == 9
    assert p.RESPONSE_BYTES == {Op.INFO: 11, Op.RUN: 4, Op.READ_COUNTERS: 48, Op.READ_IMAGE_CRC: 4}
    assert p.encode(Op.WRITE_MEMORY, 0x01020304, [0xAABB, 0xCCDD], 2) == \
        bytes([2, 4, 3, 2, 1, 2, 0, 0, 0, 0xBB, 0xAA, 0xDD, 0xCC])
    assert p.encode(Op.SET_SCALE, 0x8001, 17, 5) == bytes([4, 0x01, 0x80, 17, 5])
    assert p.encode(Op.WRITE_TOKENS, 2, [[1, -2]], 2) == bytes([5, 2, 0, 1, 0, 1, 0, 0xFE, 0xFF])
    assert p.encode(Op.WRITE_TOKENS, 2, [[1, -2]], 1) == bytes([5, 2, 0, 1, 0, 1, 0xFE])
    assert p.encode(Op.READ_PARTIAL, 3, 258) == bytes([0x0B, 3, 0, 2, 1])
    with pytest.raises(ValueError, match="48"):
        p.parse_counters(bytes(47))


class _FakeDevice(Transport):
    """A device in Python for the tiny config: HELLO, and each command answered from `answers`
    (opcode → response packet), enough for one batch."""

    name = "fake"

    def __init__(self, cfg, answers):
        from moeforge.spec.protocol import PROTOCOL_VERSION, config_hash
        self.answers, self.dec, self.out = answers, FrameDecoder(), bytearray()
        counters = bytes([0]) + bytes(48)
        self.hello = (struct.pack("<BH4I", 1, 1024, 0, 0, 0, 0) + bytes([0, PROTOCOL_VERSION])
                      + config_hash(cfg)
                      + bytes([0, 0b111]) + counters)

    def write(self, data):
        for f in self.dec.feed(data):
            rsp = self.hello if f.type == FrameType.HELLO else self.answers[f.payload[0]]
            self.out += encode_frame(FrameType.RSP, f.seq, rsp)

    def read(self, timeout):
        data, self.out = bytes(self.out), bytearray()
        return data

    def close(self):
        pass


def test_a_short_counters_answer_is_a_device_error_not_a_crash():
    """READ_COUNTERS answered with one byte too few: the host says so in one line
    (DeviceCommandError), instead of failing inside struct."""
    import torch

    from moeforge import AccelConfig
    from moeforge.host_runtime import Device, DeviceCommandError
    from moeforge.spec.protocol import Op
    cfg = AccelConfig.from_toml("configs/tiny.toml")
    n = 3
    answers = {Op.WRITE_TOKENS: b"\x00", Op.RUN: b"\x00" + bytes(4),
               Op.READ_OUTPUT: b"\x00" + bytes(n * cfg.d_model), Op.READ_COUNTERS: b"\x00" + bytes(47)}
    dev = Device(_FakeDevice(cfg, answers), cfg)
    with pytest.raises(DeviceCommandError, match=r"^fake: READ_COUNTERS data of 47 bytes, expected 48$"):
        dev.run(torch.zeros(n, cfg.d_model, dtype=dev.input_dtype))
    answers[Op.READ_COUNTERS] = b"\x00" + struct.pack("<12I", *range(12))
    assert torch.equal(dev.run(torch.zeros(n, cfg.d_model, dtype=dev.input_dtype)),
                       torch.zeros(n, cfg.d_model, dtype=torch.int8))
    assert dev.stats()["last_batch"]["stall_cycles"] == 11
