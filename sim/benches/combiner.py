"""cocotb bench of the Combiner, run by tests/rtl/layer/test_combiner.py and `moeforge sim --unit combiner`.

``MOEFORGE_TEST_PARAMS`` names a JSON file written by the pytest side from the same `Combiner`
it exported:

``d_model``, ``lanes``, ``t_max``, ``flush_latency``
    the unit's parameters;
``i_contrib``, ``i_flush``, ``o_y``, ``y_mult``, ``y_shift``
    Verilog port names / stream prefixes, from the component's signature;
``in_stall``, ``out_stall``
    default stall probabilities of the contribution stream and of ``o_y``'s back-pressure
    (a batch may override them with its own ``in_stall`` / ``out_stall``);
``batches``
    each ``{name, n_tokens, mult, shift, contribs: [[token, gate, [d_model ints]]...],
    expected: [[d_model ints] per output token]}`` from the golden model;
``nonce``, ``summary`` (optional)
    ``combiner_batches`` writes what it compared there (`common.write_summary`: tokens are
    ``o_y`` beats, elements their lanes plus token and last), with ``cycles`` and ``wall_s``.
"""

import itertools
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from moeforge.rtl.layer.combiner import contrib_layout, flush_layout, y_layout
from moeforge.sim.benches.common import load_params, write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamMonitor, StreamSink, pack_layout, unpack_layout

P = load_params()


def layouts():
    return (contrib_layout(t_max=P["t_max"], lanes=P["lanes"]), flush_layout(t_max=P["t_max"]),
            y_layout(t_max=P["t_max"], lanes=P["lanes"]))


def contrib_beats(batch):
    """Packed i_contrib payloads of a batch: each contribution as d_model/lanes beats."""
    lay = layouts()[0]
    lanes, bpt = P["lanes"], P["d_model"] // P["lanes"]
    out = []
    for token, gate, o in batch["contribs"]:
        for b in range(bpt):
            out.append(pack_layout(lay, {"token": token, "gate": gate,
                                         "data": o[b * lanes:(b + 1) * lanes],
                                         "last": int(b == bpt - 1)}))
    return out


def expected_beats(batch):
    """(lanes of y, [token, last]) of every o_y beat of a batch."""
    lanes, bpt = P["lanes"], P["d_model"] // P["lanes"]
    return [(row[b * lanes:(b + 1) * lanes], [t, int(b == bpt - 1)])
            for t, row in enumerate(batch["expected"]) for b in range(bpt)]


class Pauses:
    """An endless pause generator whose probability can change between batches."""

    def __init__(self, prob, seed):
        self.prob = prob
        self.rng = random.Random(seed)

    def __iter__(self):
        return (self.prob > 0 and self.rng.random() < self.prob for _ in itertools.count())


async def start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for port in (f"{P['i_contrib']}__valid", f"{P['i_flush']}__valid", f"{P['o_y']}__ready"):
        getattr(dut, port).value = 0
    getattr(dut, P["y_mult"]).value = 0
    getattr(dut, P["y_shift"]).value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


