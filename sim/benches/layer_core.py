"""cocotb bench of the LayerCore on its flat-weights fixture, run by tests/rtl/layer/test_layer_core.py.

``MOEFORGE_TEST_PARAMS`` names a JSON file written by the pytest side from the same
`LayerCoreHarness` it exported:

``ports``
    Verilog names by signature path (``tok_wr.addr``, ``i_run.valid``, ``cycles``, ...);
``cols``, ``rows``, ``d_model``, ``image_words``, ``input_bits``
    the core's geometry (token words of ``cols`` input values, output words of ``rows`` int8);
``router_image``, ``expert_image``, ``shared_image``
    ``[[addr, word], ...]`` for ``router_wr``, the fixture's ``w_wr`` and ``shared_wr``
    (written concurrently, one word per cycle each, before the first batch);
``y_mult``, ``y_shift``, ``x_shift``
    the combiner's requantiser; ``S_x`` (set only where the core has the port: a wide input);
``batches``
    each ``{name, x: [[D ints] × T], expected: [[D ints] × T], experts_run, mac_busy,
    shared_mac_busy, grant_delay, requests_first, req_stall, max_cycles}``: ``expected =
    forward_int(x)``, the expert count and MAC ops the counters must show; after each grant
    the fixture withholds the next one for a uniform random ``0 .. grant_delay`` cycles; with
    ``requests_first`` > 0 the first grant waits until that many requests are pending (a core
    that does not request ahead of its grants never finishes); ``req_stall`` > 0 holds request
    acceptance in random bursts of up to that many cycles; ``max_cycles`` bounds the batch;
``perturb``: ``null`` or ``[batch, token, element]``
    add one to that expected value, to prove the check can fail;
``summary``: ``null`` or a path for the batches' counters (JSON).
"""

import json
import os
import random
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import (ClockCycles, ReadOnly, RisingEdge, SimTimeoutError, ValueChange,
                             with_timeout)

from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import pack_signed, unpack_signed
from moeforge.spec.protocol import CORE_COUNTERS

P = json.loads(Path(os.environ["MOEFORGE_TEST_PARAMS"]).read_text()) \
    if "MOEFORGE_TEST_PARAMS" in os.environ else {}


def sig(dut, path):
    return getattr(dut, P["ports"][path])


async def start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for path in ("tok_wr.en", "router_wr.en", "shared_wr.en", "w_wr.en", "i_run.valid",
                 "out_rd.en", "grant_hold", "req_hold"):
        if path == "shared_wr.en" and path not in P["ports"]:    # only with a shared expert
            continue
        sig(dut, path).value = 0
    sig(dut, "y_mult").value = P["y_mult"]
    sig(dut, "y_shift").value = P["y_shift"]
    if "x_shift" in P["ports"]:                                  # only with a wide input
        sig(dut, "x_shift").value = P["x_shift"]
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def write_port(dut, prefix, writes):
    """One ``(addr, word)`` per cycle through ``<prefix>.{addr, data, en}``."""
    addr, data, en = (sig(dut, f"{prefix}.{f}") for f in ("addr", "data", "en"))
    for a, d in writes:
        addr.value, data.value, en.value = a, d, 1
        await RisingEdge(dut.clk)
    en.value = 0


async def load_weights(dut):
    tasks = [cocotb.start_soon(write_port(dut, p, P[k])) for p, k in (
        ("router_wr", "router_image"), ("w_wr", "expert_image"), ("shared_wr", "shared_image"))
        if P[k]]
    for t in tasks:
        await t
    await RisingEdge(dut.clk)


