"""cocotb 2.x helpers for Amaranth streams: a driver, a monitor, a sink, payload packing.

An Amaranth ``stream.Interface`` named ``<prefix>`` appears in Verilog as the ports
``<prefix>__valid``, ``<prefix>__ready`` and ``<prefix>__payload``; a payload of N lanes or a
struct is one wide bit-vector, lane 0 / the first field in the least significant bits.
`pack_signed` / `unpack_signed` and `pack_layout` / `unpack_layout` convert between Python
values and those bit-vectors (take layouts from the component, e.g. ``Requantiser.in_layout``).

Timing model: all three classes act once per clock cycle. Right after a rising edge they drive
their outputs for the cycle; in the ``ReadOnly`` phase of the same time step (all logic
settled, before the next edge) they sample ``valid`` and ``ready``: both high means the beat
transfers at the coming edge (stream rule 1). Start them right after a rising edge (e.g. at the
end of reset), not from a ``ReadOnly`` phase.

Stalls come from pause generators, as in cocotbext-axi's ``set_pause_generator``: an iterator
of booleans, one drawn per cycle, True meaning "pause this cycle". By default a seeded
Bernoulli generator with probability ``stall_prob``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = [
    "Beat", "StreamDriver", "StreamMonitor", "StreamSink", "bernoulli_pauses",
    "pack_signed", "unpack_signed", "pack_unsigned", "unpack_unsigned",
    "pack_layout", "unpack_layout",
]


# --------------------------------------------------------------------------- payload packing

def _check_width(width) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, not {width!r}")


def pack_signed(values: Iterable[int], width: int) -> int:
    """Pack signed ints as two's complement `width`-bit lanes, element 0 in the low bits.

    Raises
    ------
    ValueError
        If a value does not fit in a signed `width`-bit lane (nothing is silently truncated).
    """
    _check_width(width)
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    mask = (1 << width) - 1
    word = 0
    for i, v in enumerate(values):
        v = int(v)
        if not lo <= v <= hi:
            raise ValueError(f"element {i} = {v} does not fit in signed {width} bits")
        word |= (v & mask) << (i * width)
    return word


def unpack_signed(word: int, width: int, n: int) -> list[int]:
    """The `n` signed `width`-bit lanes of `word`, element 0 from the low bits."""
    _check_width(width)
    word = int(word)
    mask, sign = (1 << width) - 1, 1 << (width - 1)
    out = []
    for i in range(n):
        v = (word >> (i * width)) & mask
        out.append(v - (1 << width) if v & sign else v)
    return out


def pack_unsigned(values: Iterable[int], width: int) -> int:
    """Pack unsigned ints as `width`-bit lanes, element 0 in the low bits (range-checked)."""
    _check_width(width)
    word = 0
    for i, v in enumerate(values):
        v = int(v)
        if not 0 <= v < (1 << width):
            raise ValueError(f"element {i} = {v} does not fit in unsigned {width} bits")
        word |= v << (i * width)
    return word


def unpack_unsigned(word: int, width: int, n: int) -> list[int]:
    """The `n` unsigned `width`-bit lanes of `word`, element 0 from the low bits."""
    _check_width(width)
    mask = (1 << width) - 1
    return [(int(word) >> (i * width)) & mask for i in range(n)]


def _pack_shape(shape, value, path: str) -> int:
    if isinstance(shape, data.Layout):
        if isinstance(shape, data.ArrayLayout):
            items = list(value)
            if len(items) != shape.length:
                raise ValueError(f"{path or 'value'}: expected {shape.length} elements, "
                                 f"got {len(items)}")
            get = items.__getitem__
        elif isinstance(value, Mapping):
            keys = {k for k, _ in shape}
            extra = set(value) - keys
            missing = keys - set(value)
            if extra or missing:
                raise ValueError(f"{path or 'value'}: fields {sorted(keys)} expected; "
                                 f"missing {sorted(missing)}, unknown {sorted(extra)}")
            get = value.__getitem__
        else:
            raise TypeError(f"{path or 'value'}: a mapping is needed for {shape!r}, "
                            f"not {value!r}")
        word = 0
        for key, fld in shape:
            sub = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
            word |= _pack_shape(fld.shape, get(key), sub.lstrip(".")) << fld.offset
        return word
    s = Shape.cast(shape)
    v = int(value)
    lo = -(1 << (s.width - 1)) if s.signed else 0
    hi = (1 << (s.width - 1)) - 1 if s.signed else (1 << s.width) - 1
    if not lo <= v <= hi:
        raise ValueError(f"{path or 'value'} = {v} does not fit in {s!r}")
    return v & ((1 << s.width) - 1)


def _unpack_shape(shape, word: int):
    if isinstance(shape, data.Layout):
        fields = [(k, _unpack_shape(f.shape, word >> f.offset)) for k, f in shape]
        if isinstance(shape, data.ArrayLayout):
            return [v for _, v in fields]
        return dict(fields)
    s = Shape.cast(shape)
    v = word & ((1 << s.width) - 1)
    if s.signed and v >> (s.width - 1):
        v -= 1 << s.width
    return v


def pack_layout(layout, value) -> int:
    """Pack a Python value into the bits of an Amaranth layout (or plain shape).

    `value` is a mapping for a ``StructLayout``/``UnionLayout`` (every field once), a sequence
    for an ``ArrayLayout``, an int for a plain shape; nested as the layout nests. Each leaf is
    range-checked against its signed/unsigned shape.
    """
    return _pack_shape(layout, value, "")


def unpack_layout(layout, word: int):
    """The inverse of `pack_layout`: dicts for structs, lists for arrays, ints for leaves."""
    return _unpack_shape(layout, int(word))


# ------------------------------------------------------------------------------ stall sources

def bernoulli_pauses(stall_prob: float, seed=None) -> Iterator[bool]:
    """An endless pause generator: True with probability `stall_prob` each draw."""
    if not 0.0 <= stall_prob < 1.0:
        raise ValueError(f"stall_prob must be in [0, 1), not {stall_prob!r}")
    rng = random.Random(seed)
    if stall_prob == 0.0:
        return itertools.repeat(False)
    return (rng.random() < stall_prob for _ in itertools.count())


def _port(dut, prefix: str, member: str):
    name = f"{prefix}__{member}"
    try:
        return getattr(dut, name)
    except AttributeError:
        raise AttributeError(f"the DUT has no port {name!r} (stream prefix {prefix!r})") from None


def _pauses(stall_prob, seed, pause) -> Iterator[bool]:
    if pause is not None:
        return iter(pause)
    return bernoulli_pauses(stall_prob, seed)


@dataclass(frozen=True)
class Beat:
    """One transfer: the payload bits, the cycle it transferred in (counted from the
    component's start, the first cycle being 0) and the simulation time in ns of that cycle
    (sampled in its ``ReadOnly`` phase, before the rising edge that completes the transfer)."""

    payload: int
    cycle: int
    time_ns: float


# -------------------------------------------------------------------------------- components

class StreamDriver:
    """Producer side of a stream: drives ``valid`` and ``payload``.

    A beat is presented with ``valid`` high and held, payload stable, until the cycle in
    which ``ready`` is high (rule 2); ``valid`` is raised without looking at ``ready`` (rule 3).
    Between beats the pause generator inserts idle cycles (``valid`` low).

    Parameters
    ----------
    dut : cocotb handle
    prefix : str
        Stream name in the component's signature, e.g. ``"i_stream"``.
    clk : cocotb handle
    stall_prob : float
        Probability of an idle cycle before each beat (repeated draws: geometric gaps).
    seed : int, optional
        Seed of the default pause generator.
    pause : iterable of bool, optional
        A custom pause generator, drawn once per potential idle cycle.
    """

    def __init__(self, dut, prefix: str, clk, *, stall_prob: float = 0.0, seed=None,
                 pause: Iterable[bool] | None = None):
        self.prefix = prefix
        self.clk = clk
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.payload = _port(dut, prefix, "payload")
        self._pause = _pauses(stall_prob, seed, pause)
        self.sent: list[Beat] = []
        self.cycle = 0
        self.valid.value = 0

    async def _edge(self) -> None:
        await RisingEdge(self.clk)
        self.cycle += 1

    async def send(self, payloads: Iterable[int]) -> None:
        """Transfer each payload in order; returns after the last one has transferred."""
        for p in payloads:
            while next(self._pause):
                self.valid.value = 0
                await self._edge()
            self.valid.value = 1
            self.payload.value = int(p)
            while True:
                await ReadOnly()
                accepted = bool(self.ready.value)
                beat = Beat(int(p), self.cycle, get_sim_time("ns"))
                await self._edge()
                if accepted:
                    self.sent.append(beat)
                    break
        self.valid.value = 0

    def start(self, payloads: Iterable[int]):
        """`send` as a background task (returned; await it to wait for the last transfer)."""
        return cocotb.start_soon(self.send(payloads))


class StreamMonitor:
    """Passive observer of a stream: records every transfer and checks the producer.

    With ``check_protocol`` (default) it fails the test (``AssertionError``) when the producer
    breaks rule 2: ``valid`` dropped, or ``payload`` changed, before a transfer.

    Parameters
    ----------
    dut, prefix, clk :
        As for `StreamDriver`.
    callback : callable, optional
        Called with each `Beat` as it transfers (e.g. ``scoreboard.add_received``-style).
    check_protocol : bool
    """

    def __init__(self, dut, prefix: str, clk, *, callback: Callable[[Beat], None] | None = None,
                 check_protocol: bool = True):
        self.prefix = prefix
        self.clk = clk
        self.valid = _port(dut, prefix, "valid")
        self.ready = _port(dut, prefix, "ready")
        self.payload = _port(dut, prefix, "payload")
        self.callback = callback
        self.check_protocol = check_protocol
        self.beats: list[Beat] = []
        self.cycle = 0
        self._task = None

    def _drive(self) -> None:
        """Drive this cycle's outputs (nothing for a passive monitor)."""

    async def _run(self) -> None:
        pending = None        # payload shown with valid high but not yet transferred
        while True:
            self._drive()
            await ReadOnly()
            valid = bool(self.valid.value)
            if self.check_protocol and pending is not None:
                if not valid:
                    raise AssertionError(
                        f"stream {self.prefix}: valid dropped in cycle {self.cycle} before "
                        f"payload {pending:#x} transferred (stream rule 2)")
            if valid:
                payload = self.payload.value.to_unsigned()
                if self.check_protocol and pending is not None and payload != pending:
                    raise AssertionError(
                        f"stream {self.prefix}: payload changed from {pending:#x} to "
                        f"{payload:#x} in cycle {self.cycle} before a transfer (stream rule 2)")
                if self.ready.value:
                    beat = Beat(payload, self.cycle, get_sim_time("ns"))
                    self.beats.append(beat)
                    if self.callback is not None:
                        self.callback(beat)
                    pending = None
                else:
                    pending = payload
            await RisingEdge(self.clk)
            self.cycle += 1

    def start(self) -> StreamMonitor:
        """Start observing (call right after a rising edge); returns self."""
        if self._task is None:
            self._task = cocotb.start_soon(self._run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def payloads(self) -> list[int]:
        return [b.payload for b in self.beats]

    def raise_failure(self) -> None:
        """Re-raise the protocol failure the monitor stopped on, if it stopped on one: a wait
        for beats elsewhere calls it each cycle, so the failure is reported, not a timeout."""
        if self._task is not None and self._task.done():
            self._task.result()

    async def wait_for(self, n: int, *, max_cycles: int) -> list[Beat]:
        """Wait until `n` beats have transferred; fail if that takes over `max_cycles` cycles.

        Raises
        ------
        AssertionError
            ``stream <prefix>: received k of n beats within max_cycles cycles``.
        """
        for _ in range(max_cycles):
            if len(self.beats) >= n:
                return self.beats[:n]
            self.raise_failure()
            await RisingEdge(self.clk)
        if len(self.beats) >= n:
            return self.beats[:n]
        raise AssertionError(f"stream {self.prefix}: received {len(self.beats)} of {n} beats "
                             f"within {max_cycles} cycles")


class StreamSink(StreamMonitor):
    """Consumer side of a stream: drives ``ready`` with random back-pressure and records.

    ``ready`` is low in the cycles the pause generator says so, high otherwise, independent
    of ``valid`` (rule 4 allows any ready behaviour).

    Parameters
    ----------
    dut, prefix, clk :
        As for `StreamDriver`.
    stall_prob : float
        Probability that ``ready`` is low in a cycle.
    seed : int, optional
    pause : iterable of bool, optional
        A custom pause generator, drawn once per cycle.
    callback, check_protocol :
        As for `StreamMonitor`.
    """

    def __init__(self, dut, prefix: str, clk, *, stall_prob: float = 0.0, seed=None,
                 pause: Iterable[bool] | None = None,
                 callback: Callable[[Beat], None] | None = None, check_protocol: bool = True):
        super().__init__(dut, prefix, clk, callback=callback, check_protocol=check_protocol)
        self._pause = _pauses(stall_prob, seed, pause)
        self.ready.value = 0

    def _drive(self) -> None:
        self.ready.value = 0 if next(self._pause) else 1

    def stop(self) -> None:
        super().stop()
        self.ready.value = 0
