"""The `SkidBuffer` in Amaranth's own simulator.

Random beats under random ``valid`` and ``ready`` stalls come out in order, none lost or
repeated, a stalled output beat holding still; without stalls one beat a cycle, one cycle
late; and ``i.ready`` never follows ``o.ready`` within a cycle (the point of the unit).
"""

import random

import pytest
from amaranth.hdl import Module, unsigned
from amaranth.sim import Simulator

from moeforge.rtl.datapath.skid import SkidBuffer


def run(values, *, in_stall, out_stall, seed, cls=SkidBuffer):
    """Drive `values` through a 16-bit SkidBuffer; returns (beats out, cycles, the cycle of each
    input transfer, the cycle of each output transfer, how often i.ready moved with o.ready)."""
    dut = cls(unsigned(16))
    seen = {"out": [], "out_at": [], "in_at": [], "cycle": 0, "followed": 0}
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)

    async def producer(ctx):
        for v in values:
            while rng_in.random() < in_stall:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, v)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        held = None
        while len(seen["out"]) < len(values):
            ready = rng_out.random() >= out_stall
            ctx.set(dut.o.ready, not ready)
            await ctx.delay(1e-9)
            before = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, ready)
            await ctx.delay(1e-9)
            if ctx.get(dut.i.ready) != before:
                seen["followed"] += 1
            if ctx.get(dut.i.valid) and ctx.get(dut.i.ready):
                seen["in_at"].append(seen["cycle"])
            valid, now = ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            if held is not None:
                assert valid and now == held, (now, held)
            held = None
            if valid and ready:
                seen["out"].append(now)
                seen["out_at"].append(seen["cycle"])
            elif valid:
                held = now
            await ctx.tick()
            seen["cycle"] += 1

    sim = Simulator(dut)                      # its registers give it the sync domain
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * (20 * len(values) + 100))
    assert len(seen["out"]) == len(values), "not every beat came out"
    return seen


@pytest.mark.parametrize("in_stall, out_stall", [(0.0, 0.5), (0.5, 0.0), (0.4, 0.4), (0.1, 0.8)])
def test_order_under_stalls(in_stall, out_stall):
    values = [random.Random(i).randrange(1 << 16) for i in range(200)]
    seen = run(values, in_stall=in_stall, out_stall=out_stall, seed=int(in_stall * 10 + out_stall * 100))
    assert seen["out"] == values
    assert seen["followed"] == 0, "i.ready changed with o.ready in the same cycle"


def test_full_rate_one_cycle_late():
    values = list(range(1, 65))
    seen = run(values, in_stall=0.0, out_stall=0.0, seed=1)
    assert seen["out"] == values
    assert seen["out_at"] == [c + SkidBuffer.latency for c in seen["in_at"]]
    assert seen["in_at"] == list(range(seen["in_at"][0], seen["in_at"][0] + len(values)))


class PlainRegister(SkidBuffer):
    """One output register whose ``i.ready`` is ``~o.valid | o.ready``: in order, but its
    ready follows the consumer's within the cycle, which the skid buffer exists to prevent."""

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(i.ready):
            m.d.sync += [o.payload.eq(i.payload), o.valid.eq(i.valid)]
        return m


def test_the_ready_check_fails_on_a_plain_register():
    values = [random.Random(i).randrange(1 << 16) for i in range(100)]
    seen = run(values, in_stall=0.2, out_stall=0.5, seed=3, cls=PlainRegister)
    assert seen["out"] == values
    assert seen["followed"] > 0
