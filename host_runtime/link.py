"""The host side of the link: stop-and-wait with retransmission (``docs/protocol.md``).

`Link.command` sends one command packet in a `CMD` frame and returns the device's response
packet. A `NACK` for the frame, a timeout or a corrupted answer sends the same frame again
(same sequence number: the device answers a duplicate from its stored response and does not
execute it twice); answers with another sequence number are late answers to an earlier
retransmission and are dropped. Every retry is counted in `LinkStats`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from moeforge.spec.protocol import SEQ_MASK

from .errors import DeviceError, DeviceNotAnswering
from .framing import DEFAULT_MAX_PAYLOAD, FrameDecoder, FrameType, HelloReport, NackReason, encode_frame
from .transports import Transport

__all__ = ["Link", "LinkStats", "LinkError"]


class LinkError(DeviceError):
    """The device refused a frame for a reason retransmitting cannot mend."""


@dataclass
class LinkStats:
    frames: int = 0           # commands acknowledged
    retries: int = 0          # frames sent again (for any of the reasons below)
    timeouts: int = 0
    nacks: int = 0
    bad_frames: int = 0       # received frames with a bad CRC or an impossible header
    stale_frames: int = 0     # answers with an old sequence number
    bytes_sent: int = 0
    bytes_received: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class Link:
    """Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds to wait for an answer before the first retransmission; each further one waits
        twice as long, up to ``max_timeout`` (a command may add its expected run time, see
        `command`). Short first waits recover quickly from a lost byte; the backoff keeps a
        slow or loaded device from being declared dead.
    attempts : int
        Sends of one frame before `DeviceNotAnswering`.
    """

    def __init__(self, transport: Transport, *, timeout: float = 0.5, attempts: int = 20,
                 max_timeout: float = 4.0):
        self.max_timeout = max(timeout, max_timeout)
        self.transport = transport
        self.timeout = timeout
        self.attempts = attempts
        self.max_payload = DEFAULT_MAX_PAYLOAD     # until HELLO says
        self.stats = LinkStats()
        self.last_acked: int | None = None
        self._seq = 0
        self._decoder = FrameDecoder(max_payload=DEFAULT_MAX_PAYLOAD)

    def hello(self) -> HelloReport:
        """Start a session: the device forgets its last sequence number and reports itself."""
        payload = self._exchange(FrameType.HELLO, b"", extra=0.0, what="HELLO")
        report = HelloReport.parse(payload)
        self.max_payload = report.max_payload
        self._decoder.max_payload = report.max_payload
        return report

    def command(self, packet: bytes, *, extra_timeout: float = 0.0) -> bytes:
        """One command packet → its response packet. ``extra_timeout`` (seconds) is added to the
        wait for an answer: the expected run time of a long command."""
        if not packet:
            raise ValueError("empty command packet")
        if len(packet) > self.max_payload:
            raise ValueError(f"command packet of {len(packet)} bytes exceeds the device's "
                             f"maximum payload of {self.max_payload}")
        return self._exchange(FrameType.CMD, packet, extra=extra_timeout,
                              what=f"command 0x{packet[0]:02x}")

    def _exchange(self, ftype: int, payload: bytes, *, extra: float, what: str) -> bytes:
        self._seq = (self._seq + 1) & SEQ_MASK
        seq = self._seq
        frame = encode_frame(ftype, seq, payload)
        for attempt in range(self.attempts):
            if attempt:
                self.stats.retries += 1
            self.transport.write(frame)
            self.stats.bytes_sent += len(frame)
            wait = min(self.timeout * 2 ** attempt, self.max_timeout)
            answer = self._await(seq, wait + extra)
            if answer is None:
                continue
            self.stats.frames += 1
            self.last_acked = seq
            return answer
        raise DeviceNotAnswering(self.transport.name, self.attempts, self.last_acked, what)

    def _await(self, seq: int, timeout: float) -> bytes | None:
        """The payload of the RSP to ``seq``; None when the frame must be sent again."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:               # a partial frame now is the wreck of a lost one
                self.stats.timeouts += 1
                self._decoder.reset()
                return None
            data = self.transport.read(left)
            if not data:
                continue
            self.stats.bytes_received += len(data)
            bad = self._decoder.bad_frames
            frames = self._decoder.feed(data)
            self.stats.bad_frames += self._decoder.bad_frames - bad
            for f in frames:
                if f.seq != seq:
                    self.stats.stale_frames += 1
                elif f.type == FrameType.RSP:
                    self._decoder.reset()
                    return f.payload
                elif f.type == FrameType.NACK:
                    self.stats.nacks += 1
                    reason = f.payload[0] if f.payload else 0
                    if reason == NackReason.RESPONSE_TOO_LONG:
                        raise LinkError(f"{self.transport.name}: "
                                        f"{NackReason.NAMES[reason]} (max {self.max_payload})")
                    self._decoder.reset()
                    return None
