"""cocotb bench of the ExpertCache on a BackingMemory, run by tests/rtl/memory/test_expert_cache.py.

`CacheSystem` is the simulated top: the cache, the memory model behind it, and a gate on the
memory's responses (``resp_stall`` hides ``o_resp`` from the cache for a cycle, i.e. stalls the
memory's output). `make_stimulus` draws images and request traces and asks
`ExpertCacheModel` for the expected grants; the pytest side writes both as the JSON file named by
``MOEFORGE_TEST_PARAMS``:

``cache``, ``memory``
    the constructor arguments of `ExpertCache` and `BackingMemory`;
``ports``
    Verilog port names from the top's signature;
``images``
    each expert's image words (distinct values, so a wrong slot or offset shows);
``segments``
    request traces, with an ``invalidate`` pulse between two segments (sent right after the
    previous segment's last request was accepted, while it is still in flight);
``expected``, ``counts``
    the model's ``[expert, slot, hit]`` per request and its hit/miss/word counts;
``expected_images`` (optional)
    what reads should return, if not ``images`` (a wrong reference, for the failing test);
``summary`` (optional)
    a file to write ``{cycles, counters, resp_cycles}`` to (``resp_cycles``: the cycle of each
    word the cache received);
``stall``
    stall probabilities and the consumer's limits (see `Consumer`).

The consumer takes a grant only while it holds fewer than ``hold`` grants, reads each granted
slot's whole image through ``rd`` (random gaps), then releases it after a random delay, in grant
order. It never waits for a grant before releasing, so a locked victim is always released.
While it holds nothing (and takes no grant) it pulses ``release`` at random (probability
``spurious``): the cache must ignore those.
"""

from __future__ import annotations

import json
import os
import random
from collections import deque
from dataclasses import dataclass

import cocotb
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from moeforge.hls_models.expert_cache import ExpertCacheModel
from moeforge.rtl.memory.expert_cache import ExpertCache
from moeforge.sim.backing_memory import BackingMemory
from moeforge.sim.scoreboard import Scoreboard
from moeforge.sim.stream import pack_layout, unpack_layout
from moeforge.spec.protocol import CACHE_COUNTERS

__all__ = ["CacheSystem", "make_stimulus", "FORWARDED"]

P = json.loads(open(os.environ["MOEFORGE_TEST_PARAMS"]).read()) \
    if "MOEFORGE_TEST_PARAMS" in os.environ else {}

# the cache's members the top exposes as they are
FORWARDED = ("i_req", "o_grant", "release", "rd", "invalidate", "clear_counters", "busy",
             *CACHE_COUNTERS)


