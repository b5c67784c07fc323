"""`moeforge build`: from a config to a bitstream for a board, with a report.

Steps: elaborate the board top (`BoardTop`), check its estimated needs against the board's
FPGA (a refusal here costs seconds, not the minutes of synthesis), synthesise with Yosys,
place and route with nextpnr, pack the bitstream. Every tool is the YoWASP one from PyPI.

``DIR`` gets ``top.bit`` (``.bin`` on iCE40), ``report.json``, ``report.txt`` and ``logs/`` (one
log per tool); the intermediate files (the netlist, the constraints) stay in ``DIR/work``. The
bitstream and the reports replace earlier ones only when complete, so a failed or interrupted
build leaves an earlier build's bitstream as it was. Synthesis flattens the design (Yosys
optimises across units; a hierarchical synthesis of the whole SoC also made YoWASP's ABC9 fail
after some twenty modules); the per-unit breakdown comes from the flattened netlist's names,
which keep each cell's unit.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from moeforge.config import AccelConfig
from moeforge.errors import MoeforgeError
from moeforge.outputs import atomic_write

from .boards import Board
from .report import ReportError, format_table, parse_nextpnr_report, unit_usage
from .resources import check_fits, estimate_component
from .toolchain import NEXTPNR_PACKAGES, PLACERS, ROUTERS, run_tool

__all__ = ["build", "check_build_dir", "TimingMissed", "prepare_top", "BuildTimeouts", "make_report"]


class TimingMissed(MoeforgeError):
    """Place and route did not reach the config's clock."""

    exit_code = 1


class BuildTimeouts:
    """Seconds each tool may take before the build gives up on it (a layer's synthesis takes
    minutes on two cores; these only keep a stuck tool from hanging the build forever)."""

    synthesis = 6 * 3600.0
    place_and_route = 6 * 3600.0
    bitstream = 1800.0