def token_words(x):
    C = P["cols"]
    return [(t * (P["d_model"] // C) + s, pack_signed(row[s * C:(s + 1) * C], P["input_bits"]))
            for t, row in enumerate(x) for s in range(P["d_model"] // C)]


async def read_outputs(dut, n_tokens):
    """The output buffer, token by token (``rows`` int8 a word, read latency 1, one a cycle)."""
    R, per = P["rows"], P["d_model"] // P["rows"]
    n = n_tokens * per
    addr, en, data = sig(dut, "out_rd.addr"), sig(dut, "out_rd.en"), sig(dut, "out_rd.data")
    words = []
    addr.value, en.value = 0, 1
    for a in range(1, n + 1):
        await RisingEdge(dut.clk)            # word a-1 is read at this edge
        if a < n:
            addr.value = a
        else:
            en.value = 0
        await ReadOnly()
        words.append(unpack_signed(data.value.to_unsigned(), 8, R))
    await RisingEdge(dut.clk)
    return [sum(words[t * per:(t + 1) * per], []) for t in range(n_tokens)]


async def grant_delays(dut, rng, max_delay, requests_first):
    """Withhold the first grant until `requests_first` requests wait for theirs (if not 0: the
    core must request ahead of grants), or 0 .. max_delay cycles; after each grant, withhold
    the next one for 0 .. max_delay cycles."""
    hold, grants, pending = sig(dut, "grant_hold"), sig(dut, "grants"), sig(dut, "pending")
    hold.value = 1
    if requests_first:
        while int(pending.value) < requests_first:
            await ValueChange(pending)
        await RisingEdge(dut.clk)
    while True:
        await ClockCycles(dut.clk, 1 + rng.randrange(max_delay + 1))
        hold.value = 0
        await ValueChange(grants)
        hold.value = 1


async def request_stalls(dut, rng, burst):
    hold = sig(dut, "req_hold")
    while True:
        hold.value = int(rng.random() < 0.5)
        await ClockCycles(dut.clk, 1 + rng.randrange(burst))


def counters(dut):
    return {c: int(sig(dut, c).value) for c in CORE_COUNTERS}


async def run_batch(dut, batch, rng):
    """Tokens in, run, wait for done; returns (outputs, counters, fixture counts)."""
    T = len(batch["x"])
    await write_port(dut, "tok_wr", token_words(batch["x"]))
    await RisingEdge(dut.clk)
    tasks = []
    if batch["grant_delay"] or batch["requests_first"]:
        tasks.append(cocotb.start_soon(grant_delays(dut, rng, batch["grant_delay"],
                                                    batch["requests_first"])))
    if batch["req_stall"]:
        tasks.append(cocotb.start_soon(request_stalls(dut, rng, batch["req_stall"])))
    g0, r0 = int(sig(dut, "grants").value), int(sig(dut, "releases").value)
    valid, ready = sig(dut, "i_run.valid"), sig(dut, "i_run.ready")
    sig(dut, "i_run.payload").value = T
    valid.value = 1
    while True:
        await ReadOnly()
        taken = bool(ready.value)
        await RisingEdge(dut.clk)
        if taken:
            break
    valid.value = 0
    done, busy = sig(dut, "done"), sig(dut, "busy")
    try:
        await with_timeout(RisingEdge(done), batch["max_cycles"] * 10, "ns")
    except SimTimeoutError:
        raise AssertionError(f"{batch['name']}: no done within {batch['max_cycles']} cycles "
                             f"(counters {counters(dut)}, requests pending "
                             f"{int(sig(dut, 'pending').value)})") from None
    await ReadOnly()
    assert not busy.value, f"{batch['name']}: busy still high with done"
    count = counters(dut)
    fixture = {"grants": int(sig(dut, "grants").value) - g0,
               "releases": int(sig(dut, "releases").value) - r0,
               "errors": int(sig(dut, "errors").value)}
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert not done.value, f"{batch['name']}: done longer than one cycle"
    for t in tasks:
        t.cancel()
    await RisingEdge(dut.clk)
    sig(dut, "grant_hold").value = 0
    sig(dut, "req_hold").value = 0
    return await read_outputs(dut, T), count, fixture


@cocotb.test(timeout_time=2000, timeout_unit="ms")
async def layer_core_batches(dut):
    """Weights loaded once; every batch run in turn on them: y bit-exact with forward_int,
    counters as the golden model's routing says, each grant released exactly once."""
    await start(dut)
    wall = time.perf_counter()
    await load_weights(dut)
    cocotb.log.info("weights loaded in %.1f s", time.perf_counter() - wall)
    rng = random.Random(cocotb.RANDOM_SEED)
    sb = Scoreboard("layer_core")
    perturb = P.get("perturb")
    summary = []
    for b, batch in enumerate(P["batches"]):
        expected = [list(row) for row in batch["expected"]]
        if perturb is not None and perturb[0] == b:
            expected[perturb[1]][perturb[2]] += 1
        sb.add_expected_many(expected)
        y, count, fixture = await run_batch(dut, batch, rng)
        cocotb.log.info("%s: T=%d %s grants %d (%.1f s)", batch["name"], len(batch["x"]), count,
                        fixture["grants"], time.perf_counter() - wall)
        for t, row in enumerate(y):
            sb.add_received(row)
        name, T = batch["name"], len(batch["x"])
        assert count["tokens_routed"] == T, f"{name}: tokens_routed {count}"
        assert count["experts_run"] == batch["experts_run"], f"{name}: experts_run {count}"
        assert count["mac_busy"] == batch["mac_busy"], f"{name}: mac_busy {count}"
        assert count["shared_mac_busy"] == batch["shared_mac_busy"], f"{name}: {count}"
        assert count["mac_busy"] <= count["mac_total"] < count["cycles"], f"{name}: {count}"
        assert 0 < count["router_cycles"] < count["cycles"], f"{name}: {count}"
        assert (fixture["grants"], fixture["releases"], fixture["errors"]) == \
            (batch["experts_run"], batch["experts_run"], 0), f"{name}: fixture {fixture}"
        summary.append(dict(name=name, tokens=T, **count))
    sb.finish()
    if P.get("summary"):
        with open(P["summary"], "w") as f:
            json.dump(summary, f)
