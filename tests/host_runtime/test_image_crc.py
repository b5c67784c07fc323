"""The accelerator's image CRC (``READ_IMAGE_CRC``) in Amaranth's simulator against ``zlib.crc32``.

Random weight writes (router, backing memory, shared image), output scales, tokens, and writes
that fail in every way a write can fail (out of range, too short, too long, empty) go to a
`MoEAccelerator` with random stalls on both streams; after each, ``READ_IMAGE_CRC`` must equal
the CRC-32 of exactly the words the device wrote (and the scales it took), computed here from
the packets by the command table's rules, not by the device's code.
"""

import random
import struct
import zlib

import pytest
from amaranth.sim import Simulator

from moeforge import AccelConfig
from moeforge.rtl.top.accelerator import MoEAccelerator
from moeforge.spec.protocol import (CommandLayout, Op, Status, WriteRun, encode, image_bytes,
                                    image_crc)

TINY = "configs/tiny.toml"


def _shared_config() -> AccelConfig:
    """A small layer with a shared expert, so WRITE_SHARED has a memory to write."""
    from moeforge.hls_models.hf_random import family_configs
    base = family_configs()["qwen2_moe"]
    return base.replace(name="crc-shared", d_model=32, mac_rows=2, mac_cols=4, token_buffer_depth=8)


