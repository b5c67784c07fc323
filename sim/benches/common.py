"""Shared pieces of the unit benches: stimulus loading, clock, summary writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

__all__ = ["load_bench", "start_clock", "reset", "write_summary", "count_mismatches"]


def load_bench() -> dict:
    return json.loads(Path(os.environ["MOEFORGE_BENCH"]).read_text())


def start_clock(dut):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())


async def reset(dut, cycles: int = 2):
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def count_mismatches(expected: list, received: list) -> int:
    """Tokens that differ, plus tokens missing or unexpected."""
    diff = sum(1 for e, r in zip(expected, received) if list(e) != list(r))
    return diff + abs(len(expected) - len(received))


def write_summary(**fields) -> None:
    path = Path(os.environ["MOEFORGE_BENCH"]).with_suffix(".summary.json")
    path.write_text(json.dumps(fields, indent=2))
