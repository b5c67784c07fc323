"""Reading the tools' outputs: Yosys' netlist (per unit) and nextpnr's ``--report``.

`unit_usage` counts the cells of each unit in Yosys' flattened netlist (its own cells, and
with the units below it); `parse_nextpnr_report` takes nextpnr's JSON report apart into
utilisation, achieved clock and the critical path's start and end. Both are tested on outputs
saved from real runs (``tests/fpga_boards/data``).
"""

from __future__ import annotations

from dataclasses import dataclass

from moeforge.errors import MoeforgeError

from .usage import Usage

__all__ = ["unit_usage", "parse_nextpnr_report", "Timing", "CriticalPath",
           "ReportError", "format_table"]


class ReportError(MoeforgeError):
    """A tool's report is missing or not what it should be."""

    exit_code = 1


# Mapped cell types → the resource they use, per family. A CCU2C is two LUT4s (a carry pair);
# a TRELLIS_DPR16X4 is a 16×4 LUT RAM (nextpnr packs it into 4 LUTs of a RAM slice).
_LUTS = {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 4, "SB_LUT4": 1}
_LUTRAM = {"TRELLIS_DPR16X4": 4}
_FF_PREFIX = ("TRELLIS_FF", "SB_DFF")
_MULT = {"MULT18X18D", "SB_MAC16"}
_BRAM = {"DP16KD", "PDPW16KD", "SB_RAM40_4K", "SB_RAM40_4KNR", "SB_RAM40_4KNW", "SB_RAM40_4KNRNW"}


def _usage_of(cells: dict[str, int], modules: set[str]) -> Usage:
    u = Usage(bram_bits=None)
    for typ, n in cells.items():
        if typ in modules or f"\\{typ}" in modules:
            continue                                    # a submodule instance
        typ = typ.rsplit("\\", 1)[-1]                   # "$paramod$<hash>\\TRELLIS_FF"
        if typ in _LUTS:
            u.luts += _LUTS[typ] * n
            u.lutram_luts += _LUTRAM.get(typ, 0) * n
        elif typ.startswith(_FF_PREFIX):
            u.ffs += n
        elif typ in _MULT:
            u.multipliers += n
        elif typ in _BRAM:
            u.bram_blocks += n
    return u


def unit_usage(netlist: dict, top: str, paths) -> tuple[dict[str, Usage], dict[str, Usage]]:
    """``(own, inclusive)``: the usage of each unit of a flattened netlist (Yosys
    ``write_json``), keyed by its path below `top` (``"design.soc.accel.core.router"``; ``""`` for
    the cells of no unit in `paths`): its own cells, and with every unit below it.

    Flattening keeps the hierarchy in the names (a cell of the router is called
    ``design.soc.accel.core.router.<name>``), so each cell goes to the longest of `paths` its name
    starts with.

    Raises
    ------
    ReportError
        If `top` is not in the netlist.
    """
    mods = netlist.get("modules")
    if not isinstance(mods, dict) or top not in mods:
        raise ReportError(f"module {top!r} is not in the netlist")
    ordered = sorted(set(paths), key=len, reverse=True)
    cells: dict[str, dict[str, int]] = {p: {} for p in ordered}
    cells[""] = {}
    for name, cell in mods[top].get("cells", {}).items():
        name = name.lstrip("\\")
        unit = next((p for p in ordered if name.startswith(p + ".")), "")
        typ = cell.get("type", "?")
        cells[unit][typ] = cells[unit].get(typ, 0) + 1
    own = {p: _usage_of(c, set()) for p, c in cells.items()}
    inclusive = {}
    for path in own:
        total = Usage(bram_bits=None)
        for p, u in own.items():
            if path == "" or p == path or p.startswith(path + "."):
                total.add(u)
        inclusive[path] = total
    return own, inclusive


@dataclass
class CriticalPath:
    clock: str
    start: str          # "cell.port" where the path starts
    end: str
    delay_ns: float
    steps: int


