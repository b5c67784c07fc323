# amaranth: UnusedElaboratable=no
# (the engine is built only for its layouts)

"""cocotb tests of the ExpertFFN (on a weight memory), run by tests/rtl/expert/test_expert_ffn.py,
bench/mac_util.py and `moeforge sim --unit expert_ffn`.

``MOEFORGE_TEST_PARAMS`` names a JSON file written by the pytest side:

``engine``
    the `ExpertFFN` keyword arguments (the module rebuilds the engine to get its layouts);
``ports``
    Verilog names: stream prefixes ``i_job``, ``i_x``, ``o_y``; ``w_wr.addr``, ``w_wr.data``,
    ``w_wr.en``; ``busy_cycles``, ``total_cycles`` (from the component's signature);
``image``
    ``[[addr, word], ...]`` written into the weight memory first (`expert_image` of each expert);
``jobs``
    each ``{name, w_base, x: [[D ints] × T], expected: [[R ints, token, last] per beat],
    busy, cycles, model, after_previous}`` (``expected`` from ``ExpertBank.forward``; ``busy``
    its MAC ops; ``cycles`` its no-stall cycles alone, for time-outs; ``model``
    ``[accepted, ended]`` from `ExpertFFN.schedule`, counted from the acceptance of the first
    job of its group; ``after_previous``: presented only once the previous job has ended, which
    starts a new group and busy period);
``in_stall``, ``out_stall``
    stall probabilities of ``i_x``/``i_job`` valid and ``o_y`` ready;
``perturb``: ``null`` or ``[job, beat, lane]``
    add one to that expected value, to prove the check can fail;
``summary``: ``null`` or a path
    where the test writes the busy periods (``expert_ffn_throughput``: and the job spans),
    simulated cycles and wall time (for bench/mac_util.py and the command line);
    ``expert_ffn_jobs`` writes it through `common.write_summary`, with what it compared and
    the tool's ``nonce``, however the test ends.
"""

import itertools
import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Event, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from moeforge.rtl.expert.expert_ffn import ExpertFFN
from moeforge.sim.benches.common import write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamMonitor, StreamSink, pack_layout, unpack_layout

P = json.loads(open(os.environ["MOEFORGE_TEST_PARAMS"]).read()) \
    if "MOEFORGE_TEST_PARAMS" in os.environ else {}


def engine():
    return ExpertFFN(**P["engine"])


def port(dut, name):
    return getattr(dut, P["ports"][name])


async def start(dut):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for s in ("i_job", "i_x"):
        getattr(dut, f"{P['ports'][s]}__valid").value = 0
    getattr(dut, f"{P['ports']['o_y']}__ready").value = 0
    port(dut, "w_wr.en").value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for addr, word in P["image"]:                 # the expert images, one word per cycle
        port(dut, "w_wr.addr").value = addr
        port(dut, "w_wr.data").value = word
        port(dut, "w_wr.en").value = 1
        await RisingEdge(dut.clk)
    port(dut, "w_wr.en").value = 0
    await RisingEdge(dut.clk)


def x_beats(eng, x):
    C, S = eng.cols, eng.image.s_d
    return [pack_layout(eng.x_layout, {"data": tok[s * C:(s + 1) * C], "last": int(s == S - 1)})
            for tok in x for s in range(S)]


