"""`OnChipExpertStore`: the SoC's memory port in block RAM.

Random writes, then random bursts under random ``mem_resp`` stalls in the Amaranth simulator,
every word compared with a Python model of the memory (and their count); the cycle model with
``mem_resp.ready`` high; the sizing, the port's shapes and the budget refusal; and, marked
``synthesis``, block RAM inferred by Yosys ``synth_ecp5`` (DP16KD, no LUT RAM, no memory left
unmapped).
"""

import dataclasses
import json
import random
import subprocess
import tempfile
from pathlib import Path

import pytest
from amaranth.hdl import Fragment, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from moeforge import AccelConfig
from moeforge.errors import ConfigError
from moeforge.rtl.memory.onchip_store import (OnChipExpertStore, block_mode, block_plan,
                                              dp16kd_blocks)
from moeforge.rtl.top.soc import MEMORY_PORT, MoESoC
from moeforge.spec.protocol import CommandLayout

ROOT = Path(__file__).resolve().parents[3]
TINY = ROOT / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def cfg():
    return AccelConfig.from_toml(TINY)


# tiny and two variants: each lays its words out differently in blocks (`block_plan`)
VARIANTS = {
    "tiny": {},                                                  # 13 banks of 2 slices of 18 bits
    "tiny8": dict(n_experts=8),                                  # 13 banks of 4 slices of 9 bits
    "small": dict(d_model=16, d_ff=16, n_experts=2, top_k=1),    # 484 words: one bank
}
PLANS = {"tiny": (13, 18), "tiny8": (13, 9), "small": (1, 36)}


def _config(name: str) -> AccelConfig:
    cfg = AccelConfig.from_toml(TINY)
    return dataclasses.replace(cfg, name=name, **VARIANTS[name]) if VARIANTS[name] else cfg


