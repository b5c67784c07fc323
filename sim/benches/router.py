"""cocotb bench of the Router, run by tests/rtl/routing/test_router.py and `moeforge sim --unit router`.

``MOEFORGE_TEST_PARAMS`` names a JSON file written by the pytest side from the same `Router` it
exported:

``lanes``, ``slices``, ``n_experts``, ``top_k``, ``skip``, ``cycles_per_token``
    the unit's parameters (``skip``: expert skipping, the beat carries the keep mask);
``i_tokens``, ``o_route``, ``wr_addr``, ``wr_data``, ``wr_en``
    stream prefixes and port names, from the component's signature;
``in_stall``, ``out_stall``, ``wr_stall``
    stall probabilities: ``i_tokens`` valid, ``o_route`` ready, idle cycles between writes;
``batches``
    each ``{name, image: [[addr, data]...], tokens: [[d_model ints]...],
    expected: [[experts..., gates..., shared_gate(, keep)] per token]}`` from
    ``QuantizedMoELayer.route_int`` (`RouteResult.beat_rows`); a batch loads its image through the write port, then
    streams its tokens;
``nonce``, ``summary`` (optional)
    ``router_batches`` writes what it compared there (`common.write_summary`), with
    ``cycles`` and ``wall_s``: `moeforge sim --unit router` computes its verdict from it.

`amaranth_route` runs the same unit in Amaranth's simulator (the tests' variants no build
covers, and bench/cosim_speed.py).
"""

import random
import time
from dataclasses import dataclass

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from moeforge.rtl.routing.router import route_layout, token_layout
from moeforge.sim.benches.common import amaranth_write, load_params, token_beats, write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamMonitor, StreamSink, unpack_layout

P = load_params()


def token_slices(tokens):
    """Packed i_tokens payloads: each token as `slices` beats, `last` on its final one."""
    return token_beats(token_layout(lanes=P["lanes"], input_bits=P["input_bits"]), tokens, P["lanes"],
                       P["slices"])


def beat_values(v: dict) -> list:
    """[experts..., gates..., shared_gate] (and the keep mask, with skipping) of one unpacked
    o_route beat: `RouteResult.beat_rows`'s order."""
    return v["experts"] + v["gates"] + [v["shared_gate"]] + ([v["keep"]] if "keep" in v else [])


def route_values(payload):
    """`beat_values` of one packed o_route beat."""
    layout = route_layout(n_experts=P["n_experts"], top_k=P["top_k"], skip=P["skip"])
    return beat_values(unpack_layout(layout, payload))


# ---------------------------------------------------------------- Amaranth's simulator

@dataclass(frozen=True)
class AmaranthRoutes:
    """What `amaranth_route` saw: each token's ``[experts..., gates..., shared_gate]``, the
    cycles after the image write, and the wall time of the whole simulation."""

    routes: list
    cycles: int
    wall_s: float


