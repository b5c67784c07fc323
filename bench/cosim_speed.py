"""Cosimulation speed: Verilator + cocotb against Amaranth's Python simulator, same stimulus.

For each config: the router routes N random tokens of a quantised random layer (weights
loaded through its write port, no stalls) in both simulators; prints simulated cycles per
wall-second of each and their ratio. Both runs are checked against the golden model.

    .venv/bin/python bench/cosim_speed.py [--tokens 32] [configs ...]
"""

import argparse
import sys
import time

from moeforge import AccelConfig
from moeforge.hls_models.hf_random import make_hf_input
from moeforge.sim.unit_sim import random_layer, run_unit


def amaranth_router_run(cfg, q, tokens, seed):
    """Route `tokens` in Amaranth's simulator; returns (routes, cycles, wall seconds)."""
    from amaranth.sim import Simulator

    from moeforge.rtl.routing.router import Router, router_image
    from moeforge.sim.stream import pack_layout, unpack_layout
    dut = Router.from_config(cfg, lanes=cfg.mac_rows)
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed)).tolist()
    S, lanes = dut.slices, dut.lanes
    slices = [pack_layout(dut.token_layout, {"data": tok[s * lanes:(s + 1) * lanes], "last": int(s == S - 1)})
              for tok in x for s in range(S)]
    image = router_image(q, lanes=lanes)
    routes, cycles = [], [0]

    async def bench(ctx):
        for addr, word in image:
            ctx.set(dut.wr.addr, addr)
            ctx.set(dut.wr.data, word)
            ctx.set(dut.wr.en, 1)
            await ctx.tick()
        ctx.set(dut.wr.en, 0)
        ctx.set(dut.o_route.ready, 1)
        sent = 0
        while len(routes) < tokens:
            if sent < len(slices):
                ctx.set(dut.i_tokens.valid, 1)
                ctx.set(dut.i_tokens.payload.as_value(), slices[sent])
            took = ctx.get(dut.i_tokens.valid) and ctx.get(dut.i_tokens.ready)
            if ctx.get(dut.o_route.valid):
                v = unpack_layout(dut.route_layout, ctx.get(dut.o_route.payload.as_value()))
                routes.append(v["experts"] + v["gates"] + [v["shared_gate"]])
            await ctx.tick()
            cycles[0] += 1
            if took:
                sent += 1
                if sent == len(slices):
                    ctx.set(dut.i_tokens.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    t0 = time.perf_counter()
    sim.run()
    return routes, cycles[0], time.perf_counter() - t0


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
        want = [r.indices[t].tolist() + r.gates[t].tolist() + [int(r.shared_gate[t])] for t in range(args.tokens)]
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
