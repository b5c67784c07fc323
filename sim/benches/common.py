"""Shared pieces of the unit benches: stimulus loading, clock, summary writing."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

__all__ = ["load_bench", "start_clock", "reset", "write_summary"]


def load_bench() -> dict:
    return json.loads(Path(os.environ["MOEFORGE_BENCH"]).read_text())


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
