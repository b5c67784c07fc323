"""Byte pipes to a device: a TCP socket (the simulated device, here or served elsewhere at
``socket://host:port``), a pyserial port (a board), and a fault injector around either. The
link (`host_runtime.link`) sees only `Transport`: ``write(bytes)``, ``read(timeout)``.
"""

from __future__ import annotations

import random
import socket
from urllib.parse import urlsplit

from moeforge.spec.protocol import BUSY_LINE

from .errors import DeviceBusy, DeviceCrashed, NoSuchDevice

__all__ = ["Transport", "SocketTransport", "SerialTransport", "FaultyTransport", "socket_address"]

def socket_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``socket://host:port`` URL, each part checked and named when wrong.

    Raises
    ------
    NoSuchDevice
        The URL has no host, no port, a port that is not an integer in [1, 65535], or
        anything beyond ``host:port``.
    """
    form = "socket://host:port"
    try:
        parts = urlsplit(url)
    except ValueError as e:                          # an unclosed [IPv6 address
        raise NoSuchDevice(f"{url}: {e} ({form})") from None
    if parts.scheme != "socket":
        raise NoSuchDevice(f"{url}: not a {form} URL")
    if parts.path not in ("", "/") or parts.fragment:
        raise NoSuchDevice(f"{url}: unexpected {parts.path or '#' + parts.fragment!r} after host:port ({form})")
    netloc = parts.netloc
    if "@" in netloc:
        raise NoSuchDevice(f"{url}: a user name has no meaning here ({form})")
    if netloc.startswith("["):                       # [IPv6 address]:port
        host, close, rest = netloc[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise NoSuchDevice(f"{url}: malformed [IPv6 address] ({form})")
        port = rest[1:]
    else:
        host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if not host:
        raise NoSuchDevice(f"{url}: no host ({form})")
    if not port:
        raise NoSuchDevice(f"{url}: no port ({form})")
    if not (port.isascii() and port.isdigit()):
        raise NoSuchDevice(f"{url}: port {port!r} is not a port number ({form})")
    if not 1 <= int(port) <= 65535:
        raise NoSuchDevice(f"{url}: port {int(port)} is not in [1, 65535]")
    if parts.query:
        raise NoSuchDevice(f"{url}: bad option {parts.query!r} ({form} takes none)")
    return host, int(port)


class Transport:
    """A byte stream to one device. ``read`` returns what has arrived within ``timeout``
    seconds (``b""`` if nothing); a stream that has ended raises `DeviceCrashed`, or
    `DeviceBusy` when the last thing the device said was that it serves another client."""

    name = "device"
    cycles_per_second: float | None = None   # the device's clock, for the link's timeouts
    _tail = b""                              # the last bytes read, to explain a closed stream

    def _seen(self, data: bytes) -> bytes:
        self._tail = (self._tail + data)[-len(BUSY_LINE):]
        return data

    def _ended(self, how: str) -> DeviceCrashed:
        """The error for a stream that ended: busy if the device said so just before."""
        if self._tail.endswith(BUSY_LINE):
            return DeviceBusy(f"{self.name}: {BUSY_LINE.decode().strip()}")
        return DeviceCrashed(f"{self.name}: {how}")

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, timeout: float) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SocketTransport(Transport):
    def __init__(self, host: str, port: int, *, name: str | None = None, connect_timeout: float = 10.0):
        self.name = name or f"socket://{host}:{port}"
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as e:
            raise NoSuchDevice(f"{self.name}: cannot connect ({e.strerror or e})") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        try:
            self._sock.settimeout(30.0)
            self._sock.sendall(data)
        except OSError as e:
            raise DeviceCrashed(f"{self.name}: connection lost while sending ({e.strerror or e})") from None

    def read(self, timeout: float) -> bytes:
        try:
            self._sock.settimeout(max(timeout, 1e-4))
            data = self._sock.recv(65536)
        except (socket.timeout, TimeoutError, BlockingIOError):
            return b""
        except OSError as e:
            raise self._ended(f"connection lost ({e.strerror or e})") from None
        if not data:
            raise self._ended("the device closed the connection")
        return self._seen(data)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


class SerialTransport(Transport):
    """A pyserial port: ``/dev/ttyUSB1`` with ``baud`` (``open_device`` reaches
    ``socket://host:port`` through `SocketTransport`; a socket URL given here is checked by
    `socket_address` first)."""

    def __init__(self, url: str, *, baud: int = 3_000_000, name: str | None = None):
        import serial
        self.name = name or url
        if url.startswith("socket://"):
            socket_address(url)
        try:
            self._port = serial.serial_for_url(url, baudrate=baud, timeout=0)
        except (serial.SerialException, ValueError, OSError) as e:
            raise NoSuchDevice(f"{self.name}: cannot open ({e})") from None
        self._serial = serial

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (self._serial.SerialException, OSError) as e:
            raise DeviceCrashed(f"{self.name}: write failed ({e})") from None

    def read(self, timeout: float) -> bytes:
        try:
            self._port.timeout = max(timeout, 1e-4)
            data = bytearray(self._seen(self._port.read(1)))
            if not data:
                return b""
            # Then what is waiting, in the pieces the port says it holds: pyserial's socket://
            # drops what a read had gathered when the peer closes, and a device's last words
            # before closing (`BUSY_LINE`) must reach `_seen`.
            self._port.timeout = 0
            while len(data) < 65536 and (n := self._port.in_waiting):
                piece = self._port.read(min(n, 65536 - len(data)))
                if not piece:
                    break
                data += self._seen(piece)
            return bytes(data)
        except (self._serial.SerialException, OSError) as e:
            raise self._ended(f"read failed ({e})") from None

    def close(self) -> None:
        try:
            self._port.close()
        except Exception:       # noqa: BLE001 - closing a port that is already gone
            pass


class FaultyTransport(Transport):
    """Flips, drops and duplicates bytes in both directions at the given rates (per byte),
    from one seeded generator, so a failing run can be replayed. ``injected`` counts them."""

    def __init__(self, inner: Transport, *, flip: float = 0.0, drop: float = 0.0, dup: float = 0.0,
                 seed: int = 0):
        for what, rate in (("flip", flip), ("drop", drop), ("dup", dup)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"faults: {what} rate {rate} is not in [0, 1)")
        self.inner, self.flip, self.drop, self.dup = inner, flip, drop, dup
        self.name = inner.name
        self.cycles_per_second = inner.cycles_per_second
        self._rng = random.Random(seed)
        self.injected = {"flip": 0, "drop": 0, "dup": 0}

    def _mangle(self, data: bytes) -> bytes:
        total = self.flip + self.drop + self.dup
        if not total:
            return data
        out = bytearray()
        rng = self._rng
        for b in data:
            r = rng.random()
            if r >= total:
                out.append(b)
            elif r < self.flip:
                out.append(b ^ (1 << rng.randrange(8)))
                self.injected["flip"] += 1
            elif r < self.flip + self.drop:
                self.injected["drop"] += 1
            else:
                out += bytes((b, b))
                self.injected["dup"] += 1
        return bytes(out)

    def write(self, data: bytes) -> None:
        self.inner.write(self._mangle(data))

    def read(self, timeout: float) -> bytes:
        return self._mangle(self.inner.read(timeout))

    def close(self) -> None:
        self.inner.close()
