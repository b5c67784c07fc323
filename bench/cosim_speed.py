"""Cosimulation speed: Verilator + cocotb against Amaranth's Python simulator, same stimulus.

For each config: the router routes N random tokens of a quantised random layer (weights
loaded through its write port, no stalls) in both simulators; prints simulated cycles per
wall-second of each and their ratio. Both runs are checked against the golden model.

    .venv/bin/python bench/cosim_speed.py [--tokens 32] [configs ...]
"""

import argparse
import sys

from moeforge import AccelConfig
from moeforge.hls_models.hf_random import make_hf_input
from moeforge.rtl.routing.router import Router, router_image
from moeforge.sim.benches.router import amaranth_route
from moeforge.sim.unit_sim import random_layer, run_unit


def amaranth_router_run(cfg, q, tokens, seed):
    """Route `tokens` in Amaranth's simulator (the router bench's `amaranth_route`, no
    stalls); returns (routes, cycles, wall seconds)."""
    dut = Router.from_config(cfg, lanes=cfg.mac_rows)
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed)).tolist()
    run = amaranth_route(dut, router_image(q, lanes=dut.lanes), x)
    return run.routes, run.cycles, run.wall_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("configs", nargs="*", default=["configs/tiny.toml", "configs/mixtral.toml",
                                                   "configs/deepseek_v3.toml"])
    args = ap.parse_args(argv)
    print("| config | unit | tokens | Verilator+cocotb cycles/s | Amaranth sim cycles/s | ratio |")
    print("|---|---|---|---|---|---|")
    for path in args.configs:
        cfg = AccelConfig.from_toml(path)
        run_unit(cfg, "router", tokens=args.tokens, seed=1, stall=0.0)  # build (cached afterwards)
        v = run_unit(cfg, "router", tokens=args.tokens, seed=1, stall=0.0)
        q = random_layer(cfg, 1)
        routes, cycles, wall = amaranth_router_run(cfg, q, args.tokens, seed=1)
        r = q.route_int(q.quantize_input(make_hf_input(cfg, args.tokens, seed=1)))
        want = r.beat_rows(keep=bool(cfg.skip_threshold))
        if routes != want or not v["passed"]:
            print(f"{path}: MISMATCH (amaranth {routes == want}, verilator {v['passed']})")
            return 1
        ver = v["sim_cycles_per_s"]            # inside the simulator (its start excluded)
        ama = cycles / wall
        print(f"| `{path}` | router | {args.tokens} | {ver:,.0f} ({v['wall_s']:.1f} s with start-up) "
              f"| {ama:,.0f} | {ver / ama:.1f}× |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