async def run_jobs(dut, jobs, *, in_stall, out_stall, seed, perturb=None, sb=None):
    """Run `jobs`: each presented as soon as the engine takes it (it prefetches the next job
    while one computes), or, if the job says ``after_previous``, once the previous one ended.
    The outputs go to `sb` (a counting `Scoreboard` by default).

    Returns ``(periods, spans)``: ``periods`` the ``(busy_cycles, total_cycles)`` of each busy
    period (the counters restart when a job finds the engine idle); ``spans`` per job the
    cycles its ``i_job`` beat and its last ``o_y`` beat transferred.
    """
    eng = engine()
    sb = Scoreboard("expert_ffn", stop=False) if sb is None else sb
    busy, total = port(dut, "busy_cycles"), port(dut, "total_cycles")
    ends = list(itertools.accumulate(len(job["expected"]) for job in jobs))   # beats so far
    end_cycles = []
    job_done = [Event() for _ in jobs]

    def received(beat):
        v = unpack_layout(eng.y_layout, beat.payload)
        sb.add_received(v["data"] + [v["token"], v["last"]], cycle=beat.cycle)
        if sb.matched in ends:
            end_cycles.append(beat.cycle)
            job_done[len(end_cycles) - 1].set()

    for j, job in enumerate(jobs):
        expected = [list(e) for e in job["expected"]]
        if perturb is not None and perturb[0] == j:
            expected[perturb[1]][perturb[2]] += 1
        sb.add_expected_many(expected)
    sink = StreamSink(dut, P["ports"]["o_y"], dut.clk, stall_prob=out_stall, seed=seed + 1,
                      callback=received)
    job_drv = StreamDriver(dut, P["ports"]["i_job"], dut.clk, stall_prob=in_stall, seed=seed + 2)
    x_drv = StreamDriver(dut, P["ports"]["i_x"], dut.clk, stall_prob=in_stall, seed=seed + 3)
    job_mon = StreamMonitor(dut, P["ports"]["i_job"], dut.clk).start()
    x_mon = StreamMonitor(dut, P["ports"]["i_x"], dut.clk).start()
    sink.start()
    job_beats = [pack_layout(eng.job_layout, {"n_tokens": len(job["x"]), "w_base": job["w_base"]})
                 for job in jobs]

    async def send_jobs():
        for j, beat in enumerate(job_beats):
            if j and jobs[j].get("after_previous"):
                await job_done[j - 1].wait()
                await RisingEdge(dut.clk)
            await job_drv.send([beat])

    cocotb.start_soon(send_jobs())
    x_drv.start([b for job in jobs for b in x_beats(eng, job["x"])])

    # Busy periods: total_cycles restarting (smaller than before) ends one.
    periods, last_seen = [], [0, 0]

    async def watch():
        while True:
            await ReadOnly()
            b, t = int(busy.value), int(total.value)
            if t < last_seen[1]:
                periods.append(tuple(last_seen))
            last_seen[:] = [b, t]
            await RisingEdge(dut.clk)

    watcher = cocotb.start_soon(watch())
    bound = int(sum(job["cycles"] for job in jobs) / max(0.05, (1 - in_stall) * (1 - out_stall))) + 500
    await sink.wait_for(sb.expected_total, max_cycles=bound)
    for _ in range(20):                           # nothing extra may come out afterwards
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert not int(getattr(dut, f"{P['ports']['o_y']}__valid").value), "an extra output beat"
    watcher.cancel()
    periods.append((int(busy.value), int(total.value)))
    await RisingEdge(dut.clk)
    sink.stop()
    x_mon.stop()
    job_mon.stop()
    sb.finish()
    assert len(x_mon.beats) == sum(len(job["x"]) * eng.image.s_d for job in jobs)
    spans = [(a.cycle, e) for a, e in zip(job_mon.beats, end_cycles, strict=True)]
    return periods, spans


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def expert_ffn_jobs(dut):
    """Every job with random stalls on i_job, i_x and o_y: o bit-exact, MAC ops exact."""
    await start(dut)
    wall = time.perf_counter()
    sim_ns = get_sim_time("ns")
    sb = Scoreboard("expert_ffn", stop=False)
    periods = None
    try:
        periods, _ = await run_jobs(dut, P["jobs"], in_stall=P["in_stall"], out_stall=P["out_stall"],
                                    seed=cocotb.RANDOM_SEED, perturb=P.get("perturb"), sb=sb)
    finally:                          # `moeforge sim --unit expert_ffn` reads it
        write_summary(P, [sb], periods=periods, sim_cycles=(get_sim_time("ns") - sim_ns) / 10,
                      wall_s=time.perf_counter() - wall)
    ops = sum(job["busy"] for job in P["jobs"])
    assert sum(b for b, _ in periods) == ops, f"busy_cycles {periods} != {ops} MAC ops of the jobs"
    assert all(b <= t for b, t in periods), periods


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def expert_ffn_throughput(dut):
    """Without stalls: every job accepted and ended when `ExpertFFN.schedule` says (within
    1 %, counted from the first job of its busy period), one busy period per group of jobs
    (a job with ``after_previous`` starts a group); utilisation logged."""
    await start(dut)
    jobs = P["jobs"]
    wall = time.perf_counter()
    sim_ns = get_sim_time("ns")
    periods, spans = await run_jobs(dut, jobs, in_stall=0.0, out_stall=0.0, seed=cocotb.RANDOM_SEED)
    wall = time.perf_counter() - wall
    cycles = (get_sim_time("ns") - sim_ns) / 10
    rel = []
    for j, (job, (a, e)) in enumerate(zip(jobs, spans, strict=True)):
        if j == 0 or job.get("after_previous"):
            t0 = a
        ma, me = job["model"]
        cocotb.log.info("%s, T=%d: accepted %d (model %d), ended %d (model %d)", job["name"],
                        len(job["x"]), a - t0, ma, e - t0, me)
        assert abs((a - t0) - ma) <= 0.01 * ma + 4, f"{job['name']}: accepted {a - t0}, model {ma}"
        assert abs((e - t0) - me) <= 0.01 * me + 4, f"{job['name']}: ended {e - t0}, model {me}"
        rel.append((a - t0, e - t0))
    groups = 1 + sum(bool(job.get("after_previous")) for job in jobs[1:])
    assert len(periods) == groups, (periods, groups)
    assert sum(b for b, _ in periods) == sum(job["busy"] for job in jobs), periods
    cocotb.log.info("busy periods (busy, total): %s", periods)
    if P.get("summary"):
        with open(P["summary"], "w") as f:
            json.dump(dict(periods=periods, spans=rel, sim_cycles=cycles, wall_s=wall), f)
