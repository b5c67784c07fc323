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
``out_ready_every`` (optional): ``null`` or ``N``
    ``expert_ffn_jobs``: ``o_y`` ready in one cycle of every ``N`` instead (``out_stall``
    unused), so that a beat waits in the engine's output stages for ``N - 1`` cycles at a time;
``perturb``: ``null`` or ``[job, beat, lane]``
    add one to that expected value, to prove the check can fail;
``summary``: ``null`` or a path
    where the test writes the busy periods (``expert_ffn_throughput``: and the job spans),
    simulated cycles and wall time (for bench/mac_util.py and the command line);
    ``expert_ffn_jobs`` writes it through `common.write_summary`, with what it compared and
    the tool's ``nonce``, however the test ends.

The pytest side's pieces live here too, so that the tests and the bench scripts build the
same stimulus: `engine_kwargs`, `expected_beats`, `set_models`, and `amaranth_jobs`, the same
jobs in Amaranth's simulator.
"""

import itertools
import json
import time
from dataclasses import dataclass

import cocotb
from amaranth.utils import ceil_log2
from cocotb.triggers import Event, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from moeforge.rtl.expert.expert_ffn import ExpertFFN, ExpertImageLayout
from moeforge.sim.benches.common import (amaranth_write, engine_streams, expect_jobs, expect_quiet,
                                         job_payloads, load_params, start_weight_memory, token_beats,
                                         write_summary)
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamMonitor, StreamSink, unpack_layout

P = load_params()


def engine():
    return ExpertFFN(**P["engine"])


def port(dut, name):
    return getattr(dut, P["ports"][name])


# ---------------------------------------------------------------- the pytest / tool side

def engine_kwargs(cfg, experts: int) -> dict:
    """The `ExpertFFN` keyword arguments of `cfg` (the bench's ``engine``), with weight
    addresses for `experts` images."""
    words = ExpertImageLayout.from_config(cfg).words
    return dict(activation=cfg.activation, d_model=cfg.d_model, d_ff=cfg.d_ff, rows=cfg.mac_rows,
                cols=cfg.mac_cols, t_max=cfg.token_buffer_depth, rotation=cfg.rotation_block,
                weight_bits=cfg.weight_bits, w_addr_width=max(1, ceil_log2(experts * words)))


def expected_beats(o, rows: int) -> list[list[int]]:
    """``o_y`` beats of one job whose outputs are the tensor `o` (``[T, D]``, from
    ``QuantizedMoELayer.expert_int``): per token ``D / rows`` beats ``[rows values, token, last]``."""
    T, D = o.shape
    return [o[t, g * rows:(g + 1) * rows].tolist() + [t, int(g == D // rows - 1)]
            for t in range(T) for g in range(D // rows)]


def set_models(eng, jobs) -> None:
    """Set each job's ``model`` span from `ExpertFFN.schedule` of its group (the first job,
    and each job with ``after_previous``, starts a group)."""
    groups = []
    for j, job in enumerate(jobs):
        if j == 0 or job.get("after_previous"):
            groups.append([])
        groups[-1].append(job)
    for group in groups:
        for job, span in zip(group, eng.schedule([len(job["x"]) for job in group])):
            job["model"] = list(span)


@dataclass(frozen=True)
class AmaranthRun:
    """What `amaranth_jobs` saw: the ``o_y`` beats; ``busy_cycles`` and ``total_cycles`` at the
    end; each job's ``(accepted, ended)`` cycle counted from the first acceptance; the cycles
    from the first job offered to the last beat, and their wall time (the image write apart)."""

    outs: list
    counters: tuple[int, int]
    spans: list
    cycles: int
    wall_s: float


def amaranth_jobs(eng, harness, image, jobs, *, max_cycles: int = 100_000) -> AmaranthRun:
    """Run `jobs` back to back on `harness` (a `WeightMemoryHarness` of `eng`) in Amaranth's
    simulator after writing `image`, no stalls: each job offered until it is taken, token beats
    as soon as they are, ``o_y`` always ready."""
    from amaranth.sim import Simulator

    job_beats = job_payloads(eng, jobs)
    x_beats = token_beats(eng.x_layout, [t for job in jobs for t in job["x"]], eng.cols,
                          eng.image.s_d)
    ends = list(itertools.accumulate(len(job["expected"]) for job in jobs))
    outs, accepted, ended, seen = [], [], [], {}

    async def bench(ctx):
        await amaranth_write(ctx, harness.w_wr, image)
        ctx.set(harness.o_y.ready, 1)
        wall = time.perf_counter()
        cycle, nj, nx = 0, 0, 0
        while len(outs) < ends[-1] and cycle < max_cycles:
            ctx.set(harness.i_job.valid, nj < len(job_beats))
            ctx.set(harness.i_job.payload.as_value(), job_beats[min(nj, len(jobs) - 1)])
            ctx.set(harness.i_x.valid, nx < len(x_beats))
            ctx.set(harness.i_x.payload.as_value(), x_beats[min(nx, len(x_beats) - 1)])
            took_job = ctx.get(harness.i_job.valid) and ctx.get(harness.i_job.ready)
            took_x = ctx.get(harness.i_x.valid) and ctx.get(harness.i_x.ready)
            if ctx.get(harness.o_y.valid):
                v = unpack_layout(eng.y_layout, ctx.get(harness.o_y.payload.as_value()))
                outs.append(v["data"] + [v["token"], v["last"]])
                if len(outs) in ends:
                    ended.append(cycle)
            if took_job:
                accepted.append(cycle)
            await ctx.tick()
            cycle += 1
            nj, nx = nj + bool(took_job), nx + bool(took_x)
        seen.update(counters=(ctx.get(harness.busy_cycles), ctx.get(harness.total_cycles)),
                    cycles=cycle, wall=time.perf_counter() - wall)

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return AmaranthRun(outs=outs, counters=seen["counters"],
                       spans=[(a - accepted[0], e - accepted[0]) for a, e in zip(accepted, ended)],
                       cycles=seen["cycles"], wall_s=seen["wall"])


# ---------------------------------------------------------------- the cocotb side

async def run_jobs(dut, jobs, *, in_stall, out_stall, seed, perturb=None, sb=None,
                   out_every=None):
    """Run `jobs`: each presented as soon as the engine takes it (it prefetches the next job
    while one computes), or, if the job says ``after_previous``, once the previous one ended.
    The outputs go to `sb` (a counting `Scoreboard` by default). ``o_y`` is ready with
    probability ``1 - out_stall``, or, given `out_every`, in one cycle of every `out_every`.

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

    expect_jobs(sb, jobs, perturb)
    sink, job_drv, x_drv = engine_streams(dut, P["ports"], in_stall=in_stall, out_stall=out_stall,
                                          seed=seed, callback=received)
    if out_every is not None:                     # replaces the random sink (not started)
        sink = StreamSink(dut, P["ports"]["o_y"], dut.clk, callback=received,
                          pause=itertools.cycle([True] * (out_every - 1) + [False]))
        out_stall = 0.0
    job_mon = StreamMonitor(dut, P["ports"]["i_job"], dut.clk).start()
    x_mon = StreamMonitor(dut, P["ports"]["i_x"], dut.clk).start()
    sink.start()
    job_beats = job_payloads(eng, jobs)

    async def send_jobs():
        for j, beat in enumerate(job_beats):
            if j and jobs[j].get("after_previous"):
                await job_done[j - 1].wait()
                await RisingEdge(dut.clk)
            await job_drv.send([beat])

    cocotb.start_soon(send_jobs())
    x_drv.start(token_beats(eng.x_layout, [t for job in jobs for t in job["x"]], eng.cols,
                            eng.image.s_d))

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
    if out_every is not None:
        bound += sb.expected_total * out_every
    await sink.wait_for(sb.expected_total, max_cycles=bound)
    await expect_quiet(dut, P["ports"]["o_y"])
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
    await start_weight_memory(dut, P["ports"], P["image"])
    wall = time.perf_counter()
    sim_ns = get_sim_time("ns")
    sb = Scoreboard("expert_ffn", stop=False)
    periods = None
    try:
        periods, _ = await run_jobs(dut, P["jobs"], in_stall=P["in_stall"], out_stall=P["out_stall"],
                                    seed=cocotb.RANDOM_SEED, perturb=P.get("perturb"), sb=sb,
                                    out_every=P.get("out_ready_every"))
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
    await start_weight_memory(dut, P["ports"], P["image"])
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
