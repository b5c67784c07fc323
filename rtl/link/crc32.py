"""CRC-32 (IEEE 802.3, Python's ``zlib.crc32``) one byte a cycle, for the host link's frames.

The link checks a frame's CRC as its bytes arrive and computes an outgoing frame's CRC as its
bytes leave, so neither needs the whole frame at once: `crc32_next` is the combinational step
over 8 bits (the reflected polynomial ``0xEDB88320``, LSB first, as one XOR per state bit),
`CRC32` the register around it with the initial value and final XOR ``0xFFFFFFFF``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["CRC32", "crc32_next", "POLY_REFLECTED", "CRC_INIT"]

POLY_REFLECTED = 0xEDB88320     # 0x04C11DB7 bit-reversed: the CRC shifts right, LSB first
CRC_INIT = 0xFFFFFFFF           # initial value and final XOR


def _step(state: int, byte: int) -> int:
    """The register after one byte, on Python ints (the bitwise definition)."""
    for i in range(8):
        feedback = (state ^ (byte >> i)) & 1
        state = (state >> 1) ^ (POLY_REFLECTED if feedback else 0)
    return state


# The step is linear over GF(2): each next-state bit is the XOR of a fixed set of state and data
# bits. Spelling it as those XORs (instead of eight chained Muxes, each reading the previous
# stage twice) keeps the expression flat for the simulator and for synthesis alike.
_STATE_TERMS = [[i for i in range(32) if _step(1 << i, 0) >> j & 1] for j in range(32)]
_DATA_TERMS = [[i for i in range(8) if _step(0, 1 << i) >> j & 1] for j in range(32)]


def crc32_next(state, byte) -> Value:
    """The running CRC register after `byte` (before the final XOR), as an expression."""
    state, byte = Value.cast(state), Value.cast(byte)
    bits = []
    for j in range(32):
        terms = [state[i] for i in _STATE_TERMS[j]] + [byte[i] for i in _DATA_TERMS[j]]
        bits.append(Cat(*terms).xor())
    return Cat(*bits)


class CRC32(wiring.Component):
    """The CRC-32 of the bytes given since the last ``clear``.

    ``clear`` restarts the CRC (in the same cycle as ``en``, the byte is the first of the new
    run); ``en`` adds ``data``. ``value`` is the CRC of the bytes so far (final XOR applied),
    from the cycle after the last ``en``: the link sends or compares it after the bytes it
    covers, never in the same cycle.
    """

    def __init__(self, *, src_loc_at: int = 0):
        super().__init__({"clear": In(1), "en": In(1), "data": In(8), "value": Out(32)},
                         src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        state = Signal(32, init=CRC_INIT)
        start = Mux(self.clear, CRC_INIT, state)
        with m.If(self.en):
            m.d.sync += state.eq(crc32_next(start, self.data))
        with m.Elif(self.clear):
            m.d.sync += state.eq(CRC_INIT)
        m.d.comb += self.value.eq(state ^ CRC_INIT)
        return m