@dataclass
class Timing:
    """nextpnr's post-route figures: per clock the achieved and constrained MHz."""

    fmax: dict[str, tuple[float, float]]
    critical_paths: list[CriticalPath]
    utilisation: dict[str, tuple[int, int]]      # bel type → (used, available)

    def worst(self) -> tuple[str, float, float]:
        """``(clock, achieved, constraint)`` of the clock with the least slack ratio."""
        if not self.fmax:
            raise ReportError("nextpnr reported no clock")
        return min(((c, a, t) for c, (a, t) in self.fmax.items()), key=lambda x: x[1] / x[2])

    def path_of(self, clock: str) -> CriticalPath | None:
        same = [p for p in self.critical_paths if p.clock == clock]
        return max(same, key=lambda p: p.delay_ns) if same else None


def _endpoint(step: dict, key: str) -> str:
    end = step.get(key, {})
    return f"{end.get('cell', '?')}.{end.get('port', '?')}"


def parse_nextpnr_report(report: dict) -> Timing:
    """Take a ``nextpnr --report`` JSON apart (see `Timing`).

    Raises
    ------
    ReportError
        If a part is missing or malformed.
    """
    try:
        fmax = {clk: (float(v["achieved"]), float(v["constraint"]))
                for clk, v in report["fmax"].items()}
        util = {bel: (int(v["used"]), int(v["available"]))
                for bel, v in report["utilization"].items()}
        paths = []
        for cp in report.get("critical_paths", []):
            steps = cp.get("path", [])
            if not steps:
                continue
            clock = cp.get("to", "").split(" ", 1)[-1] or cp.get("from", "").split(" ", 1)[-1]
            paths.append(CriticalPath(clock=clock, start=_endpoint(steps[0], "from"),
                                      end=_endpoint(steps[-1], "to"),
                                      delay_ns=sum(float(s.get("delay", 0)) for s in steps),
                                      steps=len(steps)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReportError(f"the nextpnr report is malformed ({type(exc).__name__}: {exc})") from None
    return Timing(fmax, paths, util)


def format_table(report: dict) -> str:
    """The build report (`moeforge build`'s ``report.json``) as a text table."""
    lines = [f"moeforge build: {report['config']} on {report['board']} ({report['fpga']})", ""]
    lines.append(f"{'resource':14} {'used':>8} {'available':>10} {'share':>7} {'estimate':>9}")
    for key, label in (("luts", "LUTs"), ("ffs", "flip-flops"), ("multipliers", "multipliers"),
                       ("bram_blocks", "block RAMs")):
        r = report["resources"][key]
        est = report["estimate"]["total"].get(key)
        lines.append(f"{label:14} {r['used']:>8} {r['available']:>10} "
                     f"{100 * r['used'] / max(1, r['available']):>6.1f}% {est:>9}")
    lines.append(f"  (LUTs include {report['resources']['lutram_luts']} used as RAM; the estimate, made "
                 f"before any tool ran, is of the design without the board's PLL, reset and LEDs)")
    lines += ["", f"{'unit (its own cells)':44} {'LUTs':>7} {'FFs':>7} {'mult':>5} {'BRAM':>5} "
                  f"{'est. LUTs':>9}"]
    for path, u in report["units"].items():
        est = u.get("estimate", {}).get("luts", "")
        lines.append(f"{path:44} {u['luts']:>7} {u['ffs']:>7} {u['multipliers']:>5} "
                     f"{u['bram_blocks']:>5} {est:>9}")
    t = report["timing"]
    lines += ["", f"clock: {t['achieved_mhz']:.2f} MHz achieved, {t['target_mhz']:.2f} MHz "
                  f"wanted: {'met' if t['met'] else 'MISSED'}"]
    if t.get("critical_path"):
        cp = t["critical_path"]
        lines.append(f"critical path: {cp['start']} -> {cp['end']} ({cp['delay_ns']:.2f} ns, "
                     f"{cp['steps']} steps)")
    lines += ["", "step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["steps"].items())]
    return "\n".join(lines) + "\n"
