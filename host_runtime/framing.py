"""Frames of the host link (see ``docs/protocol.md``): encoding, and a decoder that resyncs.

A frame is ``A5 | type | seq | len u16 | payload | crc32 u32`` with the CRC (``zlib.crc32``) over
type, seq, length and payload. `FrameDecoder` takes bytes as they arrive, in any pieces, and
yields every frame whose CRC checks; garbage, truncated and corrupted frames are skipped by
hunting for the next magic byte, so a lossy stream costs frames, never a wrong one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = ["MAGIC", "FrameType", "NackReason", "Frame", "encode_frame", "FrameDecoder",
           "HelloReport", "LINK_VERSION", "DEFAULT_MAX_PAYLOAD", "HEADER_BYTES", "CRC_BYTES"]

MAGIC = 0xA5
LINK_VERSION = 1
DEFAULT_MAX_PAYLOAD = 1024
HEADER_BYTES = 5
CRC_BYTES = 4
LINK_COUNTERS = ("frames", "crc_errors", "duplicates", "rx_timeouts")


class FrameType:
    CMD = 0x01
    HELLO = 0x02
    RSP = 0x11
    NACK = 0x12

    KNOWN = (CMD, HELLO, RSP, NACK)


class NackReason:
    CRC = 1
    TOO_LONG = 2
    TIMEOUT = 3
    BAD_FRAME = 4
    RESPONSE_TOO_LONG = 5

    NAMES = {1: "CRC mismatch", 2: "payload above the device's maximum",
             3: "frame stopped arriving", 4: "unknown frame type or empty command",
             5: "response longer than the device's maximum payload"}


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


def encode_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    body = struct.pack("<BBH", ftype, seq & 0xFF, len(payload)) + bytes(payload)
    return bytes([MAGIC]) + body + struct.pack("<I", zlib.crc32(body))


class FrameDecoder:
    """Bytes in, checked frames out. ``max_payload`` bounds the length field: a header claiming
    more is garbage, not a reason to wait for that many bytes."""

    def __init__(self, max_payload: int = 65535):
        self.max_payload = max_payload
        self._buf = bytearray()
        self.bad_frames = 0          # CRC mismatches and impossible headers seen

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                self._buf.clear()
                return frames
            del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return frames
            ftype, seq, n = struct.unpack_from("<BBH", self._buf, 1)
            if ftype not in FrameType.KNOWN or n > self.max_payload:
                self.bad_frames += 1
                del self._buf[:1]
                continue
            end = HEADER_BYTES + n + CRC_BYTES
            if len(self._buf) < end:
                return frames
            (crc,) = struct.unpack_from("<I", self._buf, HEADER_BYTES + n)
            if zlib.crc32(self._buf[1:HEADER_BYTES + n]) != crc:
                self.bad_frames += 1
                del self._buf[:1]
                continue
            frames.append(Frame(ftype, seq, bytes(self._buf[HEADER_BYTES:HEADER_BYTES + n])))
            del self._buf[:end]

    def reset(self) -> None:
        self._buf.clear()


@dataclass(frozen=True)
class HelloReport:
    """What the device says of itself at the start of a session."""

    link_version: int
    max_payload: int
    link_counters: dict
    accel_version: int
    config_hash: bytes
    last_error: int
    loaded_flags: int
    counters: dict

    SIZE = 1 + 2 + 16 + 12 + 49

    @classmethod
    def parse(cls, payload: bytes) -> "HelloReport":
        from moeforge.rtl.commands import COUNTERS
        if len(payload) != cls.SIZE:
            raise ValueError(f"HELLO report of {len(payload)} bytes, expected {cls.SIZE}")
        version, max_payload = struct.unpack_from("<BH", payload, 0)
        link = dict(zip(LINK_COUNTERS, struct.unpack_from("<4I", payload, 3)))
        info = payload[19:31]
        if info[0] != 0:
            raise ValueError(f"HELLO report: INFO answered status {info[0]}")
        ctr = payload[31:]
        if ctr[0] != 0:
            raise ValueError(f"HELLO report: READ_COUNTERS answered status {ctr[0]}")
        counters = dict(zip(COUNTERS, struct.unpack_from(f"<{len(COUNTERS)}I", ctr, 1)))
        return cls(link_version=version, max_payload=max_payload, link_counters=link,
                   accel_version=info[1], config_hash=bytes(info[2:10]), last_error=info[10],
                   loaded_flags=info[11], counters=counters)
