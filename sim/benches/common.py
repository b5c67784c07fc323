"""Shared pieces of the unit benches: stimulus loading, clock and reset, port names, token
beats, the weight-memory start of the engine benches, summary writing, and the image write of
the benches that also run in Amaranth's simulator."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cocotb
from amaranth.hdl import Value
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from moeforge.rtl.export import verilog_ports
from moeforge.sim.stream import StreamDriver, StreamSink, pack_layout

__all__ = ["load_bench", "load_params", "start_clock", "reset", "write_summary", "stream_prefix",
           "harness_ports", "token_beats", "job_payloads", "start_weight_memory", "expect_jobs",
           "engine_streams", "expect_quiet", "amaranth_write"]


def load_bench() -> dict:
    return json.loads(Path(os.environ["MOEFORGE_BENCH"]).read_text())


def load_params(variable: str = "MOEFORGE_TEST_PARAMS") -> dict:
    """A bench module's parameters: in a simulation, the JSON file `variable` names (``{}``
    if it names none); outside one, where the module is imported for its pytest-side helpers,
    ``{}`` whatever the environment holds."""
    path = os.environ.get(variable) if cocotb.is_simulation else None
    return json.loads(Path(path).read_text()) if path else {}


def start_clock(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())


async def reset(dut, cycles: int = 2):
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def write_summary(bench: dict, boards: Sequence, *, side: Sequence = (), **fields) -> None:
    """Write what `boards` (counting `Scoreboard`\\ s) compared to the summary file the tool
    named in `bench` (``summary``), with the run's ``nonce``: the only evidence a verdict is
    computed from. `side` boards check more fields of the same tokens: their elements and
    mismatches count, their tokens do not. Nothing is written when the bench names no
    summary file (a test that reads the cocotb results instead)."""
    path = bench.get("summary")
    if not path:
        return
    every = [*boards, *side]
    failure = next((b.failure for b in every if b.failure is not None), None)
    data = dict(nonce=bench.get("nonce"),
                compared={"tokens": sum(b.compared for b in boards),
                          "elements": sum(b.elements for b in every)},
                mismatches=sum(b.mismatches for b in every),
                unexpected=sum(b.unexpected for b in every), failure=failure, **fields)
    Path(path).write_text(json.dumps(data, indent=1))


# ---------------------------------------------------------------- the pytest / tool side

def stream_prefix(ports, stream: str) -> str:
    """The Verilog prefix of `stream` (its ports are ``<prefix>__valid`` ...) in `ports`, the
    `rtl.export.verilog_ports` of the design a bench drives."""
    return ports[f"{stream}.valid"].name.removesuffix("__valid")


def harness_ports(harness) -> dict[str, str]:
    """The ``ports`` the GEMM and expert-engine benches read, from their `WeightMemoryHarness`:
    the prefixes of ``i_job``, ``i_x`` and ``o_y``, the names of ``w_wr.addr``, ``w_wr.data``,
    ``w_wr.en``, ``busy_cycles`` and ``total_cycles``."""
    ports = verilog_ports(harness)
    return {**{s: stream_prefix(ports, s) for s in ("i_job", "i_x", "o_y")},
            **{n: ports[n].name for n in ("w_wr.addr", "w_wr.data", "w_wr.en", "busy_cycles",
                                           "total_cycles")}}


def token_beats(layout, tokens, lanes: int, slices: int) -> list[int]:
    """Packed payloads of `tokens` (lists of ints) as `slices` beats of `lanes` values each
    (``data``), ``last`` on each token's final beat: the input stream of the router and of
    the engines, in either simulator."""
    return [pack_layout(layout, {"data": tok[s * lanes:(s + 1) * lanes], "last": int(s == slices - 1)})
            for tok in tokens for s in range(slices)]


def job_payloads(eng, jobs) -> list[int]:
    """Packed ``i_job`` payloads of an engine's `jobs` (each ``{x, w_base, ...}``)."""
    return [pack_layout(eng.job_layout, {"n_tokens": len(job["x"]), "w_base": job["w_base"]})
            for job in jobs]


# ---------------------------------------------------------------- the cocotb side

async def start_weight_memory(dut, ports: dict, image) -> None:
    """Start the clock, reset with ``i_job``, ``i_x`` and ``o_y`` idle, then write `image`
    (``[addr, word]`` pairs) into the `WeightMemoryHarness`'s memory, one word per cycle.
    `ports` as `harness_ports` names them."""
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for s in ("i_job", "i_x"):
        getattr(dut, f"{ports[s]}__valid").value = 0
    getattr(dut, f"{ports['o_y']}__ready").value = 0
    addr, data, en = (getattr(dut, ports[n]) for n in ("w_wr.addr", "w_wr.data", "w_wr.en"))
    en.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for a, word in image:
        addr.value, data.value, en.value = a, word, 1
        await RisingEdge(dut.clk)
    en.value = 0
    await RisingEdge(dut.clk)


def expect_jobs(sb, jobs, perturb=None) -> None:
    """Queue every job's ``expected`` beats on the scoreboard `sb`, one value raised by one
    where `perturb` (``[job, beat, lane]``) says, to prove the check can fail."""
    for j, job in enumerate(jobs):
        expected = [list(e) for e in job["expected"]]
        if perturb is not None and perturb[0] == j:
            expected[perturb[1]][perturb[2]] += 1
        sb.add_expected_many(expected)


def engine_streams(dut, ports: dict, *, in_stall: float, out_stall: float, seed: int, callback):
    """``(sink, job_driver, x_driver)`` of an engine bench, none started yet: the ``o_y`` sink
    (`callback` for each beat) and the ``i_job`` and ``i_x`` drivers, each with its own stalls
    seeded from `seed`."""
    sink = StreamSink(dut, ports["o_y"], dut.clk, stall_prob=out_stall, seed=seed + 1,
                      callback=callback)
    job_drv = StreamDriver(dut, ports["i_job"], dut.clk, stall_prob=in_stall, seed=seed + 2)
    x_drv = StreamDriver(dut, ports["i_x"], dut.clk, stall_prob=in_stall, seed=seed + 3)
    return sink, job_drv, x_drv


async def expect_quiet(dut, prefix: str, cycles: int = 20) -> None:
    """Let `cycles` cycles pass, then fail if the stream `prefix` still offers a beat: nothing
    extra may come out once every expected beat has. Returns in that cycle's ``ReadOnly``."""
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert not int(getattr(dut, f"{prefix}__valid").value), "an extra output beat"


# ---------------------------------------------------------------- Amaranth's simulator

async def amaranth_write(ctx, wr, image) -> None:
    """Write `image` (``[addr, word]`` pairs) through the ``{addr, data, en}`` port `wr` in an
    Amaranth testbench, one word per cycle; ``en`` is low again when it returns."""
    for addr, word in image:
        ctx.set(wr.addr, addr)
        ctx.set(Value.cast(wr.data), word)
        ctx.set(wr.en, 1)
        await ctx.tick()
    ctx.set(wr.en, 0)
