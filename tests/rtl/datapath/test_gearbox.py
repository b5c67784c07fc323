# amaranth: UnusedElaboratable=no
# (test_bad_layouts builds components whose constructor raises; they are never elaborated)

"""The `Gearbox` in Amaranth's own simulator: narrowing, widening and equal widths.

Random packets under random ``valid`` and ``ready`` stalls must come out as the same lanes in
the same order, the side fields on every beat of their packet and ``last`` only on a packet's
final beat; without stalls the narrow side moves one beat per cycle; and a stalled output beat
holds still. The layer core's two uses (contributions ``R → L`` lanes, ``y`` ``L → R``) are run
at its example widths.
"""

import random

import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.sim import Simulator

from moeforge.rtl.datapath.gearbox import Gearbox
from moeforge.rtl.layer.combiner import contrib_layout, y_layout


def layout(lanes, *, elem=signed(16), last=True):
    members = {"token": unsigned(5), "gate": unsigned(22), "data": data.ArrayLayout(elem, lanes)}
    if last:
        members["last"] = unsigned(1)
    return data.StructLayout(members)


def packets(rng, n_packets, lanes_per_packet):
    """[(token, gate, [int16 values])]: each packet a whole number of wide beats."""
    return [(rng.randrange(32), rng.randrange(1 << 22),
             [rng.randint(-32768, 32767) for _ in range(lanes_per_packet)])
            for _ in range(n_packets)]


def run(dut, pkts, *, in_stall, out_stall, seed, side=("token", "gate"), has_last=True):
    """Drive `pkts` through `dut`; returns the output beats (side fields, lanes, last) and the
    cycle count, checking that a stalled output beat holds its payload."""
    n, w = dut.i_lanes, dut.o_lanes
    beats_in = []
    for p in pkts:
        vals = p[-1]
        for b in range(len(vals) // n):
            beats_in.append((p[:-1], vals[b * n:(b + 1) * n], b == len(vals) // n - 1))
    total_out = sum(len(p[-1]) for p in pkts) // w
    seen = {"out": [], "cycles": 0}
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)

    def payload(side_vals, lanes, last):
        d = dict(zip(side, side_vals))
        d["data"] = lanes
        if has_last:
            d["last"] = int(last)
        return d

    async def producer(ctx):
        for side_vals, lanes, last in beats_in:
            while rng_in.random() < in_stall:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload, payload(side_vals, lanes, last))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        held = None
        while len(seen["out"]) < total_out:
            ready = rng_out.random() >= out_stall
            ctx.set(dut.o.ready, ready)
            await ctx.delay(1e-9)                # settle after the producer's changes
            valid = ctx.get(dut.o.valid)
            pl = ctx.get(dut.o.payload)
            now = (tuple(getattr(pl, s) for s in side), list(pl.data),
                   bool(pl.last) if has_last else None)
            if held is not None:
                assert valid and now == held, (now, held)  # a stalled beat holds still
            held = None
            if valid and ready:
                seen["out"].append(now)
            elif valid:
                held = now
            await ctx.tick()
            seen["cycles"] += 1

    top = Module()                             # a clock domain also for the wired-through case
    top.submodules.dut = dut
    tick = Signal()
    top.d.sync += tick.eq(~tick)
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-6 * (20 * len(beats_in) * max(1, dut.ratio) + 100))
    assert len(seen["out"]) == total_out, "not every beat came out"
    return seen["out"], seen["cycles"]


