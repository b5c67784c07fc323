# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The ExpertCache on a BackingMemory in Verilator: grants, images and counters against the model.

Each build is a `CacheSystem` (sim/benches/expert_cache.py) of one policy with its own sizes,
memory latency and bandwidth. A run sends random request traces (with repeats, so there are
hits) in two segments separated by an ``invalidate``, with random stalls on ``i_req``,
``o_grant`` back-pressure, stalled memory responses, random read gaps and release delays, and
checks: the (expert, slot, hit) of every grant == `ExpertCacheModel`; every granted slot's image
read through ``rd`` == the expert's image; ``hits``/``misses``/``words_fetched`` == the model;
``stall_cycles``/``prefetch_hits`` == what the bench saw on ``o_grant``.

Default builds (one per policy, sizes chosen to cover the corners: one-word images with
one-word bursts and latency 1; bursts that do not divide the image; full-rate and fractional
bandwidth; lfu with 2-bit counters, so that saturation changes its choices); the ``slow``
sweep draws more systems at random, among them one-slot caches.
"""

import json
import random
from fractions import Fraction

import pytest

from moeforge import AccelConfig
from moeforge.sim.backing_memory import BackingMemory
from moeforge.rtl.memory.expert_cache import ExpertCache
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.sim.benches.expert_cache import CacheSystem, make_stimulus
from moeforge.sim.build import run_cocotb
from moeforge.sim.toolchain import lint_problems

COCOTB_MODULE = "moeforge.sim.benches.expert_cache"

BUILDS = {
    "lru": (dict(n_experts=7, slots=3, policy="lru", image_words=23, word_bits=16, burst=5),
            dict(latency=9, bytes_per_cycle=Fraction(3, 4))),
    "lfu": (dict(n_experts=9, slots=4, policy="lfu", image_words=40, word_bits=24, burst=16,
                 count_bits=2), dict(latency=20, bytes_per_cycle=3)),
    "pinned": (dict(n_experts=6, slots=5, policy="pinned", pinned=(2, 4), image_words=1,
                    word_bits=12, burst=1), dict(latency=1, bytes_per_cycle=Fraction(5, 7))),
}

STALLS = dict(req=0.3, grant=0.3, resp=0.2, read=0.2, read_wait=6, release_wait=8, hold=2,
              spurious=0.2)
NO_STALLS = dict(req=0.0, grant=0.0, resp=0.0, read=0.0, read_wait=0, release_wait=0, hold=2,
                 spurious=0.0)


def memory_kwargs(cache: dict, memory: dict) -> dict:
    return dict(depth=cache["n_experts"] * cache["image_words"], word_bits=cache["word_bits"],
                max_length=cache["burst"], **memory)


def make_system(cache: dict, memory: dict) -> CacheSystem:
    return CacheSystem(cache, memory_kwargs(cache, memory))


def random_build(seed: int):
    """A random system: slots 1..5, n_experts 2..9, image_words 1..40, burst 1..16, latency
    1..20, bandwidth a fraction of a word per cycle (sometimes clipped to a full word)."""
    rng = random.Random(seed)
    E = rng.randint(2, 9)
    S = rng.randint(1, min(5, E))
    policy = rng.choice(["lru", "lfu"] + (["pinned"] if S > 1 else []))
    pinned = tuple(rng.sample(range(E), rng.randint(1, S - 1))) if policy == "pinned" else ()
    bits = rng.choice([12, 16, 24, 32])
    cache = dict(n_experts=E, slots=S, policy=policy, pinned=pinned,
                 image_words=rng.randint(1, 40), word_bits=bits, burst=rng.randint(1, 16),
                 count_bits=rng.choice([2, 3, 16]))
    bpc = Fraction(rng.randint(1, 2 * bits // 8), rng.randint(1, 5))
    return cache, dict(latency=rng.randint(1, 20), bytes_per_cycle=bpc)


def stimulus(cache: dict, seed: int, **kw) -> dict:
    """80 requests in two segments, skewed towards low experts (lfu keeps them)."""
    return make_stimulus(cache, seed=seed, **{"n_requests": 80, "segments": 2, "skew": 0.5, **kw})


def write_params(tmp_path, system: CacheSystem, cache: dict, stim: dict, stall: dict, **extra):
    ports = {path: info.name for path, info in verilog_ports(system).items()}
    mem = system.memory
    per_word = max(1, -(-mem.cost // mem.gain))          # cycles per word at the memory's rate
    n = len(stim["expected"])
    max_cycles = n * (cache["image_words"] * (per_word + 2) + mem.latency + 60) * 3 + 2000
    path = tmp_path / "expert_cache_params.json"
    path.write_text(json.dumps({
        "cache": {**cache, "pinned": list(cache.get("pinned", ()))}, "ports": ports,
        "stall": stall, "max_cycles": max_cycles, **stim, **extra}))
    return {"MOEFORGE_TEST_PARAMS": str(path)}


def run(sim_build, tmp_path, cache, memory, stim, stall, *, check=True, **extra):
    system = make_system(cache, memory)
    handle = sim_build(system, "cache_system")
    return run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, check=check,
                      extra_env=write_params(tmp_path, system, cache, stim, stall, **extra))


# ------------------------------------------------------------------------------ cosim

@pytest.mark.verilator
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("stall", ["stalls", "no-stalls"])
def test_cache_matches_model(sim_build, tmp_path, build, stall):
    cache, memory = BUILDS[build]
    seed = {"lru": 1, "lfu": 2, "pinned": 3}[build] + (10 if stall == "stalls" else 0)
    stim = stimulus(cache, seed)
    assert 0 < stim["counts"]["hits"] < len(stim["expected"])   # both kinds occur
    evictions = sum(1 for _, _, hit in stim["expected"] if not hit) > cache["slots"]
    assert evictions
    if "count_bits" in cache:           # the counters saturate, and that changes the grants
        unbounded = stimulus({**cache, "count_bits": 16}, seed)
        assert unbounded["expected"] != stim["expected"]
    summary = tmp_path / "summary.json"
    results = run(sim_build, tmp_path, cache, memory, stim,
                  STALLS if stall == "stalls" else NO_STALLS, summary=str(summary))
    assert (results.tests, results.passed) == (1, 1), results.summary()
    report = json.loads(summary.read_text())
    assert report["counters"]["misses"] == stim["counts"]["misses"]
    W = cache["image_words"]
    words = report["resp_cycles"]
    assert len(words) == stim["counts"]["words_fetched"]
    if stall == "no-stalls" and BackingMemory(**memory_kwargs(cache, memory)).full_rate:
        # a word per cycle: the bursts in flight hide the memory's latency within a fetch
        spans = {words[i + W - 1] - words[i] for i in range(0, len(words), W)}
        assert spans == {W - 1}, spans


@pytest.mark.verilator
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_random_systems(sim_build, tmp_path, seed):
    cache, memory = random_build(seed)
    stim = stimulus(cache, 100 + seed, n_requests=60)
    stall = dict(STALLS, hold=random.Random(seed).randint(1, cache["slots"] + 1))
    results = run(sim_build, tmp_path, cache, memory, stim, stall)
    assert (results.tests, results.passed) == (1, 1), (cache, memory, results.summary())


@pytest.mark.verilator
@pytest.mark.parametrize("perturb", ["policy", "image", "counts"])
def test_wrong_reference_fails(sim_build, tmp_path, perturb):
    """A reference that is wrong in one respect must fail the run, saying where."""
    cache, memory = BUILDS["lfu"]
    stim = stimulus(cache, 2)
    if perturb == "policy":             # the lru model's grants for the lfu cache
        wrong = stimulus(cache, 2, model_policy="lru")
        assert wrong["segments"] == stim["segments"] and wrong["expected"] != stim["expected"]
        stim["expected"] = wrong["expected"]
        message = "expert_cache grants [expert, slot, hit]: mismatch at token "
    elif perturb == "image":            # memory holds the true image, the check expects another
        extra_images = [list(img) for img in stim["images"]]
        first = stim["expected"][0][0]
        extra_images[first][cache["image_words"] // 2] ^= 1
        message = "expert_cache images read through rd: mismatch at token 0"
    else:
        stim["counts"]["words_fetched"] += 1
        message = "counters"
    extra = {"expected_images": extra_images} if perturb == "image" else {}
    results = run(sim_build, tmp_path, cache, memory, stim, STALLS, check=False, **extra)
    assert (results.tests, results.failed) == (1, 1), results.summary()
    assert message in results.failures[0].message, results.failures[0].message


# ------------------------------------------------------------------------------ lint

@pytest.mark.verilator
@pytest.mark.parametrize("kw", [
    dict(n_experts=2, slots=1, policy="lru", image_words=1, word_bits=8, burst=1),
    dict(n_experts=9, slots=5, policy="lfu", image_words=40, word_bits=24, burst=16),
    dict(n_experts=64, slots=6, policy="pinned", pinned=(3, 60), image_words=1000,
         word_bits=64, burst=7, mem_addr_width=32, queue_depth=9),
])
def test_cache_lints_clean(kw):
    assert lint_problems(to_verilog(ExpertCache(**kw), "expert_cache"), "expert_cache") == []


@pytest.mark.verilator
def test_system_lints_clean():
    system = make_system(*BUILDS["lru"])
    assert lint_problems(to_verilog(system, "cache_system"), "cache_system") == []


# ------------------------------------------------------------------------------ parameters

def test_from_config_and_ports():
    cfg = AccelConfig.from_toml("configs/tiny.toml").replace(cache_slots=3, cache_policy="pinned",
                                                             pinned_experts=(1,))
    cache = ExpertCache.from_config(cfg, image_words=100, word_bits=64)
    assert (cache.n_experts, cache.slots, cache.policy, cache.pinned) == \
        (cfg.n_experts, 3, "pinned", (1,))
    assert cache.rd_addr_width == 9                       # 300 words
    ports = verilog_ports(cache)
    assert ports["rd.addr"].direction == "input" and ports["rd.data"].direction == "output"
    assert ports["rd.data"].width == 64 and ports["mem_resp.payload"].width == 64
    assert ports["mem_req.payload"].width == cache.mem_addr_width + 5     # length 0..16
    for name in ("hits", "misses", "words_fetched", "prefetch_hits", "stall_cycles"):
        assert ports[name].width == 32 and ports[name].direction == "output"


BASE = dict(n_experts=8, slots=2, policy="lru", image_words=16, word_bits=32)


@pytest.mark.parametrize("change, exc, match", [
    (dict(slots=9), ValueError, r"slots must be in \[1, 8\], not 9"),
    (dict(policy="fifo"), ValueError, "policy must be one of lru, lfu, pinned, not 'fifo'"),
    (dict(policy="pinned"), ValueError, "pinned must name at least one expert"),
    (dict(policy="pinned", pinned=(1, 2)), ValueError, r"at most slots - 1 = 1 experts"),
    (dict(pinned=(1,)), ValueError, "pinned is only used with policy='pinned'"),
    (dict(image_words=0), ValueError, r"image_words must be in \[1, 16777216\], not 0"),
    (dict(burst=0), ValueError, r"burst must be in \[1, 4096\], not 0"),
    (dict(mem_addr_width=6), ValueError, r"mem_addr_width must be in \[7, 48\], not 6"),
    (dict(queue_depth=1), ValueError, r"queue_depth must be in \[2, 4096\], not 1"),
    (dict(word_bits=8.0), TypeError, "word_bits must be an integer"),
])
def test_bad_parameters(change, exc, match):
    with pytest.raises(exc, match=match):
        ExpertCache(**{**BASE, **change})
