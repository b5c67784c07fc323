"""rtl.arith.requant equals the golden requantiser on random and extreme values (Amaranth sim)."""

import random

import torch
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from moeforge.hls_models.fixed_point import requantize
from moeforge.rtl.datapath.arith import requant


def test_requant_expression_matches_golden():
    acc, mult, shift = Signal(signed(40)), Signal(unsigned(16)), Signal(unsigned(6))
    out = Signal(signed(8))
    m = Module()
    m.d.comb += out.eq(requant(acc, mult, shift, 8))
    rng = random.Random(1)
    cases = [(rng.randint(-(1 << 39), (1 << 39) - 1), rng.randint(0, 65535), rng.randint(1, 62))
             for _ in range(2000)]
    cases += [(5, 1 << 15, 16), (-5, 1 << 15, 16), ((1 << 39) - 1, 65535, 1), (-(1 << 39), 65535, 62),
              (-1, 1, 1), (1, 1, 1)]
    mismatches = []

    async def bench(ctx):
        for a, mu, sh in cases:
            ctx.set(acc, a)
            ctx.set(mult, mu)
            ctx.set(shift, sh)
            want = requantize(torch.tensor(a), mu, sh, 8).item()
            if ctx.get(out) != want:
                mismatches.append((a, mu, sh, ctx.get(out), want))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:3]