def check_build_dir(path: str | os.PathLike) -> Path:
    """The output folder `path`, created if missing (its parent must exist); `MoeforgeError`
    naming ``-o`` if it is a file or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MoeforgeError(f"-o {path}: is a file, not a folder")
    if not p.exists():
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise MoeforgeError(f"-o {path}: folder {parent} does not exist")
        try:
            p.mkdir()
        except OSError as exc:
            raise MoeforgeError(f"-o {path}: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise MoeforgeError(f"-o {path}: folder is not writable")
    return p


def prepare_top(board: Board, cfg: AccelConfig, *, out=None):
    """``(top, estimate, seconds)``: the board top, elaborated for the resource check, and the
    check passed.

    Raises
    ------
    ResourceShortfall
        Naming every resource the config needs more of than the board has.
    NoOnChipStore, BaudError, MoeforgeError
        No store, no baud rate or PLL setting for the clock, a config the store refuses.
    """
    from .top import BoardTop, SoCWithStore, pick_baud, plan_pll, store_budget
    out = sys.stderr if out is None else out
    t0 = time.monotonic()
    pll = plan_pll(board.fpga.family, board.clock_hz, cfg.clock_mhz * 1e6)
    baud = pick_baud(pll.fout, board.max_baud)
    try:
        design = SoCWithStore(cfg, clock_hz=pll.fout, baud=baud, budget_bits=store_budget(board))
    except ValueError as exc:
        if isinstance(exc, MoeforgeError):
            raise
        raise MoeforgeError(f"config {cfg.name}: {exc}") from None
    print(f"elaborating {cfg.name} for {board.name} (PLL {pll.fout / 1e6:g} MHz from "
          f"{pll.fin / 1e6:g} MHz, UART {baud} baud) ...", file=out, flush=True)
    estimate = estimate_component(design, board.fpga, name="design")
    check_fits(estimate, board, f"config {cfg.name}")
    top = BoardTop(board, cfg, baud=baud, design=design, pll=pll)
    return top, estimate, time.monotonic() - t0


# Run after reading the design, before synthesis. Yosys 0.70's ABC9 reintegration
# (abc_ops_reintegrate) asserts on wires whose names hold brackets -- the names Amaranth gives
# array elements, such as the dispatch table's ``counts[3]`` -- ("Assert `count_id(wire->name)
# == 0' failed", or "GetSize(conn.first) == GetSize(conn.second)" on the whole SoC), depending on
# the config. Such wires lose their names (they become internal); cells keep theirs.
SCRIPT_AFTER_READ = "rename -hide w:*[*"


def _nextpnr_args(board: Board, platform, router: str, seed: int, placer: str) -> list[str]:
    f = board.fpga
    pkg = NEXTPNR_PACKAGES[platform.package]
    args = [f.nextpnr_device, "--package", pkg, "--json", "top.json", "--report", "report.json",
            "--timing-allow-fail", "--seed", str(seed), "--router", router, "--placer", placer]
    if f.family == "ecp5":
        return args + ["--speed", str(platform.speed), "--lpf", "top.lpf", "--textcfg", "top.config"]
    return args + ["--pcf", "top.pcf", "--asc", "top.asc"]


def build(board: Board, cfg: AccelConfig, out_dir: str | os.PathLike, *, config_name: str,
          allow_timing_fail: bool = False, out=None,
          progress_every: float = 30.0, prepared=None, router: str = ROUTERS[0],
          seed: int = 1, placer: str = PLACERS[0]) -> dict:
    """Build `cfg` for `board` into `out_dir`; return the report (also written there).

    `router` is nextpnr's router, one of `ROUTERS`; `seed` its placer's seed (placement, and with
    it congestion and the clock reached, changes with the seed); `placer` its placer, one of
    `PLACERS`.

    Raises
    ------
    ResourceShortfall, NoOnChipStore, BaudError
        Before any tool runs (see `prepare_top`).
    ToolError
        A tool failed or ran out of time (the message names the step and its log).
    TimingMissed
        The achieved clock is below the config's and `allow_timing_fail` is not set: the
        reports are written, the bitstream is not.
    """
    out = sys.stderr if out is None else out
    if router not in ROUTERS:
        raise MoeforgeError(f"router {router!r}: not one of {', '.join(ROUTERS)}")
    if placer not in PLACERS:
        raise MoeforgeError(f"placer {placer!r}: not one of {', '.join(PLACERS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 1:
        raise MoeforgeError(f"seed {seed!r}: must be a positive integer")
    out_dir = check_build_dir(out_dir)
    top, estimate, t_elab = prepared or prepare_top(board, cfg, out=out)
    steps = {"elaborate": t_elab}
    work, logs = out_dir / "work", out_dir / "logs"
    for d in (work, logs):
        d.mkdir(exist_ok=True)
    platform = board.make_platform()
    synth_opts = "-dsp" if board.fpga.family == "ice40" else ""
    t0 = time.monotonic()
    plan = platform.build(top, name="top", do_build=False, synth_opts=synth_opts,
                          script_after_read=SCRIPT_AFTER_READ)
    for name, content in plan.files.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(work / name, mode) as f:
            f.write(content)
    for stale in ("yosys.log", "top.json", "report.json", "top.config", "top.asc", "top.bit", "top.bin"):
        (work / stale).unlink(missing_ok=True)
    steps["elaborate"] += time.monotonic() - t0

    steps["synthesis"] = run_tool("yosys", ["-l", "yosys.log", "top.ys"], cwd=work,
                                  log=logs / "synthesis.log", own_log="yosys.log",
                                  step="synthesis (yosys)", timeout=BuildTimeouts.synthesis,
                                  progress_every=progress_every, out=out)
    pnr = "nextpnr-ecp5" if board.fpga.family == "ecp5" else "nextpnr-ice40"
    steps["place_and_route"] = run_tool(pnr, _nextpnr_args(board, platform, router, seed, placer), cwd=work,
                                        log=logs / "nextpnr.log",
                                        step=f"place and route ({pnr})",
                                        timeout=BuildTimeouts.place_and_route,
                                        progress_every=progress_every, out=out)
    report = make_report(board, cfg, top, estimate, work, config_name=config_name)
    report["steps"] = {k: round(v, 1) for k, v in steps.items()}
    report["router"] = router
    report["seed"] = seed
    report["placer"] = placer
    t = report["timing"]
    if t["met"] or allow_timing_fail:
        suffix = board.bitstream_suffix
        if board.fpga.family == "ecp5":
            args = ["--compress", "--input", "top.config", "--bit", f"top{suffix}"]
            packer = "ecppack"
        else:
            args = ["top.asc", f"top{suffix}"]
            packer = "icepack"
        report["steps"]["bitstream"] = round(run_tool(
            packer, args, cwd=work, log=logs / f"{packer}.log", step=f"bitstream ({packer})",
            timeout=BuildTimeouts.bitstream, progress_every=progress_every, out=out), 1)
        bit = out_dir / f"top{suffix}"
        atomic_write(bit, lambda tmp: shutil.copyfile(work / f"top{suffix}", tmp), suffix=suffix)
        report["bitstream"] = str(bit)
    else:
        report["bitstream"] = None
    atomic_write(out_dir / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out_dir / "report.txt", lambda tmp: tmp.write_text(format_table(report)))
    if not t["met"] and not allow_timing_fail:
        cp = t.get("critical_path") or {}
        raise TimingMissed(
            f"timing missed on {board.name}: {t['achieved_mhz']:.2f} MHz achieved, "
            f"{t['target_mhz']:.2f} MHz wanted (critical path {cp.get('start', '?')} -> "
            f"{cp.get('end', '?')}); no bitstream written (--allow-timing-fail writes it anyway); "
            f"report in {out_dir / 'report.txt'}")
    return report


def _pct_error(estimate: float, real: float) -> float | None:
    return None if real == 0 else round(100.0 * (estimate - real) / real, 1)


def make_report(board: Board, cfg: AccelConfig, top, estimate, work: Path, *,
                config_name: str) -> dict:
    """The build report from the tools' outputs in `work` (Yosys' netlist ``top.json``,
    nextpnr's ``report.json``); the units are the design's modules as the estimate saw them."""
    try:
        netlist = json.loads((work / "top.json").read_text())
        pnr = json.loads((work / "report.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"a tool's report is missing or unreadable in {work}: {exc}") from None
    timing = parse_nextpnr_report(pnr)
    paths = ["design"] + [f"design.{p}" for p in estimate.modules if p != "(top)"]
    own, inclusive = unit_usage(netlist, "top", paths)
    util = timing.utilisation
    fam = board.fpga.family
    lut_bel, ff_bel = ("TRELLIS_COMB", "TRELLIS_FF") if fam == "ecp5" else ("ICESTORM_LC", "ICESTORM_LC")
    mult_bel = "MULT18X18D" if fam == "ecp5" else "ICESTORM_DSP"
    bram_bel = "DP16KD" if fam == "ecp5" else "ICESTORM_RAM"

    def res(bel):
        used, avail = util.get(bel, (0, 0))
        return {"used": used, "available": avail}
    whole = inclusive[""]
    resources = {"luts": res(lut_bel), "ffs": {"used": whole.ffs, "available": board.fpga.ffs},
                 "multipliers": res(mult_bel), "bram_blocks": res(bram_bel),
                 "lutram_luts": whole.lutram_luts}
    if fam == "ecp5":
        resources["ffs"] = res(ff_bel)
    target = top.pll.fout / 1e6
    clocks = {c: v for c, v in timing.fmax.items()}
    sync = min(clocks, key=lambda c: abs(clocks[c][1] - target)) if clocks else None
    if sync is None:
        raise ReportError("nextpnr reported no clock for the design")
    achieved = clocks[sync][0]
    cp = timing.path_of(sync)
    design = "design"
    units = {}
    for p, u in sorted(own.items()):
        row = u.as_dict()
        est_path = "(top)" if p == design else p[len(design) + 1:] if p.startswith(design + ".") else None
        if est_path in estimate.modules:
            row["estimate"] = estimate.modules[est_path].as_dict()
        units[p or "(board: PLL, reset, LEDs, pins)"] = row
    est = estimate.total.as_dict()
    # The estimate covers the design (SoC and store), not the board's glue (PLL, LEDs, reset).
    real = inclusive.get(design, whole)
    real_of = {"luts": real.luts, "ffs": real.ffs, "multipliers": real.multipliers,
               "bram_blocks": real.bram_blocks}
    return {
        "board": board.name, "fpga": board.fpga.name, "config": config_name,
        "config_name": cfg.name, "config_hash": cfg.content_hash(),
        "clock": {"config_mhz": cfg.clock_mhz, "pll_mhz": round(target, 4),
                  "pll": top.pll.params, "board_mhz": top.pll.fin / 1e6},
        "uart_baud": top.baud,
        "resources": resources,
        "units": units,
        "timing": {"clock": sync, "achieved_mhz": round(achieved, 2), "target_mhz": round(target, 2),
                   "met": achieved >= target,
                   "critical_path": None if cp is None else
                   {"start": cp.start, "end": cp.end, "delay_ns": round(cp.delay_ns, 3),
                    "steps": cp.steps}},
        "estimate": {"total": est,
                     "measured": real_of,
                     "error_pct": {k: _pct_error(est[k], v) for k, v in real_of.items()}},
    }

