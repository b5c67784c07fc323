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
