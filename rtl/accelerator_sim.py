"""`AcceleratorWithMemory`: `MoEAccelerator` on the backing-memory model, the simulated layer.

What the whole-layer cosimulation (``moeforge sim`` without ``--unit``) builds: the accelerator's
command and response streams (and ``busy``, the accelerator's) are its only ports; the host loads the expert images into the
backing memory with ``WRITE_MEMORY`` commands, as it would on a board.
"""

from __future__ import annotations

from fractions import Fraction

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.config import AccelConfig

from .accelerator import MoEAccelerator, byte_layout
from .backing_memory import BackingMemory

__all__ = ["AcceleratorWithMemory", "DEFAULT_LATENCY"]

DEFAULT_LATENCY = 16        # cycles from a burst request to its first word


class AcceleratorWithMemory(wiring.Component):
    """`MoEAccelerator` + `BackingMemory`.

    Parameters
    ----------
    cfg : AccelConfig
    latency : int
        Backing memory latency in cycles, in [1, 1024].
    bytes_per_cycle : int or Fraction
        Backing memory bandwidth; default one word (``mac_cols`` bytes) per cycle.
    burst : int
        Longest burst the cache requests, in words.
    """

    def __init__(self, cfg: AccelConfig, *, latency: int = DEFAULT_LATENCY, bytes_per_cycle=None,
                 burst: int = 16, src_loc_at: int = 0):
        self.accel = MoEAccelerator(cfg, burst=burst, src_loc_at=1 + src_loc_at)
        if bytes_per_cycle is None:
            bytes_per_cycle = cfg.mac_cols
        self.memory = BackingMemory(depth=self.accel.mem_words, word_bits=8 * cfg.mac_cols,
                                    latency=latency, bytes_per_cycle=Fraction(bytes_per_cycle),
                                    max_length=burst, addr_width=len(self.accel.mem_wr.addr),
                                    src_loc_at=1 + src_loc_at)
        self.cfg = cfg
        super().__init__({
            "i_cmd": In(stream.Signature(byte_layout())),
            "o_rsp": Out(stream.Signature(byte_layout())),
            "busy": Out(1),
        }, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = acc = self.accel
        m.submodules.memory = mem = self.memory
        wiring.connect(m, wiring.flipped(self.i_cmd), acc.i_cmd)
        wiring.connect(m, acc.o_rsp, wiring.flipped(self.o_rsp))
        wiring.connect(m, acc.mem_req, mem.i_req)
        wiring.connect(m, mem.o_resp, acc.mem_resp)
        wiring.connect(m, acc.mem_wr, mem.wr)
        m.d.comb += self.busy.eq(acc.busy)
        return m
