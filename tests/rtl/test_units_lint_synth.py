"""Every registered unit: Verilator -Wall lint and Yosys generic synth; the registry lists every
component of `moeforge.rtl`.

In `make test` every unit runs at tiny (but the accelerator and the stream-phy SoC, which the
UART SoC contains), the router at every example config, the datapath units (requantiser,
combiner, hidden, expert FFN) at switch too; every other config under ``slow``
(the heavy units among them: ``Unit.heavy``, the layer core, the accelerator, the SoC on either
phy, whose Verilog alone takes tens of seconds at the larger configs, and the expert cache,
whose Yosys synthesis at mixtral takes over ten minutes). A unit the same for every config
(``Unit.per_config`` false: the CRC, the host link) runs at tiny only.

Lint waivers: `moeforge.sim.toolchain.AMARANTH_LINT_WAIVERS` and `HIERARCHY_WAIVERS`, each
justified there; `lint_problems` excuses only unused combinational alias wires, never state.
"""

import glob
import importlib
import inspect
import pkgutil

import pytest
from amaranth.lib import wiring

import moeforge.rtl
from moeforge import AccelConfig
from moeforge.fpga_boards.yosys import synth_check
from moeforge.rtl.units import UNITS, elaborate, unit_verilog
from moeforge.sim.toolchain import lint_problems

CONFIGS = sorted(glob.glob("configs/*.toml"))
TINY = "configs/tiny.toml"


# Defects the registry's checks found in the tops when they were first registered, each to be
# fixed in the unit; strict: a fix makes the case pass, and then the entry must go.
_DEFECTS = {}


# The router is checked at every example config in `make test` (each routing family is its own
# logic); the datapath units at tiny (SwiGLU) and switch (ReLU) there; every other case under
# `slow` (the suite's 25-minute budget on two cores: the datapath units' Yosys runs at the five
# other configs took 5 minutes of worker time).
EVERY_CONFIG = {"router"}
DATAPATH = {"requantiser", "combiner", "hidden", "expert_ffn"}
DATAPATH_CONFIGS = {TINY, "configs/switch.toml"}
# At tiny too the accelerator and the stream-phy SoC are under `slow`: the UART SoC, which holds
# the same accelerator, is linted and synthesised in `make test` (each took over a minute).
TINY_SLOW = {"accelerator", "soc"}


def _cases():
    for config in CONFIGS:
        cfg = AccelConfig.from_toml(config)
        for name, unit in sorted(UNITS.items()):
            if not unit.per_config and config != TINY:
                continue
            fast = ((config == TINY and name not in TINY_SLOW) or name in EVERY_CONFIG
                    or (name in DATAPATH and config in DATAPATH_CONFIGS)) and not (unit.heavy and config != TINY)
            marks = [] if fast else [pytest.mark.slow]
            defect = _DEFECTS.get(name, lambda cfg: None)(cfg)
            if defect:
                marks.append(pytest.mark.xfail(strict=True, reason=defect))
            yield pytest.param(config, name, marks=marks, id=f"{config}-{name}")


@pytest.mark.verilator
@pytest.mark.synthesis
@pytest.mark.parametrize("config, unit", list(_cases()))
def test_lint_and_synth(config, unit):
    cfg = AccelConfig.from_toml(config)
    text = unit_verilog(cfg, unit)
    problems = lint_problems(text, unit)
    assert problems == [], f"{unit} @ {config}: " + "; ".join(problems[:5])
    report = synth_check(text, unit)
    assert report.cells > 0


def rtl_components() -> set[type]:
    """Every `wiring.Component` class defined in a module of `moeforge.rtl`."""
    found = set()
    for info in pkgutil.walk_packages(moeforge.rtl.__path__, "moeforge.rtl."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, wiring.Component) and obj.__module__ == module.__name__:
                found.add(obj)
    return found


def test_registry_lists_every_rtl_component():
    """What rtl/ holds is what a board can build: each of its components is a registered unit,
    so the lint and synthesis above cover it."""
    cfg = AccelConfig.from_toml(TINY)
    built = [elaborate(cfg, name) for name in UNITS]
    registered = {type(unit) for unit in built}
    missing = sorted(c.__qualname__ for c in rtl_components() - registered)
    assert missing == [], f"components of moeforge.rtl not in the unit registry: {missing}"
    for unit in built:       # built only to read their types: mark them elaborated
        _mark_used(unit)


def _mark_used(component) -> None:
    from amaranth.hdl import Fragment
    Fragment.get(component, None)


def test_soc_takes_its_memory_through_a_port():
    """`MoESoC` holds no memory model: the accelerator's burst-read and write ports are the
    SoC's own, on either phy, with the accelerator's shapes."""
    from moeforge.rtl.top.soc import MEMORY_PORT, MoESoC
    cfg = AccelConfig.from_toml(TINY)
    for phy in ("stream", "uart"):
        soc = MoESoC(cfg, phy=phy)
        members = soc.signature.members
        accel = soc.accel.signature.members
        for name in MEMORY_PORT:
            assert name in members, f"MoESoC(phy={phy!r}) has no {name} port"
            assert members[name] == accel[name], name
        parts = _held_elaboratables(soc)
        assert all(type(p).__module__.startswith("moeforge.rtl.") for p in parts), parts
        assert not any(type(p).__name__ == "BackingMemory" for p in parts)
        _mark_used(soc)


def _held_elaboratables(top) -> list:
    """`top` and every elaboratable reachable through the attributes of those it holds."""
    from amaranth.hdl import Elaboratable
    todo, seen = [top], {}
    while todo:
        obj = todo.pop()
        if id(obj) not in seen:
            seen[id(obj)] = obj
            todo += [v for v in vars(obj).values() if isinstance(v, Elaboratable)]
    return list(seen.values())


def test_synth_check_catches_a_combinational_loop():
    from moeforge.fpga_boards.yosys import SynthError
    with pytest.raises(SynthError, match="check"):
        synth_check("module top(input a, output b); assign b = b ^ a; endmodule", "top")


def test_verilog_command_emits_a_top_and_lists_the_units(tmp_path, capsys):
    """`moeforge verilog --unit` takes every registered name (a top such as the SoC included)
    and refuses another with one usage line that lists them."""
    from moeforge.cli import main
    out = tmp_path / "soc.v"
    assert main(["verilog", "--config", TINY, "--unit", "soc", "-o", str(out)]) == 0
    text = out.read_text()
    assert "module soc(" in text and "mem_req__valid" in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["verilog", "--config", TINY, "--unit", "backing_memory"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid choice: 'backing_memory'" in err[0]
    assert all(repr(name) in err[0] for name in UNITS)
