"""Frames of the host link (see ``docs/protocol.md``): encoding, and a decoder that resyncs.

A frame is ``A5 | type | seq | len u16 | payload | crc32 u32`` with the CRC (``zlib.crc32``) over
type, seq, length and payload; its layout, the frame types, NACK reasons and the HELLO report
are `moeforge.spec.protocol`'s (re-exported here). `FrameDecoder` takes bytes as they arrive, in
any pieces, and yields every frame whose CRC checks; garbage, truncated and corrupted frames are
skipped by hunting for the next magic byte, so a lossy stream costs frames, never a wrong one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from moeforge.spec.protocol import (CRC_BYTES, CRC_FORMAT, DEFAULT_MAX_PAYLOAD, FRAME_HEADER_BYTES,
                                    FRAME_HEADER_FORMAT, LINK_VERSION, MAGIC, MAX_LENGTH_FIELD,
                                    SEQ_MASK, FrameType, HelloReport, NackReason)

__all__ = ["MAGIC", "FrameType", "NackReason", "Frame", "encode_frame", "FrameDecoder",
           "HelloReport", "LINK_VERSION", "DEFAULT_MAX_PAYLOAD"]


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


def encode_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame of `payload` (the sequence number taken modulo 256)."""
    header = struct.pack(FRAME_HEADER_FORMAT, MAGIC, ftype, seq & SEQ_MASK, len(payload))
    body = header[1:] + bytes(payload)
    return header[:1] + body + struct.pack(CRC_FORMAT, zlib.crc32(body))


class FrameDecoder:
    """Bytes in, checked frames out. ``max_payload`` bounds the length field: a header claiming
    more is garbage, not a reason to wait for that many bytes."""

    def __init__(self, max_payload: int = MAX_LENGTH_FIELD):
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
            if len(self._buf) < FRAME_HEADER_BYTES:
                return frames
            _, ftype, seq, n = struct.unpack_from(FRAME_HEADER_FORMAT, self._buf, 0)
            if ftype not in FrameType.KNOWN or n > self.max_payload:
                self.bad_frames += 1
                del self._buf[:1]
                continue
            end = FRAME_HEADER_BYTES + n + CRC_BYTES
            if len(self._buf) < end:
                return frames
            (crc,) = struct.unpack_from(CRC_FORMAT, self._buf, FRAME_HEADER_BYTES + n)
            if zlib.crc32(self._buf[1:FRAME_HEADER_BYTES + n]) != crc:
                self.bad_frames += 1
                del self._buf[:1]
                continue
            frames.append(Frame(ftype, seq, bytes(self._buf[FRAME_HEADER_BYTES:FRAME_HEADER_BYTES + n])))
            del self._buf[:end]

    def reset(self) -> None:
        self._buf.clear()