def expected(pkts, w, side_count=2, has_last=True):
    out = []
    for p in pkts:
        vals = p[-1]
        for b in range(len(vals) // w):
            out.append((tuple(p[:side_count]), vals[b * w:(b + 1) * w],
                        (b == len(vals) // w - 1) if has_last else None))
    return out


CASES = [(8, 2), (4, 1), (6, 3), (2, 8), (1, 4), (3, 6), (4, 4)]


@pytest.mark.parametrize("n, w", CASES)
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_lanes_order_side_fields_and_last(n, w, stall):
    rng = random.Random(n * 100 + w)
    per = max(n, w) * 3                          # three wide beats a packet
    pkts = packets(rng, 12, per)
    dut = Gearbox(layout(n), layout(w))
    got, _ = run(dut, pkts, in_stall=stall, out_stall=stall, seed=n + w)
    assert got == expected(pkts, w)


@pytest.mark.parametrize("n, w", CASES)
def test_one_narrow_beat_per_cycle(n, w):
    """Without stalls the narrow side never waits: ``beats + 2`` cycles (the register stage
    and the consumer's view of the last beat), one packet of one wide beat after another."""
    rng = random.Random(7)
    pkts = packets(rng, 10, max(n, w))
    dut = Gearbox(layout(n), layout(w))
    got, cycles = run(dut, pkts, in_stall=0.0, out_stall=0.0, seed=1)
    assert got == expected(pkts, w)
    narrow_beats = sum(len(p[-1]) for p in pkts) // min(n, w)
    assert cycles <= narrow_beats + 2, (cycles, narrow_beats)


def test_without_last_or_side_fields():
    rng = random.Random(3)
    lay = lambda lanes: data.StructLayout({"data": data.ArrayLayout(unsigned(8), lanes)})
    pkts = [([rng.randrange(256) for _ in range(8)],) for _ in range(5)]
    for n, w in ((8, 2), (2, 8)):
        got, _ = run(Gearbox(lay(n), lay(w)), pkts, in_stall=0.3, out_stall=0.3, seed=5,
                     side=(), has_last=False)
        assert got == expected(pkts, w, side_count=0, has_last=False)


@pytest.mark.parametrize("R, L", [(4, 1), (8, 2), (4, 4)])
def test_the_layer_cores_streams(R, L):
    """The contribution stream R → L lanes and the y stream L → R of the layer core."""
    rng = random.Random(R + L)
    D, t_max = 16, 8
    contribs = [(rng.randrange(t_max), rng.randrange(1 << 22),
                 [rng.randint(-32768, 32767) for _ in range(D)]) for _ in range(6)]
    down = Gearbox(contrib_layout(t_max=t_max, lanes=R), contrib_layout(t_max=t_max, lanes=L))
    got, _ = run(down, contribs, in_stall=0.3, out_stall=0.3, seed=2)
    assert got == expected(contribs, L)
    ys = [(t, [rng.randint(-128, 127) for _ in range(D)]) for t in range(t_max)]
    up = Gearbox(y_layout(t_max=t_max, lanes=L), y_layout(t_max=t_max, lanes=R))
    got, _ = run(up, ys, in_stall=0.3, out_stall=0.0, seed=3, side=("token",))
    assert got == expected(ys, R, side_count=1)


@pytest.mark.parametrize("i_layout, o_layout, exc, match", [
    (layout(4), layout(3), ValueError, "lane counts must divide one another, not 4 and 3"),
    (layout(4), layout(2, last=False), ValueError, "same members"),
    (layout(4), layout(2, elem=signed(8)), ValueError, "lanes of 'data' must have one shape"),
    (data.StructLayout({"data": unsigned(8)}), layout(2), ValueError,
     "'data' member that is a data.ArrayLayout"),
    (data.StructLayout({"data": data.ArrayLayout(8, 2), "last": 2}),
     data.StructLayout({"data": data.ArrayLayout(8, 1), "last": 2}), ValueError, "one bit"),
    (unsigned(8), layout(2), TypeError, "i_layout must be a data.StructLayout"),
])
def test_bad_layouts(i_layout, o_layout, exc, match):
    with pytest.raises(exc, match=match):
        Gearbox(i_layout, o_layout)


def test_side_field_shapes_must_match():
    other = data.StructLayout({"token": unsigned(4), "gate": unsigned(22),
                               "data": data.ArrayLayout(signed(16), 2), "last": unsigned(1)})
    with pytest.raises(ValueError, match="member 'token' must have one shape in and out"):
        Gearbox(layout(4), other)
