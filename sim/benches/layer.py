"""cocotb bench of the whole layer (`AcceleratorWithMemory`), run by `moeforge sim` (no --unit)
and tests/rtl/top/test_accelerator.py.

It speaks the accelerator's command protocol (`moeforge.rtl.commands`) on ``i_cmd``/``o_rsp``,
byte by byte, with random stalls on both streams. ``MOEFORGE_BENCH`` names a JSON file:

``i_cmd``, ``o_rsp``
    Verilog stream prefixes;
``steps``
    each ``{name, packet (hex), status, expected, max_cycles}``: the command packet, the status
    it must be answered with, and for ``READ_OUTPUT`` the expected tokens (``d_model`` signed
    ints each, from ``QuantizedMoELayer.forward_int``), compared bit-exact;
``in_stall``, ``out_stall``, ``d_model``.

``nonce``, ``summary``
    from the tool: the summary file to write and the run's nonce to write into it.

Summary (`common.write_summary`): ``compared`` (output tokens and elements compared),
``mismatches`` (elements that differ), ``responses`` (the data of every response, hex),
``sim_cycles``, ``wall_s``, ``failure`` (the first failure, named by the scoreboard: token,
element, both values, cycle). It is written however the test ends, so a run that stopped early
says how far it got.
"""

import time

import cocotb
from cocotb.triggers import RisingEdge
from cocotb.utils import get_sim_time

from moeforge.sim.benches.common import load_bench, reset, start_clock, write_summary
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import StreamDriver, StreamSink


class CommandLink:
    """Sends command packets on ``i_cmd`` and collects response packets from ``o_rsp``."""

    def __init__(self, dut, b, seed):
        self.dut = dut
        self.tx = StreamDriver(dut, b["i_cmd"], dut.clk, stall_prob=b["in_stall"], seed=seed)
        self.rx = StreamSink(dut, b["o_rsp"], dut.clk, stall_prob=b["out_stall"], seed=seed + 1,
                             callback=self._byte)
        self.packets, self.current, self.cycle = [], [], 0
        self.rx.start()

    def _byte(self, beat):
        self.current.append(beat.payload & 0xFF)
        self.cycle = beat.cycle
        if beat.payload >> 8 & 1:
            self.packets.append(bytes(self.current))
            self.current = []

    async def command(self, packet: bytes, max_cycles: int) -> bytes:
        n = len(self.packets)
        await self.tx.send([b | (i == len(packet) - 1) << 8 for i, b in enumerate(packet)])
        for _ in range(max_cycles):
            if len(self.packets) > n:
                return self.packets[n]
            await RisingEdge(self.dut.clk)
        raise AssertionError(f"no response to command 0x{packet[0]:02x} within {max_cycles} cycles")


def _signed(b: int) -> int:
    return b - 256 if b >= 128 else b


async def run(dut, b: dict) -> None:
    """Send every step of `b`, check each status and every expected output; write the summary."""
    start_clock(dut)
    getattr(dut, b["i_cmd"] + "__valid").value = 0
    getattr(dut, b["o_rsp"] + "__ready").value = 0
    await reset(dut, 3)
    await RisingEdge(dut.clk)
    wall, sim_ns = time.perf_counter(), get_sim_time("ns")
    link = CommandLink(dut, b, cocotb.RANDOM_SEED)
    D = b["d_model"]
    responses, boards, failure = [], [], None
    try:
        for step in b["steps"]:
            rsp = await link.command(bytes.fromhex(step["packet"]), step["max_cycles"])
            responses.append(rsp.hex())
            assert rsp[0] == step["status"], \
                f"{step['name']}: status {rsp[0]}, expected {step['status']} (response {rsp.hex()})"
            if step.get("expected") is not None:
                got = rsp[1:]
                received = [[_signed(v) for v in got[t * D:(t + 1) * D]] for t in range(len(got) // D)]
                sb = Scoreboard(step["name"], stop=False)
                boards.append(sb)
                try:
                    sb.compare(step["expected"], received, cycles=[link.cycle] * len(received))
                except AssertionError as exc:
                    failure = failure or str(exc)
    finally:
        link.rx.stop()
        write_summary(b, boards, responses=responses, sim_cycles=(get_sim_time("ns") - sim_ns) / 10,
                      wall_s=time.perf_counter() - wall)
    assert failure is None, failure


@cocotb.test()
async def layer_commands(dut):
    await run(dut, load_bench())