class Bench:
    """Drivers, monitors, the o_y sink and its scoreboards, all started right after reset."""

    def __init__(self, dut, *, seed, in_stall, out_stall):
        self.dut = dut
        _, self.flush_lay, self.y_lay = layouts()
        # counting: every beat is compared, finish() fails on the first difference
        self.sb = Scoreboard("combiner", stop=False)                    # y lanes, beat by beat
        self.side = Scoreboard("combiner token/last", stop=False)       # the beat's token and last
        self.in_pause = Pauses(in_stall, seed + 1)
        self.out_pause = Pauses(out_stall, seed + 2)
        self.sink = StreamSink(dut, P["o_y"], dut.clk, pause=iter(self.out_pause),
                               callback=self.received)
        self.contrib = StreamDriver(dut, P["i_contrib"], dut.clk, pause=iter(self.in_pause))
        self.flush = StreamDriver(dut, P["i_flush"], dut.clk)
        # Passive monitors: the beats' cycles, and our own drivers checked against the rules.
        self.contrib_mon = StreamMonitor(dut, P["i_contrib"], dut.clk).start()
        self.flush_mon = StreamMonitor(dut, P["i_flush"], dut.clk).start()
        self.sink.start()

    def received(self, beat):
        v = unpack_layout(self.y_lay, beat.payload)
        self.sb.add_received(v["data"], cycle=beat.cycle)
        self.side.add_received([v["token"], v["last"]], cycle=beat.cycle)

    async def run_batch(self, batch, *, in_stall, out_stall):
        """Queue the batch's expectations, send its contributions and then its flush command.
        Returns once the flush has been accepted (its outputs may still be on their way)."""
        for data, side in expected_beats(batch):
            self.sb.add_expected(data)
            self.side.add_expected(side)
        self.in_pause.prob = batch.get("in_stall", in_stall)
        self.out_pause.prob = batch.get("out_stall", out_stall)
        await self.contrib.send(contrib_beats(batch))
        # M_y, S_y for this batch: the unit samples them with the flush command (the previous
        # batch's outputs may still be leaving with the old values).
        getattr(self.dut, P["y_mult"]).value = batch["mult"]
        getattr(self.dut, P["y_shift"]).value = batch["shift"]
        await self.flush.send([pack_layout(self.flush_lay, {"n_tokens": batch["n_tokens"]})])

    async def finish(self, *, max_cycles):
        await self.sink.wait_for(self.sb.expected_total, max_cycles=max_cycles)
        for _ in range(20):                       # nothing extra may come out afterwards
            await RisingEdge(self.dut.clk)
        self.sink.stop()
        self.contrib_mon.stop()
        self.flush_mon.stop()
        self.sb.finish()
        self.side.finish()
        # (payloads only: the driver counts cycles only while it sends)
        assert self.contrib_mon.payloads == [b.payload for b in self.contrib.sent], \
            "contribution monitor and driver disagree"


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def combiner_batches(dut):
    """Every batch back to back (the next batch's contributions start as soon as the previous
    flush is accepted), random stalls and back-pressure, bit-exact y, token and last."""
    await start(dut)
    bench = Bench(dut, seed=cocotb.RANDOM_SEED, in_stall=P["in_stall"], out_stall=P["out_stall"])
    wall, sim_ns = time.perf_counter(), get_sim_time("ns")
    try:
        total = 0
        for batch in P["batches"]:
            start_cycle = bench.contrib_mon.cycle
            await bench.run_batch(batch, in_stall=P["in_stall"], out_stall=P["out_stall"])
            total += len(batch["contribs"]) * P["d_model"] // P["lanes"] + len(batch["expected"])
            cocotb.log.info("%s: %d contributions, flush accepted after %d cycles", batch["name"],
                            len(batch["contribs"]), bench.contrib_mon.cycle - start_cycle)
        bound = int(4 * total / max(0.05, 1 - P["out_stall"])) + 200
        await bench.finish(max_cycles=bound)
    finally:
        write_summary(P, [bench.sb], side=[bench.side], cycles=int((get_sim_time("ns") - sim_ns) // 10),
                      wall_s=time.perf_counter() - wall)
    cocotb.log.info("%d o_y beats checked", bench.sb.matched)


@cocotb.test(timeout_time=50, timeout_unit="ms")
async def combiner_throughput(dut):
    """Without stalls: one contribution beat per cycle, the flush's first y `flush_latency`
    cycles after its first read (the accumulate pipeline drains first: 2 cycles), then one beat
    per cycle; contributions flow again while the last y beats leave."""
    await start(dut)
    bench = Bench(dut, seed=cocotb.RANDOM_SEED, in_stall=0.0, out_stall=0.0)
    bpt = P["d_model"] // P["lanes"]
    rng = random.Random(cocotb.RANDOM_SEED)
    T = P["t_max"]
    batches = []
    for _ in range(2):
        contribs = [[t, rng.randrange(1 << 15),
                     [rng.randint(-300, 300) for _ in range(P["d_model"])]]
                    for t in list(range(T)) * 2]
        acc = [[0] * P["d_model"] for _ in range(T)]
        for t, g, o in contribs:
            acc[t] = [a + g * v for a, v in zip(acc[t], o)]
        mult, shift = 1 << 15, 26
        expected = [[max(-128, min(127, (a * mult + (1 << (shift - 1))) >> shift)) for a in row]
                    for row in acc]
        batches.append(dict(name="throughput", n_tokens=T, mult=mult, shift=shift,
                            contribs=contribs, expected=expected))
    for batch in batches:
        await bench.run_batch(batch, in_stall=0.0, out_stall=0.0)
    await bench.finish(max_cycles=10 * len(bench.sink.beats) + 4000)

    n_in, n_out = len(batches[0]["contribs"]) * bpt, T * bpt
    c = [b.cycle for b in bench.contrib_mon.beats]
    f = [b.cycle for b in bench.flush_mon.beats]
    y = [b.cycle for b in bench.sink.beats]
    assert c[:n_in] == list(range(c[0], c[0] + n_in)), "contributions were stalled"
    assert f[0] == c[n_in - 1] + 1, (f, c[n_in - 1])
    # Last beat accepted in cycle f-1: stage 1 in f, stage 2 in f+1, first read issued in f+2.
    first = f[0] + 2 + P["flush_latency"]
    assert y[:n_out] == list(range(first, first + n_out)), (f[0], y[:n_out])
    # The next batch's contributions start before the last y beats are out.
    assert c[n_in] <= y[n_out - 1], (c[n_in], y[n_out - 1])
    assert c[n_in:] == list(range(c[n_in], c[n_in] + n_in)), "contributions were stalled"
    cocotb.log.info("flush accepted in cycle %d, y in cycles %d..%d, next contributions from %d",
                    f[0], y[0], y[n_out - 1], c[n_in])