def _run(store, phases, *, p_ready=1.0, p_gap=0.0, seed=0, tail=40):
    """Drive `store`: each phase writes its ``(addr, word)`` pairs on ``mem_wr``, then requests
    its ``(addr, length)`` bursts on ``mem_req`` (``p_gap``: chance of idle cycles before one)
    while a consumer takes words with ``mem_resp.ready`` high with chance ``p_ready``; the next
    phase starts when every word of this one has arrived. Returns the words taken, the cycle
    each request was accepted in and the cycle each word transferred in (cycles from 0), and
    the words transferred after the last expected one (in the `tail` cycles that follow it)."""
    rng = random.Random(seed)
    expected = [sum(length for _, length in reqs) for _, reqs in phases]
    got, got_cycles, accepted = [], [], []
    extra = []

    async def producer(ctx):
        t = 0
        for p, (writes, reqs) in enumerate(phases):
            while len(got) < sum(expected[:p]):
                await ctx.tick()
                t += 1
            for addr, word in writes:
                ctx.set(store.mem_wr.addr, addr)
                ctx.set(store.mem_wr.data, word)
                ctx.set(store.mem_wr.en, 1)
                await ctx.tick()
                t += 1
            ctx.set(store.mem_wr.en, 0)
            for addr, length in reqs:
                if rng.random() < p_gap:
                    for _ in range(rng.randint(1, 4)):
                        await ctx.tick()
                        t += 1
                ctx.set(store.mem_req.payload.addr, addr)
                ctx.set(store.mem_req.payload.length, length)
                ctx.set(store.mem_req.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(store.mem_req.ready)
                    t += 1
                    if ready:
                        accepted.append(t - 1)
                        break
                ctx.set(store.mem_req.valid, 0)

    async def consumer(ctx):
        # ends `tail` cycles after the last expected word, or after `stuck` cycles without a
        # word (a store that lost some never delivers them all)
        t, total, idle, stuck = 0, sum(expected), 0, 5000
        while idle < (tail if len(got) >= total else stuck):
            ready = len(got) >= total or rng.random() < p_ready
            ctx.set(store.mem_resp.ready, ready)
            _, _, valid, word = await ctx.tick().sample(store.mem_resp.valid,
                                                        store.mem_resp.payload.data)
            t += 1
            idle += 1
            if valid and ready:
                if len(got) >= total:
                    extra.append(word)
                got.append(word)
                got_cycles.append(t - 1)
                idle = 0

    sim = Simulator(store)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    return got, accepted, got_cycles, extra


def _random_phases(store, rng, *, n_writes, n_reqs, phases=2):
    """Random writes (random addresses, duplicates included) and random bursts over the whole
    store, the bursts of each phase with the Python model's words they must return."""
    model = [0] * store.depth                   # the memory starts as zeros
    out, words = [], []
    for _ in range(phases):
        writes = [(rng.randrange(store.depth), rng.getrandbits(store.word_bits))
                  for _ in range(n_writes)]
        # the first and last word of each bank
        writes += [(a, rng.getrandbits(store.word_bits)) for first, n, _ in store.plan
                   for a in (first, first + n - 1)]
        rng.shuffle(writes)
        for a, w in writes:
            model[a] = w
        # bursts across a bank boundary and to the last word
        reqs = [(first - 3, store.burst) for first, _, _ in store.plan[1:]]
        reqs.append((store.depth - store.burst, store.burst))
        for _ in range(n_reqs):
            length = rng.choice([0, 1, store.burst, rng.randint(1, store.burst)])
            # most bursts over written words, so zeros cannot pass for data
            base = rng.choice(writes)[0] if rng.random() < 0.7 else rng.randrange(store.depth)
            reqs.append((min(base, store.depth - max(length, 1)), length))
        rng.shuffle(reqs)
        for addr, length in reqs:
            words += model[addr:addr + length]
        out.append((writes, reqs))
    return out, words


@pytest.mark.parametrize("name, read_stages", [("tiny", 1), ("tiny", 2), ("tiny", 3),
                                               ("tiny8", 2), ("small", 1), ("small", 2)])
def test_random_bursts_under_stalls_are_every_word_once(name, read_stages):
    rng = random.Random(100 + read_stages)
    store = OnChipExpertStore(_config(name), read_stages=read_stages)
    assert (len(store.plan), store.plan[0][2]) == PLANS[name]
    phases, words = _random_phases(store, rng, n_writes=300, n_reqs=120)
    got, accepted, _, extra = _run(store, phases, p_ready=0.45, p_gap=0.3, seed=read_stages)
    assert extra == [], f"{len(extra)} words after the last one asked for"
    assert len(got) == len(words)
    assert got == words
    assert len(accepted) == sum(len(reqs) for _, reqs in phases)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_a_store_that_reads_past_its_buffer_loses_words(name):
    """The perturbation: one credit more than the output buffer has entries. The same bench
    must see words lost or overwritten under stalls (so it does fill the buffer), and the store
    as built must not."""
    rng = random.Random(7)
    cfg = _config(name)
    store = OnChipExpertStore(cfg)
    phases, words = _random_phases(store, rng, n_writes=200, n_reqs=60, phases=1)
    got, *_ = _run(store, phases, p_ready=0.3, seed=3)
    assert got == words
    bad = OnChipExpertStore(cfg)
    bad.credits = bad.buffer_depth + 1
    got_bad, *_ = _run(bad, phases, p_ready=0.3, seed=3)
    assert got_bad != words


@pytest.mark.parametrize("name, read_stages", [("tiny", 1), ("tiny", 2), ("tiny8", 2),
                                               ("small", 1), ("small", 3)])
def test_cycle_model_one_word_a_cycle_after_the_latency(name, read_stages):
    """With mem_resp.ready high: a request accepted in cycle c gives word j in cycle
    c + latency + j, and back-to-back bursts stream without a gap (across banks too)."""
    rng = random.Random(5)
    store = OnChipExpertStore(_config(name), read_stages=read_stages)
    reqs = [(rng.randrange(store.depth - store.burst), store.burst) for _ in range(6)]
    reqs += [(17, 3), (40, 1), (41, 1), (100, store.burst), (min(2045, store.depth - 9), 9)]
    got, accepted, cycles, _ = _run(store, [([], reqs)])
    assert len(got) == sum(n for _, n in reqs)
    expect = [accepted[0] + store.latency + j for j in range(len(got))]
    assert cycles == expect
    # each request after the first is accepted in the cycle the previous one's last word is read
    ends = [accepted[0]]
    for _, n in reqs[:-1]:
        ends.append(ends[-1] + n)
    assert accepted == ends
    assert store.latency == read_stages + (len(store.plan) > 1) + 2


def test_sized_as_the_memory_model_and_shaped_as_the_soc_port(cfg):
    from moeforge.sim.tops import backing_memory_for
    store = OnChipExpertStore(cfg)
    soc = MoESoC(cfg, phy="uart")
    lay = CommandLayout.from_config(cfg)
    assert store.depth == lay.n_experts * lay.image_words == soc.accel.mem_words
    model = backing_memory_for(soc.accel)
    assert (store.depth, store.word_bits) == (model.depth, model.word_bits)
    Fragment.get(model, None)                   # built only to read its size
    assert store.word_bits == 8 * cfg.mac_cols
    assert set(store.signature.members) == set(MEMORY_PORT)
    for name in MEMORY_PORT:
        assert store.signature.members[name] == soc.signature.members[name].flip(), name
    # 13 banks of 1,024 words, each two slices of 18 bits: 26 DP16KD in their 1024 x 18 mode
    assert store.plan == [(1024 * b, 1024, 18) for b in range(12)] + [(12288, 776, 18)]
    assert store.blocks == 26 == dp16kd_blocks(13064, 32)

    class Board(wiring.Component):
        def __init__(self):
            super().__init__({"rx": In(1), "tx": Out(1)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.soc, m.submodules.store = soc, store
            for name in MEMORY_PORT:
                wiring.connect(m, getattr(soc, name), getattr(store, name))
            m.d.comb += [soc.rx.eq(self.rx), self.tx.eq(soc.tx)]
            return m
    Fragment.get(Board(), None)


def test_block_plan():
    """The fewest blocks, then the fewest banks plus slices, then the fewest slices."""
    assert block_plan(512, 36) == [(0, 512, 36)] and dp16kd_blocks(512, 36) == 1
    assert block_plan(484, 32) == [(0, 484, 36)]
    assert block_plan(1024, 16) == [(0, 1024, 18)] and dp16kd_blocks(1024, 16) == 1
    assert block_plan(16384, 1) == [(0, 16384, 1)] and dp16kd_blocks(16384, 1) == 1
    assert block_plan(1864, 32) == [(0, 1024, 18), (1024, 840, 18)]
    # 26,128 words: 13 banks of 2,048 in 9-bit slices (52 blocks), not 52 banks of 512
    assert block_mode(26128, 32) == (9, 2048) and dp16kd_blocks(26128, 32) == 52
    # a 2 Mibit store of 64-bit words: 128 blocks in 16 banks, not 64 banks
    assert block_mode(32768, 64) == (9, 2048) and dp16kd_blocks(32768, 64) == 128
    assert dp16kd_blocks(101384, 64) == 398      # mixtral's images: 199 banks of 2 x 36 bits
    with pytest.raises(ValueError):
        dp16kd_blocks(0, 8)


def test_refuses_experts_over_the_budget(cfg):
    mixtral = AccelConfig.from_toml(ROOT / "configs" / "mixtral.toml")
    with pytest.raises(ConfigError, match=r"^memory: config mixtral's 8 expert images are "
                       r"101384 words of 64 bits \(6488576 bits\); the on-chip store holds at "
                       r"most 2097152 bits$"):
        OnChipExpertStore(mixtral)
    bits = 13064 * 32
    exact = OnChipExpertStore(cfg, budget_bits=bits)
    assert exact.bits == bits
    Fragment.get(exact, None)                   # built only to read its size
    with pytest.raises(ConfigError, match=f"holds at most {bits - 1} bits"):
        OnChipExpertStore(cfg, budget_bits=bits - 1)
    # no budget: the store of any config, as the unit registry builds it (a board's budget is
    # the board's resource check's)
    from moeforge.rtl.units import elaborate
    unbounded = elaborate(mixtral, "onchip_store")
    assert isinstance(unbounded, OnChipExpertStore) and unbounded.bits == 6488576
    Fragment.get(unbounded, None)
    with pytest.raises(ValueError, match="read_stages"):
        OnChipExpertStore(cfg, read_stages=0)
    with pytest.raises(TypeError, match="cfg"):
        OnChipExpertStore("configs/tiny.toml")


# ------------------------------------------------------------------ synthesis

def _synth_ecp5(component, top: str) -> dict[str, int]:
    """Cell counts of `component` after Yosys ``synth_ecp5`` (yowasp, as `fpga_boards.yosys` runs
    it), read as RTLIL as a board build reads it (Amaranth's platform build writes RTLIL)."""
    from amaranth.back import rtlil

    from moeforge.fpga_boards.yosys import yosys_command
    with tempfile.TemporaryDirectory(prefix="moeforge-test-") as tmp:
        Path(tmp, "design.il").write_text(rtlil.convert(component, name=top))
        proc = subprocess.run(
            yosys_command() + ["-q", "-p", f"read_rtlil design.il; synth_ecp5 -top {top}; "
                               "tee -q -o stat.json stat -json"],
            cwd=tmp, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        stat = json.loads(Path(tmp, "stat.json").read_text())
    return stat["modules"][f"\\{top}"]["num_cells_by_type"]


def _not_block_ram(cells: dict[str, int]) -> list[str]:
    """Why `cells` is not a design whose memory is in block RAM (empty if it is)."""
    problems = []
    if cells.get("DP16KD", 0) == 0:
        problems.append("no DP16KD")
    problems += [f"{n} {name}" for name, n in cells.items()
                 if name == "TRELLIS_DPR16X4" or name.startswith("$mem")]
    return problems


class _AsyncRead(wiring.Component):
    """A memory read asynchronously, as the simulation model reads: LUT RAM, not block RAM."""

    def __init__(self):
        super().__init__({"addr": In(6), "wdata": In(32), "we": In(1), "rdata": Out(32)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=32, depth=64, init=[])
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        m.d.comb += [wp.addr.eq(self.addr), wp.data.eq(self.wdata), wp.en.eq(self.we),
                     rp.addr.eq(self.addr), self.rdata.eq(rp.data)]
        return m


@pytest.mark.synthesis
def test_the_check_fails_on_an_asynchronous_read():
    cells = _synth_ecp5(_AsyncRead(), "async_read")
    assert "TRELLIS_DPR16X4" in cells
    assert _not_block_ram(cells) != []


@pytest.mark.synthesis
@pytest.mark.parametrize("name", ["tiny", "small"])
def test_synth_ecp5_infers_block_ram(name):
    """The store in Yosys synth_ecp5 (tiny's 13,064 words in 13 banks; 484 words in one): DP16KD,
    as many as `block_plan` lays out, no LUT RAM, no memory left as $mem."""
    store = OnChipExpertStore(_config(name))
    cells = _synth_ecp5(store, "onchip_store")
    assert _not_block_ram(cells) == []
    assert cells["DP16KD"] == store.blocks


# ------------------------------------------------------------------ the whole layer

def test_simulated_soc_takes_the_store_on_its_memory_port(cfg):
    """``SimulatedSoC(cfg, memory="onchip")``: the SoC with the store, the device's ports only;
    the model's parameters and a config over the budget are refused before anything is built."""
    from moeforge.sim.sim_device import check_device_ports
    from moeforge.sim.tops import SimulatedSoC
    device = SimulatedSoC(cfg, memory="onchip")
    check_device_ports(device)
    assert isinstance(device.memory, OnChipExpertStore) and isinstance(device.soc, MoESoC)
    Fragment.get(device, None)
    with pytest.raises(ValueError, match="memory model's"):
        SimulatedSoC(cfg, memory="onchip", latency=4)
    with pytest.raises(ValueError, match="memory must be one of 'model', 'onchip'"):
        SimulatedSoC(cfg, memory="sdram")
    with pytest.raises(ConfigError, match="on-chip store holds at most"):
        SimulatedSoC(AccelConfig.from_toml(ROOT / "configs" / "mixtral.toml"), memory="onchip")


@pytest.mark.verilator
def test_whole_layer_through_the_store_is_bit_exact(cfg):
    """tiny's layer on the simulated device with the on-chip store on its memory port: the host
    loads the experts with the same WRITE_MEMORY commands (`Device.load`), the cache fetches
    them from block RAM, and every output equals the golden model's."""
    import torch

    from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
    from moeforge.host_runtime import open_device
    q = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=3), cfg,
                                  calib=make_hf_input(cfg, 256, seed=4))
    x = q.quantize_input(make_hf_input(cfg, 77, seed=5))
    with open_device("sim", cfg, memory="onchip") as dev:
        dev.load(q)
        assert torch.equal(dev.run(x), q.forward_int(x))            # 32 + 32 + 13 tokens
        assert torch.equal(dev.run(x[:1]), q.forward_int(x[:1]))
        assert torch.equal(dev.run(x[40:]), q.forward_int(x[40:]))
        s = dev.stats()
    # every miss fetched one whole image from the store, and there were misses
    image_words = CommandLayout.from_config(cfg).image_words
    assert s["misses"] > 0 and s["retries"] == 0
    assert s["totals"]["words_fetched"] == s["misses"] * image_words
