# amaranth: UnusedElaboratable=no
# (the engine is built only for its layouts)

"""cocotb tests of the GemmEngine (on a weight memory), run by tests/rtl/datapath/test_gemm.py
and bench/mac_util.py; `expected_beats` gives both the expected outputs of a job.

``MOEFORGE_TEST_PARAMS`` names a JSON file written by the pytest side:

``engine``
    the `GemmEngine` keyword arguments (the module rebuilds the engine to get its layouts);
``depth``
    words of the harness's weight memory;
``ports``
    Verilog names: stream prefixes ``i_job``, ``i_x``, ``o_y``; ``w_wr.addr``, ``w_wr.data``,
    ``w_wr.en``; ``busy_cycles``, ``total_cycles`` (all from the component's signature);
``image``
    ``[[addr, word], ...]`` written into the weight memory before the jobs;
``jobs``
    each ``{w_base, x: [[K ints] × T], expected: [[R ints, token, block, last] per beat],
    busy, cycle_bound}``;
``in_stall``, ``out_stall``
    stall probabilities of ``i_x``/``i_job`` valid and ``o_y`` ready;
``perturb``: ``null`` or ``[job, beat, lane]``
    add one to that expected value, to prove the check can fail;
``summary``: ``null`` or a path
    where `gemm_throughput` writes each job's counters (for bench/mac_util.py).
"""

import json

import cocotb
from cocotb.triggers import RisingEdge

from moeforge.rtl.datapath.gemm import GemmEngine
from moeforge.sim.benches.common import (engine_streams, expect_jobs, expect_quiet, job_payloads,
                                         load_params, start_weight_memory, token_beats)
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamMonitor, unpack_layout

P = load_params()


def engine():
    return GemmEngine(**P["engine"])


def port(dut, name):
    return getattr(dut, P["ports"][name])


def expected_beats(eng, y):
    """``o_y`` beats of one job whose exact product is the tensor ``y = X · W^T`` (``[T, N]``):
    block-major, then token, then group; each ``[R values, token, block, last]``."""
    y = y.tolist()
    R, G, T = eng.rows, eng.group_rows, len(y)
    out = []
    for b in range(eng.blocks):
        for t in range(T):
            for g in range(G):
                q = b * G + g
                last = int(b == eng.blocks - 1 and t == T - 1 and g == G - 1)
                out.append(list(y[t][q * R:(q + 1) * R]) + [t, q, last])
    return out


async def run_jobs(dut, jobs, *, in_stall, out_stall, seed, perturb=None):
    """All jobs back to back (next job queued while one runs); returns the per-job counters."""
    eng = engine()
    sb = Scoreboard("gemm")
    counters = []
    busy, total = port(dut, "busy_cycles"), port(dut, "total_cycles")

    def received(beat):
        v = unpack_layout(eng.y_layout, beat.payload)
        sb.add_received(v["data"] + [v["token"], v["block"], v["last"]], cycle=beat.cycle)
        if v["last"]:        # sampled in ReadOnly: the job's final cycle is not counted yet
            counters.append((int(busy.value), int(total.value) + 1))

    expect_jobs(sb, jobs, perturb)
    sink, job_drv, x_drv = engine_streams(dut, P["ports"], in_stall=in_stall, out_stall=out_stall,
                                          seed=seed, callback=received)
    x_mon = StreamMonitor(dut, P["ports"]["i_x"], dut.clk).start()
    sink.start()
    job_drv.start(job_payloads(eng, jobs))
    x_drv.start(token_beats(eng.x_layout, [t for job in jobs for t in job["x"]], eng.cols, eng.slices))
    bound = int(sum(job["cycle_bound"] for job in jobs) / max(0.05, (1 - in_stall) * (1 - out_stall))) + 500
    await sink.wait_for(sb.expected_total, max_cycles=bound)
    await expect_quiet(dut, P["ports"]["o_y"])
    await RisingEdge(dut.clk)
    sink.stop()
    x_mon.stop()
    sb.finish()
    assert len(x_mon.beats) == sum(len(job["x"]) * eng.slices for job in jobs)
    return counters


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def gemm_jobs(dut):
    """Every job with random stalls on i_job, i_x and o_y; Y bit-exact, MAC ops exact."""
    await start_weight_memory(dut, P["ports"], P["image"])
    counters = await run_jobs(dut, P["jobs"], in_stall=P["in_stall"], out_stall=P["out_stall"],
                              seed=cocotb.RANDOM_SEED, perturb=P.get("perturb"))
    for job, (busy, total) in zip(P["jobs"], counters, strict=True):
        assert busy == job["busy"], f"busy_cycles {busy} != {job['busy']} MAC ops of the job"
        assert busy <= total, (busy, total)


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def gemm_throughput(dut):
    """Without stalls: each job within its cycle bound; utilisation logged."""
    await start_weight_memory(dut, P["ports"], P["image"])
    jobs = P["jobs"]
    counters = await run_jobs(dut, jobs, in_stall=0.0, out_stall=0.0, seed=cocotb.RANDOM_SEED)
    rows = []
    for job, (busy, total) in zip(jobs, counters, strict=True):
        cocotb.log.info("T=%d: busy %d / total %d = %.1f%%", len(job["x"]), busy, total,
                        100.0 * busy / total)
        assert busy == job["busy"], (busy, job["busy"])
        assert total <= job["cycle_bound"], f"T={len(job['x'])}: {total} > {job['cycle_bound']} cycles"
        rows.append(dict(tokens=len(job["x"]), busy=busy, total=total))
    if P.get("summary"):
        with open(P["summary"], "w") as f:
            json.dump(dict(jobs=rows), f)
