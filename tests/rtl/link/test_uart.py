# amaranth: UnusedElaboratable=no
# (test_bad_parameters builds components whose constructor raises; they are never elaborated)

"""The UART PHY in Amaranth's simulator, and `MoESoC` over its pins, elaborated and linted.

`UARTTx` → `UARTRx` loopback checks every byte and, on the line itself, each bit's value and
length in cycles (start, eight data bits LSB first, stop). The receiver alone, driven bit by
bit from Python, takes bytes from a transmitter a few percent off its baud rate, ignores a
glitch, counts a framing error and an overrun. `MoESoC` with the UART phy answers HELLO over
its pins; both phys convert to Verilog with the port names the simulated device's harness
uses and pass the project's Verilator lint.
"""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from moeforge import AccelConfig
from moeforge.host_runtime.framing import FrameDecoder, FrameType, HelloReport, encode_frame
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.rtl.top.soc import MoESoC
from moeforge.rtl.link.uart import UARTRx, UARTTx, uart_divisor

TINY = "configs/tiny.toml"


def frame_bits(byte: int) -> list[int]:
    """The line levels of one 8N1 character: start, data LSB first, stop."""
    return [0] + [(byte >> i) & 1 for i in range(8)] + [1]


def line_levels(data: bytes, period: float, *, idle: int = 5) -> list[int]:
    """The rx line, one level a cycle, for `data` sent at `period` cycles a bit (may be
    fractional: a transmitter off the receiver's baud rate)."""
    bits = []
    for b in data:
        bits += [1] * idle + frame_bits(b)
    bits += [1] * idle
    return [bits[int(t / period)] for t in range(int(len(bits) * period))]


def test_loopback_bytes_and_bit_timing():
    divisor = 7
    rng = random.Random(11)
    data = bytes(rng.randrange(256) for _ in range(24)) + b"\x00\xff\x55\xaa"
    utx, urx = UARTTx(divisor=divisor), UARTRx(divisor=divisor)
    m = Module()
    m.submodules.tx, m.submodules.rx = utx, urx
    m.d.comb += urx.rx.eq(utx.tx)
    line, received, errors = [], bytearray(), []

    async def producer(ctx):
        for b in data:
            for _ in range(rng.choice([0, 0, 3, 40])):
                await ctx.tick()
            ctx.set(utx.i_data.valid, 1)
            ctx.set(utx.i_data.payload, b)
            await ctx.tick().until(utx.i_data.ready)
            ctx.set(utx.i_data.valid, 0)

    async def monitor(ctx):
        while True:
            _, _, level = await ctx.tick().sample(utx.tx)
            line.append(level)

    async def consumer(ctx):
        for _ in range(100 * divisor * len(data)):
            if len(received) == len(data):
                break
            ready = rng.random() < 0.5
            ctx.set(urx.o_data.ready, ready)
            _, _, valid, byte = await ctx.tick().sample(urx.o_data.valid, urx.o_data.payload)
            if ready and valid:
                received.append(byte)
        for _ in range(3 * divisor):
            await ctx.tick()
        errors.extend([ctx.get(urx.overruns), ctx.get(urx.frame_errors)])

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(consumer)
    sim.run()

    assert bytes(received) == data
    assert errors == [0, 0]
    # the line: each character's ten bits, `divisor` cycles each, stop bit at least one bit long
    t, chars = 0, []
    while t < len(line):
        if line[t] == 1:
            t += 1
            continue
        bits = frame_bits(data[len(chars)])
        for k, bit in enumerate(bits):
            cycles = line[t + k * divisor:t + (k + 1) * divisor]
            assert cycles == [bit] * divisor, (len(chars), k, cycles)
        chars.append(t)
        t += 10 * divisor
    assert len(chars) == len(data)


def run_rx(divisor, levels, *, ready=True):
    """Drive `UARTRx` with `levels`; return (bytes taken, overruns, frame errors)."""
    urx = UARTRx(divisor=divisor)
    got, counts = bytearray(), {}

    async def bench(ctx):
        ctx.set(urx.o_data.ready, int(ready))
        for level in levels:
            ctx.set(urx.rx, level)
            _, _, valid, byte = await ctx.tick().sample(urx.o_data.valid, urx.o_data.payload)
            if ready and valid:
                got.append(byte)
        counts["overruns"] = ctx.get(urx.overruns)
        counts["frame_errors"] = ctx.get(urx.frame_errors)
        counts["held"] = ctx.get(urx.o_data.payload) if ctx.get(urx.o_data.valid) else None

    sim = Simulator(urx)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return bytes(got), counts


@pytest.mark.parametrize("skew", [0.97, 1.0, 1.03])
def test_rx_tolerates_a_baud_rate_a_few_percent_off(skew):
    divisor = 20
    data = bytes(random.Random(5).randrange(256) for _ in range(12))
    got, counts = run_rx(divisor, line_levels(data, divisor * skew, idle=2))
    assert got == data
    assert counts["overruns"] == counts["frame_errors"] == 0


