"""Every registered unit at every example config: Verilator -Wall lint and Yosys generic synth.

Lint waivers: `moeforge.sim.toolchain.AMARANTH_LINT_WAIVERS` and `HIERARCHY_WAIVERS`, each
justified there; `lint_problems` excuses only unused combinational alias wires, never state.
"""

import glob

import pytest

from moeforge import AccelConfig
from moeforge.fpga_boards.yosys import synth_check
from moeforge.rtl.units import UNITS, unit_verilog
from moeforge.sim.toolchain import lint_problems

CONFIGS = sorted(glob.glob("configs/*.toml"))


@pytest.mark.verilator
@pytest.mark.synthesis
@pytest.mark.parametrize("unit", sorted(UNITS))
@pytest.mark.parametrize("config", CONFIGS)
def test_lint_and_synth(config, unit):
    cfg = AccelConfig.from_toml(config)
    text = unit_verilog(cfg, unit)
    problems = lint_problems(text, unit)
    assert problems == [], f"{unit} @ {config}: " + "; ".join(problems[:5])
    report = synth_check(text, unit)
    assert report.cells > 0


def test_synth_check_catches_a_combinational_loop():
    from moeforge.fpga_boards.yosys import SynthError
    with pytest.raises(SynthError, match="check"):
        synth_check("module top(input a, output b); assign b = b ^ a; endmodule", "top")