def _written(packet: bytes, lay: CommandLayout) -> tuple[int, bytes]:
    """(status, the image bytes the device takes) of one packet, by the command table."""
    op = packet[0]
    if op in (Op.WRITE_ROUTER, Op.WRITE_MEMORY, Op.WRITE_SHARED):
        if len(packet) < 9:
            return Status.BAD_LENGTH, b""
        addr, count = struct.unpack_from("<II", packet, 1)
        nbytes = lay.router_bytes if op == Op.WRITE_ROUTER else lay.cols
        end = {Op.WRITE_ROUTER: lay.router_words, Op.WRITE_MEMORY: lay.memory_words,
               Op.WRITE_SHARED: lay.shared_image_words}[op]
        data = packet[9:]
        if addr + count > end:
            return Status.OUT_OF_RANGE, b""
        words = min(count, len(data) // nbytes)           # whole words that arrived
        ok = len(data) == count * nbytes
        return (Status.OK if ok else Status.BAD_LENGTH), data[:words * nbytes]
    if op == Op.SET_SCALE:
        if len(packet) != 5:
            return Status.BAD_LENGTH, b""
        x_ok = 1 <= packet[4] <= 8 if lay.value_bytes == 2 else packet[4] == 0    # S_x
        return (Status.OK, packet[1:]) if 1 <= packet[3] <= 62 and x_ok else (Status.OUT_OF_RANGE, b"")
    return Status.OK, b""


def _packets(cfg: AccelConfig, lay: CommandLayout, rng: random.Random, n: int):
    regions = [(Op.WRITE_ROUTER, lay.router_words, lay.router_bytes),
               (Op.WRITE_MEMORY, lay.memory_words, lay.cols)]
    if lay.shared_image_words:
        regions.append((Op.WRITE_SHARED, lay.shared_image_words, lay.cols))
    for _ in range(n):
        op, end, nbytes = rng.choice(regions)
        count = rng.randint(1, 6)
        addr = rng.randrange(end - count + 1)
        words = [rng.getrandbits(8 * nbytes) for _ in range(count)]
        packet = encode(op, addr, words, nbytes)
        kind = rng.random()
        if kind < 0.08:
            packet = encode(op, end - count + 1, words, nbytes)          # one word too far
        elif kind < 0.16:
            packet = packet[:rng.randrange(10, len(packet))]             # ends early
        elif kind < 0.22:
            packet = packet + bytes(rng.randint(1, 3))                   # longer than its count
        elif kind < 0.25:
            packet = encode(op, addr, [], nbytes)                        # count 0
        elif kind < 0.35:
            packet = encode(Op.SET_SCALE, rng.getrandbits(16), rng.choice([0, 1, 17, 62, 63]),
                            rng.choice([0, 0, 1, 8, 9]))
        elif kind < 0.42:
            packet = encode(Op.WRITE_TOKENS, 0, [[rng.randrange(-128, 128) for _ in range(cfg.d_model)]],
                            lay.value_bytes)
        elif kind < 0.45:
            packet = encode(Op.INFO)
        yield packet


def _run(cfg: AccelConfig, n: int, seed: int) -> int:
    dut = MoEAccelerator(cfg)
    lay = dut.layout
    rng = random.Random(seed)
    packets = list(_packets(cfg, lay, rng, n))
    checked = 0

    async def command(ctx, packet: bytes) -> bytes:
        cmd, rsp = dut.i_cmd, dut.o_rsp
        for i, b in enumerate(packet):
            while rng.random() < 0.2:
                ctx.set(cmd.valid, 0)
                await ctx.tick()
            ctx.set(cmd.valid, 1)
            ctx.set(cmd.payload, {"data": b, "last": i == len(packet) - 1})
            await ctx.tick().until(cmd.ready)
        ctx.set(cmd.valid, 0)
        out = bytearray()
        while True:
            ready = rng.random() < 0.7
            ctx.set(rsp.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(rsp.valid, rsp.payload)
            if ready and valid:
                out.append(payload.data)
                if payload.last:
                    ctx.set(rsp.ready, 0)
                    return bytes(out)

    async def bench(ctx):
        nonlocal checked
        crc = 0
        got = await command(ctx, encode(Op.READ_IMAGE_CRC))
        assert got == bytes([Status.OK]) + struct.pack("<I", 0)          # nothing written yet
        for i, packet in enumerate(packets):
            status, data = _written(packet, lay)
            rsp = await command(ctx, packet)
            assert rsp[0] == status, (i, packet.hex(), rsp.hex())
            crc = zlib.crc32(data, crc)
            if status == Status.OK:
                assert image_bytes(packet) == data, (i, packet.hex())
            got = await command(ctx, encode(Op.READ_IMAGE_CRC))
            assert got == bytes([Status.OK]) + struct.pack("<I", crc), (i, packet.hex(), got.hex())
            checked += 1
        assert await command(ctx, encode(Op.READ_IMAGE_CRC) + b"\x00") == bytes([Status.BAD_LENGTH])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return checked


@pytest.mark.parametrize("config,seed", [("tiny", 1), ("shared", 2)])
def test_image_crc_is_zlib_of_the_words_written(config, seed):
    cfg = AccelConfig.from_toml(TINY) if config == "tiny" else _shared_config()
    assert _run(cfg, 60, seed) == 60


def test_image_crc_of_runs_ignores_how_they_are_cut():
    """`image_crc` from the runs equals the CRC of the image bytes of their packets, whatever
    the packet size; a flipped byte in one packet changes it."""
    rng = random.Random(3)
    runs = [WriteRun(Op.WRITE_MEMORY, 5, tuple(rng.getrandbits(32) for _ in range(40)), 4),
            WriteRun(Op.WRITE_ROUTER, 0, tuple(rng.getrandbits(24) for _ in range(7)), 3)]
    want = image_crc(runs, (40000, 17, 3), crc=0x1234)
    for size in (13, 20, 64, 1024):
        crc = 0x1234
        for run in runs:
            for p in run.packets(size):
                crc = zlib.crc32(image_bytes(p), crc)
        crc = zlib.crc32(image_bytes(encode(Op.SET_SCALE, 40000, 17, 3)), crc)
        assert crc == want, size
    p = bytearray(next(runs[0].packets(64)))
    p[12] ^= 1
    assert zlib.crc32(image_bytes(bytes(p))) != zlib.crc32(image_bytes(next(runs[0].packets(64))))
    assert image_bytes(encode(Op.WRITE_TOKENS, 0, [[1, 2]], 1)) == b"" == image_bytes(encode(Op.INFO))
