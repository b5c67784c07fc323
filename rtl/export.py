"""Verilog export of Amaranth components, and the Verilog port names of their signatures.

Amaranth names the Verilog port of a signature member by joining its path with ``__``
(``i_stream.payload`` becomes ``i_stream__payload``). `verilog_ports` derives these names from
the component's signature exactly as `amaranth.back.verilog.convert` does, so testbenches and
board top levels never hand-write them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amaranth.back import verilog
from amaranth.hdl import Shape, ValueCastable
from amaranth.lib import wiring

__all__ = ["to_verilog", "verilog_ports", "PortInfo"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


@dataclass(frozen=True)
class PortInfo:
    """One Verilog port of a component: name, width in bits, ``"input"`` or ``"output"``."""

    name: str
    width: int
    direction: str
    signed: bool


def _check_component(component) -> None:
    if not isinstance(component, wiring.Component):
        raise TypeError(f"expected an amaranth wiring.Component, not {component!r}")


def verilog_ports(component) -> dict[str, PortInfo]:
    """The Verilog ports of `component`'s signature, keyed by their dotted member path.

    ``{"i_stream.payload": PortInfo("i_stream__payload", 320, "input", False), ...}``. The
    ``clk`` and ``rst`` ports Amaranth adds for a ``sync`` domain are not signature members and
    are not listed.
    """
    _check_component(component)
    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        shape = Shape.cast(value.shape())
        ports[".".join(map(str, path))] = PortInfo(
            name="__".join(map(str, path)),
            width=shape.width,
            direction="input" if member.flow == wiring.In else "output",
            signed=shape.signed,
        )
    return ports


def to_verilog(component, name: str, *, emit_src: bool = False) -> str:
    """Elaborate `component` and return its Verilog text with top module `name`.

    Parameters
    ----------
    component : wiring.Component
        Its signature gives the ports.
    name : str
        Top-level module name; a plain Verilog identifier.
    emit_src : bool
        Keep Amaranth's ``src`` attributes (Python file and line of each signal). Off by
        default so the text, and the simulation build cache keyed on it, does not change when
        unrelated source lines move.

    Raises
    ------
    TypeError
        If `component` is not a `wiring.Component`.
    ValueError
        If `name` is not a Verilog identifier.
    """
    _check_component(component)
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ValueError(f"module name must be a Verilog identifier, not {name!r}")
    return verilog.convert(component, name=name, emit_src=emit_src)
