"""cocotb tests of the HiddenUnit, run by tests/rtl/expert/test_hidden.py (not by pytest itself).

The pytest side writes everything into a JSON file named by the environment variable
``MOEFORGE_HIDDEN_BENCH``; this module only drives ports and compares integers:

``lanes``, ``latency``
    the unit's parameters;
``i_acc``, ``o_h``
    Verilog port prefixes of the streams, from the component's signature;
``wr``: ``{addr, data, en}``
    Verilog names of the write port's members;
``h_data_offset``, ``h_last_offset``
    bit offsets of ``o_h``'s payload fields (from `rtl.hidden.h_layout`);
``batches``: list of ``{name, image, beats, expected}``
    ``image`` the ``(addr, data)`` writes (`rtl.hidden.hidden_image`), ``beats`` the packed
    ``i_acc`` payloads of the batch's tokens, ``expected`` one list of ``F`` int8 values per token
    (``ExpertBank.hidden``);
``in_stall``, ``out_stall``
    stall probabilities of the input driver and the output sink;
``perturb``: ``null`` or ``[token, element]``
    add one to that expected value (tokens counted over all batches), to prove the check fails;
``nonce``, ``summary`` (optional)
    ``hidden_random`` writes what it compared there (`common.write_summary`), with ``cycles``
    and ``wall_s``: `moeforge sim --unit hidden` computes its verdict from it.
"""

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from moeforge.sim.benches.common import write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamMonitor, StreamSink, unpack_signed

P = json.loads(Path(os.environ["MOEFORGE_HIDDEN_BENCH"]).read_text()) \
    if "MOEFORGE_HIDDEN_BENCH" in os.environ else {}


def _port(dut, name):
    return getattr(dut, name)


async def reset(dut):
    dut.rst.value = 1
    _port(dut, f"{P['i_acc']}__valid").value = 0
    _port(dut, f"{P['o_h']}__ready").value = 0
    _port(dut, P["wr"]["en"]).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def write_image(dut, image):
    """One write per cycle through the registered port, then two cycles for the last to land."""
    addr, data, en = (_port(dut, P["wr"][k]) for k in ("addr", "data", "en"))
    for a, d in image:
        addr.value, data.value, en.value = a, d, 1
        await RisingEdge(dut.clk)
    en.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)


class TokenCollector:
    """Sink callback: gathers ``o_h`` beats into tokens (ended by ``last``) for the scoreboard."""

    def __init__(self, sb):
        self.sb = sb
        self.current = []
        self.tokens = 0

    def __call__(self, beat):
        lanes = P["lanes"]
        self.current += unpack_signed(beat.payload >> P["h_data_offset"], 8, lanes)
        if (beat.payload >> P["h_last_offset"]) & 1:
            values, self.current = self.current, []
            self.tokens += 1
            self.sb.add_received(values, cycle=beat.cycle)


def expected_tokens():
    expected = [list(t) for b in P["batches"] for t in b["expected"]]
    if P.get("perturb"):
        token, element = P["perturb"]
        expected[token][element] += 1
    return expected


async def wait_tokens(dut, collector, sink, n, bound, what):
    for _ in range(bound):
        if collector.tokens >= n:
            return
        sink.raise_failure()                    # a protocol failure of the DUT
        await RisingEdge(dut.clk)
    raise AssertionError(f"hidden: {what}: received {collector.tokens} of {n} tokens within "
                         f"{bound} cycles")


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def hidden_random(dut):
    """Every batch: load its image, stream its tokens with random stalls on both sides, check
    every token bit-exact; the batch drains before the next image is written."""
    seed = cocotb.RANDOM_SEED
    sb = Scoreboard("hidden", stop=False)          # counts; finish() fails on a difference
    sb.add_expected_many(expected_tokens())
    Clock(dut.clk, 10, unit="ns").start()
    await reset(dut)
    wall, sim_ns = time.perf_counter(), get_sim_time("ns")
    try:
        collector = TokenCollector(sb)
        sink = StreamSink(dut, P["o_h"], dut.clk, stall_prob=P["out_stall"], seed=seed + 1,
                          callback=collector)
        in_monitor = StreamMonitor(dut, P["i_acc"], dut.clk).start()   # checks our own driver
        sink.start()
        done = 0
        sent = 0
        for k, batch in enumerate(P["batches"]):
            await write_image(dut, batch["image"])
            driver = StreamDriver(dut, P["i_acc"], dut.clk, stall_prob=P["in_stall"],
                                  seed=seed + 10 + k)
            await driver.start(batch["beats"])
            sent += len(driver.sent)
            done += len(batch["expected"])
            bound = int((len(batch["beats"]) + 50) / max(0.05, 1 - P["out_stall"])) + 200
            await wait_tokens(dut, collector, sink, done, bound, batch["name"])
            cocotb.log.info("batch %r: %d tokens", batch["name"], len(batch["expected"]))
        for _ in range(20):                       # nothing extra may come out afterwards
            await RisingEdge(dut.clk)
        sink.stop()
        in_monitor.stop()
        assert collector.current == [], f"hidden: a token without last: {collector.current}"
        sb.finish()
        assert len(in_monitor.beats) == sent, "input monitor and drivers disagree"
    finally:
        write_summary(P, [sb], cycles=int((get_sim_time("ns") - sim_ns) // 10),
                      wall_s=time.perf_counter() - wall)


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def hidden_throughput(dut):
    """Without stalls: one beat per cycle in and out, output beat n `latency` cycles after
    input beat n (the first batch)."""
    batch = P["batches"][0]
    sb = Scoreboard("hidden")
    sb.add_expected_many(batch["expected"])
    Clock(dut.clk, 10, unit="ns").start()
    await reset(dut)
    await write_image(dut, batch["image"])
    collector = TokenCollector(sb)
    sink = StreamSink(dut, P["o_h"], dut.clk, callback=collector)
    driver = StreamDriver(dut, P["i_acc"], dut.clk)
    sink.start()
    await driver.start(batch["beats"])
    await wait_tokens(dut, collector, sink, len(batch["expected"]), len(batch["beats"]) + 100,
                      batch["name"])
    sink.stop()
    sb.finish()
    in_cycles = [b.cycle for b in driver.sent]
    out_cycles = [b.cycle for b in sink.beats]
    assert in_cycles == list(range(in_cycles[0], in_cycles[0] + len(in_cycles))), in_cycles
    assert out_cycles == [c + P["latency"] for c in in_cycles], (in_cycles, out_cycles)
