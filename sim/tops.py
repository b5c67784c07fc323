"""The simulated tops: the accelerator and the whole device, each on the backing-memory model.

`AcceleratorWithMemory` is what the whole-layer cosimulation (``moeforge sim`` without
``--unit``) builds: the accelerator's command and response streams (and ``busy``, the
accelerator's) are its only ports; the host loads the expert images into the backing memory with
``WRITE_MEMORY`` commands, as it would on a board.

`SimulatedSoC` is the simulated device (`moeforge.sim.sim_device`): `MoESoC`, whose memory port
a board connects to real memory, with `BackingMemory` plugged into that port. Its ports are the
SoC's byte ports and ``busy``, nothing else, so the device server's harness drives it as it
would drive the SoC alone. ``SimulatedSoC(cfg, memory="onchip")`` plugs in the board's memory
instead, `OnChipExpertStore` (block RAM), so the design a board builds runs whole under the same
host (``open_device("sim", cfg, memory="onchip")``).

Both live here, not in `moeforge.rtl`, because the backing-memory model is not synthesizable
into a board design.
"""

from __future__ import annotations

from fractions import Fraction

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.config import AccelConfig
from moeforge.rtl.top.accelerator import MoEAccelerator, byte_layout
from moeforge.rtl.memory.onchip_store import OnChipExpertStore, check_fits
from moeforge.rtl.top.soc import MEMORY_PORT, MoESoC

from .backing_memory import BackingMemory

__all__ = ["AcceleratorWithMemory", "SimulatedSoC", "DEFAULT_LATENCY", "MEMORIES",
           "backing_memory_for"]

DEFAULT_LATENCY = 16        # cycles from a burst request to its first word
# What `SimulatedSoC` plugs into the SoC's memory port: the latency/bandwidth model of off-chip
# memory, or the on-chip store a board with the experts in block RAM has.
MEMORIES = ("model", "onchip")


def backing_memory_for(accel: MoEAccelerator, *, latency: int = DEFAULT_LATENCY,
                       bytes_per_cycle=None, burst: int = 16, src_loc_at: int = 0) -> BackingMemory:
    """The `BackingMemory` that fits `accel`'s memory port: its words, word width, address
    width and longest burst.

    Parameters
    ----------
    accel : MoEAccelerator
    latency : int
        Cycles from a burst request to its first word, in [1, 1024].
    bytes_per_cycle : int or Fraction
        Bandwidth; default one word (``mac_cols`` bytes) per cycle.
    burst : int
        Longest burst the cache requests, in words (the accelerator's ``burst``).
    """
    cfg = accel.cfg
    if bytes_per_cycle is None:
        bytes_per_cycle = cfg.mac_cols
    return BackingMemory(depth=accel.mem_words, word_bits=8 * cfg.mac_cols, latency=latency,
                         bytes_per_cycle=Fraction(bytes_per_cycle), max_length=burst,
                         addr_width=len(accel.mem_wr.addr), src_loc_at=1 + src_loc_at)


def _connect_memory(m: Module, port, memory: BackingMemory) -> None:
    """Connect a memory port (``mem_req``, ``mem_resp``, ``mem_wr``) to `memory`."""
    wiring.connect(m, port.mem_req, memory.i_req)
    wiring.connect(m, memory.o_resp, port.mem_resp)
    wiring.connect(m, port.mem_wr, memory.wr)


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
        self.memory = backing_memory_for(self.accel, latency=latency,
                                         bytes_per_cycle=bytes_per_cycle, burst=burst,
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
        _connect_memory(m, acc, mem)
        m.d.comb += self.busy.eq(acc.busy)
        return m


class SimulatedSoC(wiring.Component):
    """`MoESoC` with memory on its memory port: the simulated device.

    Parameters
    ----------
    cfg : AccelConfig
    memory : str
        ``"model"`` (default): `BackingMemory`, off-chip memory's latency and bandwidth;
        ``"onchip"``: `OnChipExpertStore`, the block RAM a board plugs in.
    latency, bytes_per_cycle
        The backing memory's, as for `AcceleratorWithMemory` (``memory="model"`` only; the
        on-chip store's latency is its own).
    burst : int
        Longest burst the cache requests, in words.
    **soc_params
        The other `MoESoC` parameters (``phy``, ``max_payload``, ``rx_timeout``, ``clock_hz``,
        ``baud``).

    Raises
    ------
    TypeError, ValueError
        As `MoESoC` and `BackingMemory`; for an unknown memory, or a model's parameter given
        with ``memory="onchip"``.
    ConfigError
        With ``memory="onchip"``, for a config whose experts do not fit the on-chip store.
    """

    def __new__(cls, cfg: AccelConfig, *, memory: str = "model", latency: int | None = None,
                bytes_per_cycle=None, burst: int = 16, src_loc_at: int = 0, **soc_params):
        # checked before the component exists, so a refusal leaves no unused component behind
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {', '.join(map(repr, MEMORIES))}, "
                             f"not {memory!r}")
        if memory == "onchip":
            if latency is not None or bytes_per_cycle is not None:
                raise ValueError(f"latency and bytes_per_cycle are the memory model's; memory "
                                 f"'onchip' has the store's own (got latency={latency!r}, "
                                 f"bytes_per_cycle={bytes_per_cycle!r})")
            check_fits(cfg)
        return super().__new__(cls, src_loc_at=1 + src_loc_at)

    def __init__(self, cfg: AccelConfig, *, memory: str = "model", latency: int | None = None,
                 bytes_per_cycle=None, burst: int = 16, src_loc_at: int = 0, **soc_params):
        self.soc = MoESoC(cfg, burst=burst, src_loc_at=1 + src_loc_at, **soc_params)
        if memory == "onchip":      # its budget was checked in __new__, its burst by the SoC's
            self.memory = OnChipExpertStore(cfg, burst=burst, src_loc_at=1 + src_loc_at)
        else:
            self.memory = backing_memory_for(
                self.soc.accel, latency=DEFAULT_LATENCY if latency is None else latency,
                bytes_per_cycle=bytes_per_cycle, burst=burst, src_loc_at=1 + src_loc_at)
        self.cfg, self.phy, self.memory_kind = cfg, self.soc.phy, memory
        members = self.soc.signature.members
        super().__init__({name: members[name] for name in ("rx", "tx", "busy")},
                         src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        m.submodules.soc = soc = self.soc
        m.submodules.memory = mem = self.memory
        if self.memory_kind == "onchip":
            for name in MEMORY_PORT:
                wiring.connect(m, getattr(soc, name), getattr(mem, name))
        else:
            _connect_memory(m, soc, mem)
        if self.phy == "uart":
            m.d.comb += [soc.rx.eq(self.rx), self.tx.eq(soc.tx)]
        else:
            wiring.connect(m, wiring.flipped(self.rx), soc.rx)
            wiring.connect(m, soc.tx, wiring.flipped(self.tx))
        m.d.comb += self.busy.eq(soc.busy)
        return m