def test_rx_ignores_a_glitch_and_counts_a_framing_error():
    divisor = 8
    glitch = [1] * 10 + [0] * 2 + [1] * 30
    bad_stop = [1] * 5 + [lvl for b in frame_bits(0x3C)[:-1] + [0] for lvl in [b] * divisor]
    levels = glitch + bad_stop + [1] * 20 + line_levels(b"\x81", divisor)
    got, counts = run_rx(divisor, levels)
    assert got == b"\x81"
    assert counts["frame_errors"] == 1 and counts["overruns"] == 0


def test_rx_overrun_keeps_the_first_byte_and_counts_the_rest():
    got, counts = run_rx(6, line_levels(b"\x11\x22\x33", 6), ready=False)
    assert got == b""
    assert counts["held"] == 0x11 and counts["overruns"] == 2


def test_bad_parameters():
    with pytest.raises(ValueError, match="divisor"):
        UARTRx(divisor=3)
    with pytest.raises(TypeError, match="divisor"):
        UARTTx(divisor=8.0)
    assert uart_divisor(50e6, 3_000_000) == 17
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(10e6, 3_000_000)
    with pytest.raises(ValueError, match="off"):
        uart_divisor(50e6, 11_000_000)           # 4.5 cycles a bit: rounds to 5, 10 % off
    cfg = AccelConfig.from_toml(TINY)
    with pytest.raises(ValueError, match="phy"):
        MoESoC(cfg, phy="spi")
    with pytest.raises(ValueError, match="no UART"):
        MoESoC(cfg, baud=115200)
    with pytest.raises(ValueError, match="max_payload"):
        MoESoC(cfg, max_payload=16)


def test_soc_answers_hello_over_the_uart_pins():
    """The whole device on a board's pins: 8 cycles a bit (a fast baud keeps the test short)."""
    cfg = AccelConfig.from_toml(TINY)
    divisor = 8
    soc = MoESoC(cfg, phy="uart", clock_hz=8e6, baud=1e6, max_payload=128)
    assert soc.divisor == divisor
    levels = line_levels(encode_frame(FrameType.HELLO, 42), divisor, idle=1)
    tx_line = []

    async def bench(ctx):
        for level in levels:
            ctx.set(soc.rx, level)
            _, _, tx = await ctx.tick().sample(soc.tx)
            tx_line.append(tx)
        idle = 0
        while idle < 12 * divisor:                  # until the device went quiet
            _, _, tx, busy = await ctx.tick().sample(soc.tx, soc.busy)
            tx_line.append(tx)
            idle = 0 if busy else idle + 1

    sim = Simulator(soc)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    received = decode_line(tx_line, divisor)
    frame, = FrameDecoder().feed(received)
    assert (frame.type, frame.seq) == (FrameType.RSP, 42)
    report = HelloReport.parse(frame.payload)
    assert report.config_hash == bytes.fromhex(cfg.content_hash()[:16])
    assert report.max_payload == 128


def decode_line(levels, divisor) -> bytes:
    """8N1 characters from a per-cycle line trace, sampled mid-bit."""
    out, t = bytearray(), 0
    while t < len(levels):
        if levels[t] == 1:
            t += 1
            continue
        mid = t + divisor // 2
        if mid + 9 * divisor >= len(levels):
            break
        out.append(sum(levels[mid + (i + 1) * divisor] << i for i in range(8)))
        assert levels[mid + 9 * divisor] == 1, "stop bit"
        t = mid + 9 * divisor
    return bytes(out)


@pytest.mark.verilator
@pytest.mark.parametrize("phy", ["stream", "uart"])
def test_soc_converts_and_lints(phy):
    """The device as the simulation and a board's pins see it: the SoC on its expert store
    (here the backing-memory model) leaves only the link's pins and ``busy`` outside."""
    from moeforge.sim.tops import SimulatedSoC
    from moeforge.sim.toolchain import lint_problems
    cfg = AccelConfig.from_toml(TINY)
    soc = SimulatedSoC(cfg, phy=phy)
    ports = {p.name: (p.direction, p.width) for p in verilog_ports(soc).values()}
    if phy == "stream":
        assert ports == {"rx__valid": ("input", 1), "rx__ready": ("output", 1),
                         "rx__payload": ("input", 8), "tx__valid": ("output", 1),
                         "tx__ready": ("input", 1), "tx__payload": ("output", 8),
                         "busy": ("output", 1)}
    else:
        assert ports == {"rx": ("input", 1), "tx": ("output", 1), "busy": ("output", 1)}
    text = to_verilog(soc, "moe_soc")
    problems = lint_problems(text, "moe_soc")
    assert problems == [], f"MoESoC phy={phy}: " + "; ".join(problems[:5])