def amaranth_route(dut, image, tokens, *, seed: int = 0, stall: float = 0.0,
                   max_cycles: int = 200_000) -> AmaranthRoutes:
    """Run the `Router` `dut` in Amaranth's simulator: write `image` through its write port,
    then stream `tokens` (lists of ``d_model`` ints), ``i_tokens`` valid and ``o_route`` ready
    each held low with probability `stall` (seeded by `seed`), until every token is routed or
    `max_cycles` pass."""
    from amaranth.sim import Simulator

    rng = random.Random(seed)
    slices = token_beats(dut.token_layout, tokens, dut.lanes, dut.slices)
    routes, cycles = [], [0]

    async def bench(ctx):
        await amaranth_write(ctx, dut.wr, image)
        sent = 0
        for _ in range(max_cycles):
            if len(routes) == len(tokens):
                break
            if sent < len(slices) and (ctx.get(dut.i_tokens.valid) or rng.random() >= stall):
                ctx.set(dut.i_tokens.valid, 1)           # once valid, held until it transfers
                ctx.set(dut.i_tokens.payload.as_value(), slices[sent])
            ctx.set(dut.o_route.ready, int(rng.random() >= stall))
            took = ctx.get(dut.i_tokens.valid) and ctx.get(dut.i_tokens.ready)
            if ctx.get(dut.o_route.valid) and ctx.get(dut.o_route.ready):
                v = unpack_layout(dut.route_layout, ctx.get(dut.o_route.payload.as_value()))
                routes.append(beat_values(v))
            await ctx.tick()
            cycles[0] += 1
            if took:
                sent += 1
                ctx.set(dut.i_tokens.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    wall = time.perf_counter()
    sim.run()
    return AmaranthRoutes(routes=routes, cycles=cycles[0], wall_s=time.perf_counter() - wall)


# ---------------------------------------------------------------- the cocotb side

async def start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    getattr(dut, f"{P['i_tokens']}__valid").value = 0
    getattr(dut, f"{P['o_route']}__ready").value = 0
    getattr(dut, P["wr_en"]).value = 0
    getattr(dut, P["wr_addr"]).value = 0
    getattr(dut, P["wr_data"]).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def write_image(dut, image, rng, stall):
    """One write per cycle through {addr, data, en}, with random idle cycles in between."""
    addr, data, en = (getattr(dut, P[n]) for n in ("wr_addr", "wr_data", "wr_en"))
    for a, d in image:
        while rng.random() < stall:
            en.value = 0
            await RisingEdge(dut.clk)
        addr.value, data.value, en.value = a, d, 1
        await RisingEdge(dut.clk)
    en.value = 0
    await RisingEdge(dut.clk)


class Bench:
    """The i_tokens driver (and a passive monitor of it), the o_route sink and the scoreboard,
    all started right after reset so that their cycle counts agree."""

    def __init__(self, dut, *, seed, in_stall, out_stall):
        self.dut = dut
        self.sb = Scoreboard("router", stop=False)         # counts; finish() fails
        self.sink = StreamSink(dut, P["o_route"], dut.clk, stall_prob=out_stall, seed=seed + 1,
                               callback=lambda b: self.sb.add_received(route_values(b.payload),
                                                                       cycle=b.cycle))
        self.driver = StreamDriver(dut, P["i_tokens"], dut.clk, stall_prob=in_stall,
                                   seed=seed + 2)
        self.in_mon = StreamMonitor(dut, P["i_tokens"], dut.clk).start()
        self.sink.start()

    async def run_batch(self, batch, rng, *, wr_stall):
        """Load the batch's image, stream its tokens, wait for all its routes."""
        await write_image(self.dut, batch["image"], rng, wr_stall)
        self.sb.add_expected_many(batch["expected"])
        await self.driver.send(token_slices(batch["tokens"]))
        # Generous bound: every token may wait for stalls on both sides.
        bound = 3 * len(batch["tokens"]) * (P["cycles_per_token"] + 2 * P["slices"]) + 200
        await self.sink.wait_for(self.sb.expected_total, max_cycles=bound)
        cocotb.log.info("batch %r: %d tokens routed", batch["name"], len(batch["tokens"]))

    async def finish(self):
        for _ in range(P["cycles_per_token"] + 20):  # nothing extra may come out afterwards
            await RisingEdge(self.dut.clk)
        self.sink.stop()
        self.in_mon.stop()
        self.sb.finish()
        assert self.in_mon.payloads == [b.payload for b in self.driver.sent], \
            "input monitor and driver disagree"


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def router_batches(dut):
    """Every batch: its router state through the write port, then its tokens with random
    stalls and back-pressure; experts, gates and shared gate bit-exact."""
    await start(dut)
    rng = random.Random(cocotb.RANDOM_SEED)
    bench = Bench(dut, seed=cocotb.RANDOM_SEED, in_stall=P["in_stall"], out_stall=P["out_stall"])
    wall, sim_ns = time.perf_counter(), get_sim_time("ns")
    try:
        for batch in P["batches"]:
            await bench.run_batch(batch, rng, wr_stall=P["wr_stall"])
        await bench.finish()
    finally:
        write_summary(P, [bench.sb], cycles=int((get_sim_time("ns") - sim_ns) // 10),
                      wall_s=time.perf_counter() - wall)


@cocotb.test(timeout_time=100, timeout_unit="ms")
async def router_throughput(dut):
    """The first batch without stalls: each token's route transfers `cycles_per_token` cycles
    after (and including) its first slice, and the next token's first slice follows at once."""
    await start(dut)
    rng = random.Random(cocotb.RANDOM_SEED)
    bench = Bench(dut, seed=cocotb.RANDOM_SEED, in_stall=0.0, out_stall=0.0)
    batch = P["batches"][0]
    await bench.run_batch(batch, rng, wr_stall=0.0)
    await bench.finish()
    firsts = [b.cycle for b in bench.in_mon.beats[::P["slices"]]]
    outs = [b.cycle for b in bench.sink.beats]
    spans = [o - f + 1 for f, o in zip(firsts, outs, strict=True)]
    assert spans == [P["cycles_per_token"]] * len(spans), (spans, P["cycles_per_token"])
    assert [f - o for o, f in zip(outs, firsts[1:])] == [1] * (len(firsts) - 1), (firsts, outs)
    cocotb.log.info("%d tokens, %d cycles per token", len(outs), P["cycles_per_token"])
