"""``moeforge sim``: a unit or the whole layer in Verilator against the golden model.

The verdict printed is the run's `moeforge.sim.scoreboard.verdict`: "bit-exact" only when the
bench compared every token and element sent and none differed. A run whose comparison is
missing or incomplete ends in an error naming what is missing (exit 1: not the user's input).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from fractions import Fraction

from .config import AccelConfig
from .errors import MoeforgeError
from .outputs import check_output

__all__ = ["cmd_sim", "sim_layer", "bytes_per_cycle", "terminate_as_interrupt", "NotVerified"]


class NotVerified(MoeforgeError):
    """The simulation ran but did not compare what it sent: no verdict can be given."""

    exit_code = 1


def bytes_per_cycle(text: str) -> Fraction:
    """An argparse type: a positive number of bytes per cycle, ``4``, ``2.5`` or ``1/2``, at
    most 1024 (a backing memory wider than any array)."""
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        value = None
    if value is None or not 0 < value <= 1024:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes per cycle in (0, 1024] "
                                         f"such as 4 or 1/2, not {text!r}")
    return value


bytes_per_cycle.__name__ = "bytes per cycle"


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM ends the run as Ctrl-C does (`KeyboardInterrupt`): the
    simulation is stopped and the run's temporary folder removed, instead of Python dying
    where it stands and leaving them behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load_config(path: str) -> AccelConfig:
    return AccelConfig.from_toml(path)


def _compared(r: dict) -> str:
    c, e = r.get("compared"), r["expected"]
    if c is None:
        return "nothing compared"
    return f"{c['tokens']} of {e['tokens']} outputs ({c['elements']} of {e['elements']} elements) compared"


def _verdict(r: dict) -> str:
    """"bit-exact"; "MISMATCH" or "FAILED" (everything compared: some elements differ, or the
    run failed otherwise); "NOT VERIFIED" (not everything sent was compared)."""
    if r["passed"]:
        return "bit-exact"
    if r.get("compared") is not None and r["compared"] == r["expected"]:
        return "MISMATCH" if r["mismatches"] else "FAILED"
    return "NOT VERIFIED"


def _finish(r: dict, what: str, verdict: str) -> int:
    """0 if the run passed, 1 if it compared everything and failed (why, on stderr);
    `NotVerified` (exit 1, one line naming what is missing) if it did not compare what it sent."""
    if verdict == "NOT VERIFIED":
        raise NotVerified(f"{what}: not verified: {'; '.join(r['problems'])}")
    if not r["passed"]:
        print(f"moeforge: {what}: {verdict}: {'; '.join(r['problems'])}", file=sys.stderr)
        return 1
    return 0


def _report(r: dict, what: str, line: str, details: list[str], as_json: bool) -> int:
    verdict = _verdict(r)
    if as_json:
        print(json.dumps(r, indent=2))
        return _finish(r, what, verdict)
    print(line.format(verdict=verdict))
    for extra in details:
        print(extra)
    if "failure" in r:
        print(r["failure"], file=sys.stderr)
    if "waves" in r:
        print(f"waves: {r['waves']} (folder kept: {r['workdir']})")
    return _finish(r, what, verdict)


def cmd_sim(args) -> int:
    from moeforge.sim.unit_sim import run_unit
    if args.trace is not None and args.unit is not None:
        raise MoeforgeError("--trace records the expert cache's accesses of a whole-layer run; "
                            "drop --unit or --trace")
    cfg = _load_config(args.config)
    if args.unit is None:
        return sim_layer(cfg, args)
    with terminate_as_interrupt():
        r = run_unit(cfg, args.unit, tokens=args.tokens, seed=args.seed, waves=args.waves,
                     stall=args.stall)
    extra = f", MAC utilisation {r['mac_util'] * 100:.1f}%" if "mac_util" in r else ""
    speed = f", {r['sim_cycles_per_s']:.0f} simulated cycles/s" if r.get("sim_cycles_per_s") else ""
    cycles = f", {r['cycles']} cycles" if r.get("cycles") is not None else ""
    mism = f", {r['mismatches']} mismatches" if r.get("mismatches") is not None else ""
    line = (f"{r['unit']} @ {r['config']}: {{verdict}} — {r['tokens']} tokens: {_compared(r)}"
            f"{mism}{cycles}{extra}{speed}")
    return _report(r, f"{r['unit']} @ {r['config']}", line, [], args.json)


def sim_layer(cfg, args) -> int:
    """`moeforge sim` without --unit: the whole accelerator against the golden model."""
    from moeforge.sim.layer_sim import run_layer
    trace = getattr(args, "trace", None)
    if trace is not None:
        check_output(trace, "--trace")
    with terminate_as_interrupt():
        r = run_layer(cfg, tokens=args.tokens, seed=args.seed, latency=args.mem_latency,
                      bytes_per_cycle=args.mem_bandwidth, stall=args.stall, waves=args.waves,
                      trace=trace)
    mism = f", {r['mismatches']} mismatches" if r.get("mismatches") is not None else ""
    line = (f"layer @ {r['config']}: {{verdict}} — {r['tokens']} tokens in {r['batches']} batches: "
            f"{_compared(r)}{mism}")
    lines = []
    if "cycles" in r:
        lines.append(f"  cycles {r['cycles']} (bound {r['cycles_bound']}, {r['cycles_over_bound']:.2f}×), "
                     f"MAC utilisation {r['mac_util'] * 100:.1f}%")
        lines.append(f"  expert cache: {r['hits']} hits, {r['misses']} misses, {r['bytes_fetched']} bytes "
                     f"fetched, {r['prefetch_hits']} prefetch hits, {r['stall_cycles']} stall cycles; "
                     f"Python cache model {'agrees' if r['cache_model_match'] else 'DISAGREES'}")
    if r.get("sim_cycles_per_s"):
        lines.append(f"  {r['sim_cycles_per_s']:.0f} simulated cycles/s")
    return _report(r, f"layer @ {r['config']}", line, lines, args.json)
