"""cocotb bench of the BackingMemory, run by tests/sim/test_backing_memory.py.

``MOEFORGE_TEST_PARAMS`` names a JSON file: ``ports`` (Verilog names from the signature),
``memory`` (the constructor arguments: the payload layouts come from them), ``data`` (the words
the host writes through ``wr`` first), ``phases`` (each ``{requests: [[addr, length]...],
req_stall, resp_stall, gap}``), ``max_cycles`` (per phase) and ``results`` (a file to write to).

Each phase starts after ``gap`` idle cycles (so the memory is idle: its credit full), sends its
requests in order (random idle cycles before each with probability ``req_stall``) and drives
``o_resp.ready`` low with probability ``resp_stall`` each cycle. The bench records, counting the
phase's first cycle as 0, ``ready`` of every cycle, the cycle each request was accepted and the
(cycle, data) of each word; the pytest side compares them with `BackingMemory.schedule`. The
bench itself checks only that no word arrives that was not asked for.
"""

from __future__ import annotations

import json
import os
import random
from fractions import Fraction

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from moeforge.sim.backing_memory import BackingMemory
from moeforge.sim.stream import pack_layout, unpack_layout

P = json.loads(open(os.environ["MOEFORGE_TEST_PARAMS"]).read()) \
    if "MOEFORGE_TEST_PARAMS" in os.environ else {}


def _port(dut, key):
    return getattr(dut, P["ports"][key])


async def run_phase(dut, phase, rng, mem, expected_words, max_cycles):
    """One phase, cycle by cycle: drive after the edge, sample in ReadOnly."""
    requests = [tuple(r) for r in phase["requests"]]
    for _ in range(phase["gap"]):
        await RisingEdge(dut.clk)
    ready_log, accepts, words = [], [], []
    nxt, presenting = 0, False
    cycle = 0
    while len(words) < expected_words or nxt < len(requests):
        assert cycle < max_cycles, f"phase stuck: {len(words)} of {expected_words} words"
        if not presenting and nxt < len(requests) and not rng.random() < phase["req_stall"]:
            addr, length = requests[nxt]
            _port(dut, "i_req.payload").value = pack_layout(mem.req_layout,
                                                            {"addr": addr, "length": length})
            presenting = True
        _port(dut, "i_req.valid").value = int(presenting)
        ready = int(not rng.random() < phase["resp_stall"])
        _port(dut, "o_resp.ready").value = ready
        await ReadOnly()
        ready_log.append(ready)
        if presenting and _port(dut, "i_req.ready").value:
            accepts.append(cycle)
            presenting = False
            nxt += 1
        if ready and _port(dut, "o_resp.valid").value:
            data = unpack_layout(mem.resp_layout, _port(dut, "o_resp.payload").value.to_unsigned())
            words.append([cycle, data["data"]])
            assert len(words) <= expected_words, f"unexpected word in cycle {cycle}"
        await RisingEdge(dut.clk)
        cycle += 1
    _port(dut, "i_req.valid").value = 0
    _port(dut, "o_resp.ready").value = 1
    for _ in range(10):
        await ReadOnly()
        assert not _port(dut, "o_resp.valid").value, "a word nobody asked for"
        await RisingEdge(dut.clk)
    return {"ready": ready_log, "accepts": accepts, "words": words}


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def memory_phases(dut):
    kwargs = dict(P["memory"], bytes_per_cycle=Fraction(P["memory"]["bytes_per_cycle"]))
    mem = BackingMemory(**kwargs)
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for key in ("i_req.valid", "o_resp.ready", "wr.en"):
        _port(dut, key).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for addr, word in enumerate(P["data"]):
        _port(dut, "wr.addr").value = addr
        _port(dut, "wr.data").value = word
        _port(dut, "wr.en").value = 1
        await RisingEdge(dut.clk)
    _port(dut, "wr.en").value = 0
    rng = random.Random(cocotb.RANDOM_SEED)
    results = []
    for phase in P["phases"]:
        n = sum(length for _, length in phase["requests"])
        results.append(await run_phase(dut, phase, rng, mem, n, P["max_cycles"]))
    with open(P["results"], "w") as f:
        json.dump(results, f)
