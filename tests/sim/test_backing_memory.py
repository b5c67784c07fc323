# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The BackingMemory in Verilator: data, latency and bandwidth equal its cycle model.

The bench (sim/benches/backing_memory.py) records when each request was accepted, ``o_resp.ready``
of every cycle and the (cycle, data) of every word; `BackingMemory.schedule` given the same
acceptances and readies must predict every word's cycle exactly, and the data must be the words
written through ``wr``. Phases: isolated requests on an idle memory (the closed form
`word_offsets`: first word ``latency`` cycles after acceptance, then the bandwidth), requests
back to back (latencies overlap in the request FIFO), and random stalls on both streams.
"""

import json
import random
from fractions import Fraction

import pytest

from moeforge.sim.backing_memory import BackingMemory
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.sim.build import run_cocotb
from moeforge.sim.toolchain import lint_problems

COCOTB_MODULE = "moeforge.sim.benches.backing_memory"

BUILDS = {
    # 32-bit words, 8 bytes per cycle: clipped to one word per cycle; latency 1; one-entry FIFO
    "fast": dict(depth=50, word_bits=32, latency=1, bytes_per_cycle=8, max_length=16,
                 queue_depth=1),
    # 24-bit words at 3/7 byte per cycle: a word every 7 cycles
    "slow": dict(depth=64, word_bits=24, latency=7, bytes_per_cycle=Fraction(3, 7),
                 max_length=5, queue_depth=4),
    # 16-bit words at 1.5 bytes per cycle (0.75 words: the remainder carries over), latency 20
    "frac": dict(depth=40, word_bits=16, latency=20, bytes_per_cycle=Fraction(3, 2),
                 max_length=16, addr_width=8, queue_depth=3),
}


def phases(mem: BackingMemory, rng: random.Random) -> list[dict]:
    gap = mem.latency + -(-mem.cost // mem.gain) + 2          # long enough to refill the credit
    L = mem.max_length

    def rand_req(lo=0):
        n = rng.randint(lo, L)
        return [rng.randrange(mem.depth - n + 1), n]

    isolated = [{"requests": [[0, n]], "req_stall": 0.0, "resp_stall": 0.0, "gap": gap}
                for n in sorted({1, 2, max(1, L // 2), L})]
    return isolated + [
        {"requests": [rand_req(1) for _ in range(10)], "req_stall": 0.0, "resp_stall": 0.0,
         "gap": gap},
        {"requests": [rand_req() for _ in range(16)], "req_stall": 0.3, "resp_stall": 0.3,
         "gap": gap},
        {"requests": [rand_req() for _ in range(16)], "req_stall": 0.6, "resp_stall": 0.6,
         "gap": 0},
    ]


def simulate(sim_build, tmp_path, build, seed=1):
    mem = BackingMemory(**BUILDS[build])
    rng = random.Random(seed)
    data = rng.sample(range(1 << mem.word_bits), mem.depth)
    plan = phases(mem, rng)
    results = tmp_path / "results.json"
    params = tmp_path / "params.json"
    params.write_text(json.dumps({
        "memory": {k: str(v) if isinstance(v, Fraction) else v for k, v in BUILDS[build].items()},
        "ports": {path: info.name for path, info in verilog_ports(mem).items()},
        "data": data, "phases": plan, "results": str(results), "max_cycles": 20000}))
    handle = sim_build(mem, "backing_memory")
    run = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                     extra_env={"MOEFORGE_TEST_PARAMS": str(params)})
    assert (run.tests, run.passed) == (1, 1), run.summary()
    return mem, data, plan, json.loads(results.read_text())


def predicted(mem, phase, measured):
    lengths = [n for _, n in phase["requests"]]
    return mem.schedule(list(zip(measured["accepts"], lengths)), measured["ready"])


@pytest.mark.verilator
@pytest.mark.parametrize("build", BUILDS)
def test_memory_matches_cycle_model(sim_build, tmp_path, build):
    mem, data, plan, measured = simulate(sim_build, tmp_path, build)
    for phase, got in zip(plan, measured):
        want = predicted(mem, phase, got)
        assert [c for c, _ in got["words"]] == [c for req in want for c in req], phase
        assert [d for _, d in got["words"]] == \
            [data[a + i] for a, n in phase["requests"] for i in range(n)], phase
    # isolated requests on an idle memory: the closed form, latency and bandwidth
    for phase, got in zip(plan, measured):
        if len(phase["requests"]) == 1:
            n = phase["requests"][0][1]
            offsets = [c - got["accepts"][0] for c, _ in got["words"]]
            assert offsets == mem.word_offsets(n)
            assert offsets[0] == mem.latency
            assert offsets[-1] + 1 == mem.cycles(n)


@pytest.mark.verilator
def test_wrong_cycle_model_fails(sim_build, tmp_path):
    """The same measurements against a memory one cycle slower, or a little faster, differ."""
    mem, _, plan, measured = simulate(sim_build, tmp_path, "frac")
    for change in (dict(latency=21), dict(bytes_per_cycle=Fraction(8, 5))):
        other = BackingMemory(**{**BUILDS["frac"], **change})
        for phase, got in zip(plan, measured):
            if len(phase["requests"]) == 1 and phase["requests"][0][1] > 2:
                assert [c for c, _ in got["words"]] != predicted(other, phase, got)[0]


@pytest.mark.verilator
@pytest.mark.parametrize("build", BUILDS)
def test_memory_lints_clean(build):
    text = to_verilog(BackingMemory(**BUILDS[build]), "backing_memory")
    assert lint_problems(text, "backing_memory") == []


# ------------------------------------------------------------------------------ the model alone

@pytest.mark.parametrize("bpc, bits, expect", [
    (Fraction(3, 7), 24, [5, 12, 19, 26]),          # 7 cycles a word
    (Fraction(3, 2), 16, [5, 7, 8, 9, 11]),         # 3 words in 4 cycles, remainder kept
    (100, 16, [5, 6, 7]),                           # clipped to a word per cycle
])
def test_closed_form_agrees_with_schedule(bpc, bits, expect):
    mem = BackingMemory(depth=8, word_bits=bits, latency=5, bytes_per_cycle=bpc)
    n = len(expect)
    assert mem.word_offsets(n) == expect
    assert mem.schedule([(0, n)]) == [expect]
    assert mem.schedule([(3, n)]) == [[c + 3 for c in expect]]
    assert mem.cycles(n) == expect[-1] + 1


def test_schedule_overlaps_latency_and_honours_ready():
    mem = BackingMemory(depth=8, word_bits=8, latency=4, bytes_per_cycle=1)
    # the second request's latency ran out while the first streamed: no gap between them
    assert mem.schedule([(0, 3), (1, 2)]) == [[4, 5, 6], [7, 8]]
    # a zero-length request takes its head cycle; ready low holds the word
    assert mem.schedule([(0, 0), (0, 1)]) == [[], [5]]
    assert mem.schedule([(0, 2)], ready=[1, 1, 1, 1, 0, 0, 1]) == [[6, 7]]


@pytest.mark.parametrize("change, exc, match", [
    (dict(latency=0), ValueError, r"latency must be in \[1, 1024\], not 0"),
    (dict(bytes_per_cycle=0), ValueError, "bytes_per_cycle must be positive"),
    (dict(bytes_per_cycle=0.5), TypeError, "bytes_per_cycle must be a positive int or Fraction"),
    (dict(depth=0), ValueError, r"depth must be in \[1, 16777216\], not 0"),
    (dict(addr_width=3), ValueError, r"addr_width must be in \[4, 48\], not 3"),
    (dict(queue_depth=0), ValueError, r"queue_depth must be in \[1, 64\], not 0"),
])
def test_bad_parameters(change, exc, match):
    with pytest.raises(exc, match=match):
        BackingMemory(**{**dict(depth=16, word_bits=8, latency=2, bytes_per_cycle=1), **change})
