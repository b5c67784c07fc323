"""Every component of the accelerator a board can build, by name, each built from an `AccelConfig`.

One table for the command line (`moeforge verilog --unit NAME`), the lint and synthesis
checks and the cosimulations, so a new unit is registered in one place. Each entry builds the
component from the config's parameters (the parts as the design sizes them, except that the
router's lanes are ``mac_rows`` here and ``mac_cols`` in the layer core; they are equal in every
example config); the tops (`MoEAccelerator`, `MoESoC` on either phy) hold all the others, so
their lint and synthesis cover each part as the design instantiates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError

__all__ = ["Unit", "UNITS", "elaborate", "unit_verilog", "all_verilog"]


@dataclass(frozen=True)
class Unit:
    """One registered component.

    ``build(cfg)`` returns a new `wiring.Component`; ``heavy`` marks the units whose Verilog,
    lint or synthesis take minutes at the larger example configs (the tops, the expert cache's
    slot logic in Yosys); ``per_config`` is False for a unit that is the same for every config
    (checking it at one config checks it at all).
    """

    name: str
    build: Callable[[AccelConfig], object]   # cfg → wiring.Component
    summary: str
    heavy: bool = False
    per_config: bool = True


def _requantiser(cfg: AccelConfig):
    from .datapath.requantiser import Requantiser
    # The down projection's requantiser: int32 accumulators → int16 expert outputs, one lane per MAC row.
    return Requantiser(in_width=32, out_bits=16, lanes=cfg.mac_rows)


def _combiner(cfg: AccelConfig):
    from .layer.combiner import Combiner
    # as the layer core instantiates it: on the config's combiner_lanes
    return Combiner.from_config(cfg, lanes=cfg.combiner_lanes)


def _gearbox(cfg: AccelConfig):
    from .datapath.gearbox import Gearbox
    from .layer.combiner import contrib_layout
    # as the layer core splits the expert outputs' R-lane beats into the combiner's lanes
    T = cfg.token_buffer_depth
    return Gearbox(contrib_layout(t_max=T, lanes=cfg.mac_rows),
                   contrib_layout(t_max=T, lanes=cfg.combiner_lanes))


def _skid(cfg: AccelConfig):
    from .datapath.skid import SkidBuffer
    from .expert.expert_ffn import output_layout
    # as the layer core buffers the expert engine's outputs
    return SkidBuffer(output_layout(rows=cfg.mac_rows, t_max=cfg.token_buffer_depth))


def _router(cfg: AccelConfig):
    from .routing.router import Router
    return Router.from_config(cfg, lanes=cfg.mac_rows)


def _hidden(cfg: AccelConfig):
    from .expert.hidden import HiddenUnit
    # as the expert engine instantiates it: one lane per gate/up row pair (SwiGLU) or per row (ReLU)
    lanes = cfg.mac_rows // 2 if cfg.activation == "swiglu" else cfg.mac_rows
    return HiddenUnit.from_config(cfg, lanes=lanes)


def _expert_ffn(cfg: AccelConfig):
    from .expert.expert_ffn import ExpertFFN
    return ExpertFFN.from_config(cfg)


def _mac_array(cfg: AccelConfig):
    from amaranth.utils import ceil_log2

    from .datapath.mac_array import MACArray
    # as the GEMM engine of the down projection (`_gemm`) instantiates it: two regions of
    # d_ff / mac_cols words a row, a token buffer of token_buffer_depth tokens
    slices = cfg.d_ff // cfg.mac_cols
    return MACArray(rows=cfg.mac_rows, cols=cfg.mac_cols, depth=2 * slices,
                    x_addr_width=max(1, ceil_log2(cfg.token_buffer_depth * slices)))


def _gemm(cfg: AccelConfig):
    from .datapath.gemm import GemmEngine
    # the down projection's shape: d_model outputs of d_ff inputs
    return GemmEngine(rows=cfg.mac_rows, cols=cfg.mac_cols, n=cfg.d_model, k=cfg.d_ff,
                      t_max=cfg.token_buffer_depth)


def _divider(cfg: AccelConfig):
    from moeforge.spec.arith import GATE_ONE, QUO_BITS

    from .datapath.divider import Divider
    # the router's gate divider: the sum of n_experts gates (or 2^15 + e) as the denominator
    zmax = max(cfg.n_experts * GATE_ONE, 2 * GATE_ONE)
    return Divider(num_bits=(GATE_ONE * GATE_ONE + (zmax >> 1)).bit_length(),
                   den_bits=zmax.bit_length(), quo_bits=QUO_BITS)


def _dispatch(cfg: AccelConfig):
    from .routing.dispatch import Dispatch
    return Dispatch(n_experts=cfg.n_experts, top_k=cfg.top_k, t_max=cfg.token_buffer_depth,
                    shared=bool(cfg.shared_d_ff))


def _token_reader(cfg: AccelConfig):
    from .datapath.mac_array import weight_word
    from .layer.token_reader import TokenReader
    return TokenReader(slices=cfg.d_model // cfg.mac_cols, t_max=cfg.token_buffer_depth,
                       word=weight_word(cfg.mac_cols))


def _expert_cache(cfg: AccelConfig):
    from moeforge.spec.image import ExpertImageLayout

    from .memory.expert_cache import ExpertCache
    words = ExpertImageLayout.from_config(cfg).words
    return ExpertCache.from_config(cfg, image_words=words, word_bits=8 * cfg.mac_cols)


def _onchip_store(cfg: AccelConfig):
    from .memory.onchip_store import OnChipExpertStore
    # sized for the config, whatever its size: whether it fits a board's block RAM is decided
    # against that board's budget (by default, the store refuses what the largest ECP5 cannot hold)
    return OnChipExpertStore(cfg, budget_bits=None)


def _layer_core(cfg: AccelConfig):
    from .layer.layer_core import LayerCore
    return LayerCore.from_config(cfg)


def _accelerator(cfg: AccelConfig):
    from .top.accelerator import MoEAccelerator
    return MoEAccelerator(cfg)


def _crc32(cfg: AccelConfig):
    from .link.crc32 import CRC32
    return CRC32()


def _host_link(cfg: AccelConfig):
    from .link.link import HostLink
    return HostLink()


def _uart_divisor(cfg: AccelConfig) -> int:
    from .top.soc import DEFAULT_BAUD
    from .link.uart import uart_divisor
    return uart_divisor(cfg.clock_mhz * 1e6, DEFAULT_BAUD)


def _uart_rx(cfg: AccelConfig):
    from .link.uart import UARTRx
    return UARTRx(divisor=_uart_divisor(cfg))


def _uart_tx(cfg: AccelConfig):
    from .link.uart import UARTTx
    return UARTTx(divisor=_uart_divisor(cfg))


def _soc(phy: str):
    def build(cfg: AccelConfig):
        from .top.soc import MoESoC
        return MoESoC(cfg, phy=phy)
    return build


_TABLE = [
    Unit("requantiser", _requantiser, "int32 → int8/int16 with multiplier, shift, rounding"),
    Unit("combiner", _combiner, "gate-weighted sum of expert outputs per token, then int8"),
    Unit("gearbox", _gearbox, "R-lane beats as the combiner's L-lane beats (and back)"),
    Unit("skid", _skid, "a stream register slice whose valid and ready are both registers"),
    Unit("router", _router, "gating GEMV, top-k, softmax/sigmoid gates, shared-expert gate"),
    Unit("hidden", _hidden, "gate/up requantisation, SiLU or ReLU, t·u, Hadamard rotation, int8 h"),
    Unit("expert_ffn", _expert_ffn, "one expert over its tokens on the R×C int8 MAC array"),
    Unit("mac_array", _mac_array, "R×C int8 MACs with their weight buffer, int32 accumulators"),
    Unit("gemm", _gemm, "batched int8 GEMM on the MAC array, weights read once per job"),
    Unit("divider", _divider, "sequential restoring divider (the router's gate division)"),
    Unit("dispatch", _dispatch, "expert → tokens table of a batch, in expert-major order"),
    Unit("token_reader", _token_reader, "token buffer reads feeding an engine, slice by slice"),
    Unit("expert_cache", _expert_cache, "S on-chip expert slots, burst fetch, prefetch, counters",
         heavy=True),
    Unit("onchip_store", _onchip_store, "every expert's image in block RAM on the SoC's memory port "
         "(configs whose experts fit on chip)"),
    Unit("layer_core", _layer_core, "token buffer, router, scheduler, engines, combiner", heavy=True),
    Unit("accelerator", _accelerator, "the layer core and expert cache behind the command set",
         heavy=True),
    Unit("crc32", _crc32, "CRC-32 of a byte stream, one byte a cycle", per_config=False),
    Unit("host_link", _host_link, "framing, CRC, retransmission and HELLO of the host link",
         per_config=False),
    Unit("uart_rx", _uart_rx, "8N1 receiver at 3 Mbaud of the config's clock"),
    Unit("uart_tx", _uart_tx, "8N1 transmitter at 3 Mbaud of the config's clock"),
    Unit("soc", _soc("stream"), "the device: host link and accelerator, bytes as streams, "
         "a memory port", heavy=True),
    Unit("soc_uart", _soc("uart"), "the device on a board's UART pins, a memory port", heavy=True),
]
UNITS: dict[str, Unit] = {unit.name: unit for unit in _TABLE}


def elaborate(cfg: AccelConfig, name: str):
    """A new component of unit `name` for `cfg`.

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the known ones), or a config the unit cannot be
        built for.
    """
    if name not in UNITS:
        raise ConfigError("unit", f"must be one of {', '.join(UNITS)}; not {name!r}")
    try:
        return UNITS[name].build(cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError("unit", f"{name} cannot be built for config {cfg.name}: {exc}") from None


def unit_verilog(cfg: AccelConfig, name: str) -> str:
    """The Verilog of unit `name` for `cfg`, its top module named `name`."""
    from .export import to_verilog
    return to_verilog(elaborate(cfg, name), name)


def all_verilog(cfg: AccelConfig) -> str:
    """Every unit's Verilog, each under its own top module name."""
    return "\n".join(unit_verilog(cfg, n) for n in UNITS)
