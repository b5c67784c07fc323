"""The accelerator's units by name, each elaborated from an `AccelConfig`.

One table for the command line (`moeforge verilog --unit NAME`), the lint and synthesis
checks and the cosimulations, so a new unit is registered in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError

__all__ = ["Unit", "UNITS", "unit_names", "elaborate", "unit_verilog", "all_verilog"]


@dataclass(frozen=True)
class Unit:
    name: str
    build: Callable[[AccelConfig], object]   # cfg → wiring.Component
    summary: str


def _requantiser(cfg: AccelConfig):
    from .requantiser import Requantiser
    # The down projection's requantiser: int32 accumulators → int16 expert outputs, one lane per MAC row.
    return Requantiser(in_width=32, out_bits=16, lanes=cfg.mac_rows)


def _combiner(cfg: AccelConfig):
    from .combiner import Combiner
    return Combiner.from_config(cfg, lanes=cfg.mac_rows)


def _router(cfg: AccelConfig):
    from .router import Router
    return Router.from_config(cfg, lanes=cfg.mac_rows)


def _hidden(cfg: AccelConfig):
    from .hidden import HiddenUnit
    # as the expert engine instantiates it: one lane per gate/up row pair (SwiGLU) or per row (ReLU)
    lanes = cfg.mac_rows // 2 if cfg.activation == "swiglu" else cfg.mac_rows
    return HiddenUnit.from_config(cfg, lanes=lanes)


def _expert_ffn(cfg: AccelConfig):
    from .expert_ffn import ExpertFFN
    return ExpertFFN.from_config(cfg)


UNITS: dict[str, Unit] = {
    "requantiser": Unit("requantiser", _requantiser, "int32 → int8/int16 with multiplier, shift, rounding"),
    "combiner": Unit("combiner", _combiner, "gate-weighted sum of expert outputs per token, then int8"),
    "router": Unit("router", _router, "gating GEMV, top-k, softmax/sigmoid gates, shared-expert gate"),
    "hidden": Unit("hidden", _hidden, "gate/up requantisation, SiLU or ReLU, t·u, Hadamard rotation, int8 h"),
    "expert_ffn": Unit("expert_ffn", _expert_ffn, "one expert over its tokens on the R×C int8 MAC array"),
}


def unit_names() -> list[str]:
    return list(UNITS)


def elaborate(cfg: AccelConfig, name: str):
    if name not in UNITS:
        raise ConfigError("unit", f"must be one of {', '.join(UNITS)}; not {name!r}")
    try:
        return UNITS[name].build(cfg)
    except (ValueError, TypeError) as exc:
        raise ConfigError("unit", f"{name} cannot be built for config {cfg.name}: {exc}") from None


def unit_verilog(cfg: AccelConfig, name: str) -> str:
    from .export import to_verilog
    return to_verilog(elaborate(cfg, name), name)


def all_verilog(cfg: AccelConfig) -> str:
    """Every unit's Verilog, each under its own top module name."""
    return "\n".join(unit_verilog(cfg, n) for n in UNITS)
