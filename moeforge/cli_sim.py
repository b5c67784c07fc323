"""``moeforge sim``: a unit or the whole layer in Verilator against the golden model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import AccelConfig
from .errors import MoeforgeError

__all__ = ["cmd_sim", "sim_layer"]


def _load_config(path: str) -> AccelConfig:
    return AccelConfig.from_toml(path)


def cmd_sim(args) -> int:
    from moeforge.sim.unit_sim import run_unit
    cfg = _load_config(args.config)
    if args.unit is None:
        return sim_layer(cfg, args)
    if args.trace is not None:
        raise MoeforgeError("--trace records the expert cache's accesses of a whole-layer run; "
                            "drop --unit or --trace")
    r = run_unit(cfg, args.unit, tokens=args.tokens, seed=args.seed, waves=args.waves, stall=args.stall)
    if not args.waves:
        import shutil
        shutil.rmtree(r.pop("workdir"), ignore_errors=True)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        verdict = "bit-exact" if r["passed"] and r["mismatches"] == 0 else "MISMATCH"
        extra = f", MAC utilisation {r['mac_util'] * 100:.1f}%" if "mac_util" in r else ""
        print(f"{r['unit']} @ {r['config']}: {verdict} — {r['tokens']} tokens, {r['cycles']} cycles, "
              f"{r['mismatches']} mismatches{extra}, {r['sim_cycles_per_s']:.0f} simulated cycles/s")
        if "failure" in r:
            print(r["failure"], file=sys.stderr)
        if "waves" in r:
            print(f"waves: {r['waves']}")
    return 0 if r["passed"] and r["mismatches"] == 0 else 1


def sim_layer(cfg, args) -> int:
    """`moeforge sim` without --unit: the whole accelerator against the golden model."""
    from fractions import Fraction

    from moeforge.sim.layer_sim import run_layer
    bandwidth = None
    if args.mem_bandwidth is not None:
        try:
            bandwidth = Fraction(args.mem_bandwidth)
        except (ValueError, ZeroDivisionError):
            bandwidth = None
        if bandwidth is None or bandwidth <= 0:
            raise MoeforgeError(f"--mem-bandwidth must be a positive number of bytes per cycle "
                                f"(e.g. 4 or 1/2), not {args.mem_bandwidth!r}")
    if args.mem_latency is not None and not 1 <= args.mem_latency <= 1024:
        raise MoeforgeError(f"--mem-latency must be in [1, 1024] cycles, not {args.mem_latency}")
    if args.trace is not None and not Path(args.trace).resolve().parent.is_dir():
        raise MoeforgeError(f"cannot write {args.trace}: its folder does not exist")
    r = run_layer(cfg, tokens=args.tokens, seed=args.seed, latency=args.mem_latency,
                  bytes_per_cycle=bandwidth, stall=args.stall, waves=args.waves, trace=args.trace)
    if not args.waves:
        import shutil
        shutil.rmtree(r.pop("workdir"), ignore_errors=True)
    ok = r["passed"] and r["mismatches"] == 0
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        verdict = "bit-exact" if ok else "MISMATCH"
        print(f"layer @ {r['config']}: {verdict} — {r['tokens']} tokens in {r['batches']} batches, "
              f"{r['mismatches']} mismatches")
        if "cycles" in r:
            print(f"  cycles {r['cycles']} (bound {r['cycles_bound']}, {r['cycles_over_bound']:.2f}×), "
                  f"MAC utilisation {r['mac_util'] * 100:.1f}%")
            print(f"  expert cache: {r['hits']} hits, {r['misses']} misses, {r['bytes_fetched']} bytes "
                  f"fetched, {r['prefetch_hits']} prefetch hits, {r['stall_cycles']} stall cycles; "
                  f"Python cache model {'agrees' if r['cache_model_match'] else 'DISAGREES'}")
        if r.get("sim_cycles_per_s"):
            print(f"  {r['sim_cycles_per_s']:.0f} simulated cycles/s")
        if "failure" in r:
            print(r["failure"], file=sys.stderr)
        if "waves" in r:
            print(f"waves: {r['waves']}")
    return 0 if ok else 1