class CacheSystem(wiring.Component):
    """`ExpertCache` fetching from a `BackingMemory`, with a stall gate on the responses.

    Ports: the cache's `FORWARDED` members, the memory's ``wr`` (host writes), ``resp_stall``
    and ``resp_fire`` (a word goes from the memory to the cache in this cycle).
    """

    def __init__(self, cache: dict, memory: dict):
        self.cache = ExpertCache(**cache)
        self.memory = BackingMemory(**memory)
        if self.cache.mem_req_layout != self.memory.req_layout:
            raise ValueError(f"request layouts differ: cache {self.cache.mem_req_layout!r}, "
                             f"memory {self.memory.req_layout!r}")
        if self.cache.mem_resp_layout != self.memory.resp_layout:
            raise ValueError("response layouts differ")
        members = {name: self.cache.signature.members[name] for name in FORWARDED}
        members["wr"] = self.memory.signature.members["wr"]
        members["resp_stall"] = In(1)
        members["resp_fire"] = Out(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.cache = cache = self.cache
        m.submodules.memory = mem = self.memory
        forwarded = [(cache, path, member, inner)
                     for path, member, inner in cache.signature.flatten(cache)
                     if path[0] in FORWARDED]
        forwarded += [(mem, path, member, inner)
                      for path, member, inner in mem.signature.flatten(mem) if path[0] == "wr"]
        for _, path, member, inner in forwarded:
            outer = self
            for part in path:
                outer = getattr(outer, part)
            if member.flow == wiring.In:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        wiring.connect(m, cache.mem_req, mem.i_req)
        gate = ~self.resp_stall
        m.d.comb += [cache.mem_resp.payload.eq(mem.o_resp.payload),
                     cache.mem_resp.valid.eq(mem.o_resp.valid & gate),
                     mem.o_resp.ready.eq(cache.mem_resp.ready & gate),
                     self.resp_fire.eq(mem.o_resp.valid & cache.mem_resp.ready & gate)]
        return m


def make_stimulus(cache: dict, *, seed: int, n_requests: int, segments: int = 1,
                  locality: float = 0.5, skew: float = 0.0,
                  model_policy: str | None = None) -> dict:
    """Images, request segments and the model's grants for an `ExpertCache` built from `cache`.

    A request repeats one of the last few experts with probability `locality` (hits), else
    draws an expert, expert ``e`` with weight ``1 / (1 + skew·e)``. `model_policy` replaces
    the cache's policy in the model (a wrong reference, for the test that must fail).
    """
    rng = random.Random(seed)
    E, W, bits = cache["n_experts"], cache["image_words"], cache["word_bits"]
    words = rng.sample(range(1 << bits), E * W) if bits < 20 else \
        list({rng.getrandbits(bits): None for _ in range(4 * E * W)})[:E * W]
    assert len(set(words)) == E * W
    images = [words[e * W:(e + 1) * W] for e in range(E)]
    weights = [1 / (1 + skew * e) for e in range(E)]     # popular experts: low indices
    segs, recent = [], deque(maxlen=3)
    for k in range(segments):
        n = n_requests // segments + (k < n_requests % segments)
        seg = []
        for _ in range(n):
            e = rng.choice(recent) if recent and rng.random() < locality else \
                rng.choices(range(E), weights)[0]
            recent.append(e)
            seg.append(e)
        segs.append(seg)
    policy = model_policy or cache["policy"]
    pinned = cache.get("pinned", ()) if policy == "pinned" else ()
    if policy == "pinned" and not pinned:
        pinned = (0,)
    model = ExpertCacheModel(E, cache["slots"], policy, pinned,
                             count_bits=cache.get("count_bits", 16))
    expected = []
    for k, seg in enumerate(segs):
        if k:
            model.invalidate()
        expected += [[a.expert, a.slot, int(a.hit)] for a in model.run(seg)]
    return {"images": images, "segments": segs, "expected": expected,
            "counts": {"hits": model.hits, "misses": model.misses,
                       "words_fetched": model.misses * W}}


# ------------------------------------------------------------------------------ cocotb side

@dataclass
class Job:
    """A grant the consumer holds: reading its image, then releasing it."""

    index: int
    expert: int
    slot: int
    start_wait: int
    rel_wait: int
    issued: int = 0
    words: list | None = None


class Consumer:
    """The bench's whole behaviour, one call per cycle: drive (after the edge), sample (in
    ReadOnly). One loop, so the order of events inside a cycle is fixed."""

    def __init__(self, dut, rng):
        self.dut, self.rng = dut, rng
        self.ports = P["ports"]
        self.cache = ExpertCache(**P["cache"])
        self.W = P["cache"]["image_words"]
        self.st = P["stall"]
        self.expected_images = P.get("expected_images", P["images"])
        self.segments = [list(s) for s in P["segments"]]
        self.grants = Scoreboard("expert_cache grants [expert, slot, hit]")
        self.grants.add_expected_many(P["expected"])
        self.reads = Scoreboard("expert_cache images read through rd")
        self.seg, self.pos = 0, 0
        self.presenting = None
        self.block, self.inv_now = False, False
        self.accepted = self.granted = 0
        self.held: deque[Job] = deque()
        self.check = None
        self.stalls = self.prefetch = 0
        self.head_stalled = False
        self.busy_seen = False
        self.resp_cycles = []
        self.g_ready = 0

    def port(self, key):
        return getattr(self.dut, self.ports[key])

    def pause(self, key):
        p = self.st[key]
        return p > 0 and self.rng.random() < p

    def drive(self):
        if self.presenting is None and not self.block and self.seg < len(self.segments) \
                and not self.pause("req"):
            self.presenting = self.segments[self.seg][self.pos]
            self.port("i_req.payload").value = pack_layout(self.cache.req_layout,
                                                           {"expert": self.presenting})
        self.port("i_req.valid").value = int(self.presenting is not None)
        self.block = False
        self.port("invalidate").value = int(self.inv_now)
        self.inv_now = False
        self.g_ready = int(len(self.held) < self.st["hold"] and not self.pause("grant"))
        self.port("o_grant.ready").value = self.g_ready
        self.port("resp_stall").value = int(self.pause("resp"))
        # the reader: the oldest held grant whose image is not read yet
        en, self.issued = 0, None
        job = next((j for j in self.held if j.issued < self.W), None)
        if job is not None:
            if job.start_wait > 0:
                job.start_wait -= 1
            elif not self.pause("read"):
                self.port("rd.addr").value = job.slot * self.W + job.issued
                en, self.issued = 1, job
                job.issued += 1
        self.port("rd.en").value = en
        rel = 0
        head = self.held[0] if self.held else None
        if head is not None and len(head.words) == self.W:
            if head.rel_wait > 0:
                head.rel_wait -= 1
            else:
                rel = 1
                self.held.popleft()
        elif head is None and not self.g_ready and self.pause("spurious"):
            rel = 1                     # nothing granted and unreleased: must be ignored
        self.port("release").value = rel

    def sample(self, cycle):
        if self.check is not None:
            job = self.check
            job.words.append(self.port("rd.data").value.to_unsigned())
            if len(job.words) == self.W:
                self.reads.add_expected(self.expected_images[job.expert])
                self.reads.add_received(job.words, cycle=cycle)
        self.check = self.issued
        self.busy_seen |= bool(self.port("busy").value)
        if self.port("resp_fire").value:
            self.resp_cycles.append(cycle)
        g_valid = bool(self.port("o_grant.valid").value)
        if self.g_ready and not g_valid and self.accepted > self.granted:
            self.stalls += 1
            self.head_stalled = True
        if self.g_ready and g_valid:
            g = unpack_layout(self.cache.grant_layout,
                              self.port("o_grant.payload").value.to_unsigned())
            self.grants.add_received([g["expert"], g["slot"], g["hit"]], cycle=cycle)
            if not g["hit"] and not self.head_stalled:
                self.prefetch += 1
            self.head_stalled = False
            self.held.append(Job(self.granted, g["expert"], g["slot"],
                                 self.rng.randint(0, self.st["read_wait"]),
                                 self.rng.randint(0, self.st["release_wait"]), words=[]))
            self.granted += 1
        if self.presenting is not None and self.port("i_req.ready").value:
            self.accepted += 1
            self.presenting = None
            self.pos += 1
            if self.pos == len(self.segments[self.seg]):
                self.seg, self.pos = self.seg + 1, 0
                if self.seg < len(self.segments):
                    self.inv_now = self.block = True

    @property
    def finished(self):
        return self.granted == len(P["expected"]) and not self.held and self.check is None


async def reset_and_load(dut, ports, images, W):
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for key in ("i_req.valid", "o_grant.ready", "release", "rd.en", "rd.addr", "invalidate",
                "clear_counters", "wr.en", "resp_stall"):
        getattr(dut, ports[key]).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for e, image in enumerate(images):                 # host writes: one word per cycle
        for i, word in enumerate(image):
            getattr(dut, ports["wr.addr"]).value = e * W + i
            getattr(dut, ports["wr.data"]).value = word
            getattr(dut, ports["wr.en"]).value = 1
            await RisingEdge(dut.clk)
    getattr(dut, ports["wr.en"]).value = 0


@cocotb.test(timeout_time=500, timeout_unit="ms")
async def cache_trace(dut):
    """Grants == the model's, images read back exact, counters == model / bench counts."""
    ports, W = P["ports"], P["cache"]["image_words"]
    await reset_and_load(dut, ports, P["images"], W)
    bench = Consumer(dut, random.Random(cocotb.RANDOM_SEED))
    cycle = 0
    while not bench.finished:
        assert cycle < P["max_cycles"], (
            f"stuck after {cycle} cycles: {bench.accepted} requests accepted, {bench.granted} "
            f"of {len(P['expected'])} granted, {len(bench.held)} held")
        bench.drive()
        await ReadOnly()
        bench.sample(cycle)
        await RisingEdge(dut.clk)
        cycle += 1
    # nothing more comes out; everything is released and idle
    bench.port("o_grant.ready").value = 1
    bench.port("rd.en").value = 0
    bench.port("release").value = 0
    bench.port("resp_stall").value = 0
    for _ in range(20):
        await ReadOnly()
        assert not bench.port("o_grant.valid").value, "a grant nobody requested"
        await RisingEdge(dut.clk)
    bench.grants.finish()
    bench.reads.finish()
    assert bench.busy_seen and not bench.port("busy").value, "busy is not high then low"
    got = {name: int(bench.port(name).value) for name in CACHE_COUNTERS}
    want = dict(P["counts"], prefetch_hits=bench.prefetch, stall_cycles=bench.stalls)
    assert got == want, f"counters {got} != expected {want}"
    cocotb.log.info("%d requests in %d cycles: %s", len(P["expected"]), cycle, got)
    bench.port("clear_counters").value = 1
    await RisingEdge(dut.clk)
    bench.port("clear_counters").value = 0
    await ReadOnly()
    assert all(int(bench.port(name).value) == 0 for name in CACHE_COUNTERS), "clear_counters"
    summary = P.get("summary")
    if summary:
        with open(summary, "w") as f:
            json.dump({"cycles": cycle, "counters": got, "resp_cycles": bench.resp_cycles}, f)
