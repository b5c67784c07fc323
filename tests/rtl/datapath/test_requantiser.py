"""The Requantiser in Verilator under cocotb, bit-exact against the golden model.

The cocotb side is the unit's one bench, sim/benches/requantiser.py (also `moeforge sim --unit
requantiser`'s). This file makes the beats (directed corners, random values and shifts, exact
.5 ties), has `sim.unit_sim.requantiser_bench` add the golden outputs and the unit's
parameters, and runs the bench on the component built through the simulation cache: its random
stalls, the one-beat-per-cycle and latency check, and a perturbed expectation that must fail.
"""

import json
import random

import pytest
from testkit import assert_one_off, unread_register

from moeforge.hls_models.fixed_point import MULT_BITS
from moeforge.rtl.datapath.requantiser import Requantiser
from moeforge.rtl.export import to_verilog
from moeforge.sim.build import build_cached, run_cocotb
from moeforge.sim.scoreboard import verdict
from moeforge.sim.toolchain import ToolchainError, fst_supported, verilator_lint
from moeforge.sim.unit_sim import bench_outputs, requantiser_bench, run_bench

pytestmark = pytest.mark.verilator

BENCH = "moeforge.sim.benches.requantiser"
CONFIGS = {
    "acc32-int8-x4": dict(in_width=32, out_bits=8, lanes=4),
    "acc24-int16-x1": dict(in_width=24, out_bits=16, lanes=1),
}


# ------------------------------------------------------------------------------ the beats

def random_lane(rng, dut):
    """One (acc, mult): extremes, values of random magnitude, or uniform; mult 0, max or normal."""
    w, mb = dut.in_width, dut.mult_bits
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    kind = rng.random()
    if kind < 0.15:
        a = rng.choice([lo, hi, lo + 1, hi - 1, 0, -1, 1])
    elif kind < 0.5:
        a = max(lo, min(hi, rng.randint(-(1 << rng.randint(0, w - 1)), 1 << rng.randint(0, w - 1))))
    else:
        a = rng.randint(lo, hi)
    r = rng.random()
    m = 0 if r < 0.05 else (1 << mb) - 1 if r < 0.1 else rng.randrange(1 << (mb - 1), 1 << mb)
    return a, m


def random_beat(rng, dut):
    """One beat. A quarter with a uniform shift in [1, 62] (mostly 0 or saturated outputs),
    half with the shift that brings the largest lane near the output range, a quarter of exact
    .5 ties (round half up, also into saturation)."""
    lanes, w, out_bits, mb = dut.lanes, dut.in_width, dut.out_bits, dut.mult_bits
    kind = rng.random()
    if kind < 0.25:
        acc, mult = zip(*[random_lane(rng, dut) for _ in range(lanes)])
        return list(acc), list(mult), rng.randint(1, 62)
    if kind < 0.75:
        acc, mult = zip(*[random_lane(rng, dut) for _ in range(lanes)])
        top = max(abs(a * m) for a, m in zip(acc, mult)).bit_length()
        shift = max(1, min(62, top - (out_bits - 1) + rng.randint(-3, 2)))
        return list(acc), list(mult), shift
    # acc * 2^(mb-1) = (2k + 1) * 2^(shift-1): the result is exactly k + 0.5 before rounding.
    base = mb - 1                              # acc = (2k + 1) << (shift - 1 - base)
    shift = rng.randint(base + 1, min(62, base + w - 2))
    room = w - 1 - (shift - 1 - base)          # bits left for 2k + 1 (with sign)
    kmax = min(1 << (out_bits - 1), 1 << max(0, room - 2))
    acc = [(2 * rng.randint(-kmax, kmax - 1) + 1) << (shift - 1 - base) for _ in range(lanes)]
    return acc, [1 << base] * lanes, shift


def directed_beats(dut):
    """The accumulator's extremes and its neighbours of 0 at every critical shift, with the
    multiplier 0, 2^(mult_bits-1) and its maximum."""
    lanes, w = dut.lanes, dut.in_width
    lo, hi = -(1 << (w - 1)), (1 << (w - 1)) - 1
    mmax = (1 << dut.mult_bits) - 1
    beats = []
    for shift in (1, 2, 15, 16, 31, 32, 47, 48, 49, 61, 62):
        for m in (0, 1 << (dut.mult_bits - 1), mmax):
            acc = ([lo, hi, 0, -1, 1, lo + 1] * lanes)[:lanes]
            beats.append((acc, [m] * lanes, shift))
    return beats


def make_bench(dut, *, seed, beats=300, in_stall=0.3, out_stall=0.3, perturb=None):
    """The bench's data: the directed beats, then `beats` random ones; `perturb` ``(beat,
    lane)`` adds one to that expected value, to prove the check can fail."""
    rng = random.Random(seed)
    bench = requantiser_bench(dut, directed_beats(dut) + [random_beat(rng, dut) for _ in range(beats)])
    if perturb is not None:
        bench["expected"][perturb[0]][perturb[1]] += 1
    return {**bench, "seed": seed, "in_stall": in_stall, "out_stall": out_stall}


def run_seed():
    """A fresh seed for the beats and stalls of each run (named in every failure message)."""
    return random.SystemRandom().randrange(1 << 32)


# ------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("config", CONFIGS)
def test_requantiser_matches_golden(sim_build, tmp_path, config):
    """Both tests of the bench: every beat under random stalls, then the first ones without
    stalls at one beat per cycle and the unit's latency; the summary says all was compared."""
    dut = Requantiser(**CONFIGS[config])
    assert dut.mult_bits == MULT_BITS
    seed = run_seed()
    bench = make_bench(dut, seed=seed)
    run = run_bench(sim_build(dut, "requantiser"), BENCH, bench, tmp_path, seed=seed)
    assert (run.results.tests, run.results.passed) == (2, 2), (seed, run.results.summary())
    tokens, elements = bench_outputs(bench)
    assert tokens == len(bench["beats"]) == 333
    v = verdict(run.summary, nonce=run.nonce, tokens=tokens, elements=elements,
                sim_ok=run.results.ok)
    assert v.passed, (seed, v.message)


def test_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected value off by one LSB must fail the run, name the beat and the lane, and be
    the one mismatch the summary counts."""
    dut = Requantiser(**CONFIGS["acc32-int8-x4"])
    beat, lane = 40, 2                 # past the directed beats: a random one
    seed = run_seed()
    bench = make_bench(dut, seed=seed, perturb=(beat, lane))
    run = run_bench(sim_build(dut, "requantiser"), BENCH, bench, tmp_path, seed=seed,
                    testcase="requantiser_bench")
    assert_one_off(run.results, "requantiser", beat, lane)
    tokens, elements = bench_outputs(bench)
    v = verdict(run.summary, nonce=run.nonce, tokens=tokens, elements=elements,
                sim_ok=run.results.ok)
    assert not v.passed and v.complete and v.mismatches == 1, (seed, v)


@pytest.mark.parametrize("config", [*CONFIGS.values(), dict(in_width=16, out_bits=32, lanes=1),
                                    dict(in_width=64, out_bits=64, lanes=2),
                                    dict(in_width=2, out_bits=2, lanes=1)])
def test_requantiser_verilog_lints_clean(config):
    result = verilator_lint(to_verilog(Requantiser(**config), "requantiser"), "requantiser")
    assert result.ok, result.output


def test_lint_waivers_keep_design_warnings():
    """The Amaranth waivers must not hide a real problem: a register nobody reads."""
    result = verilator_lint(to_verilog(unread_register(), "careless"), "careless")
    assert not result.ok
    assert any("UNUSEDSIGNAL" in w and "'forgotten'" in w for w in result.warnings), result.output


def test_waves_are_written(sim_build, tmp_path):
    """FST where the toolchain can (lz4 headers), VCD otherwise; into the folder asked for."""
    dut = Requantiser(in_width=32, out_bits=8, lanes=2)
    handle = sim_build(dut, "requantiser", waves=True)
    assert handle.wave_format == ("fst" if fst_supported() else "vcd")
    bench_file = tmp_path / "bench.json"
    bench_file.write_text(json.dumps(make_bench(dut, seed=1, beats=10)))
    waves_dir = tmp_path / "waves"
    results = run_cocotb(handle, BENCH, test_dir=tmp_path / "run", waves_dir=waves_dir,
                         testcase="requantiser_throughput",
                         extra_env={"MOEFORGE_BENCH": str(bench_file)})
    assert results.waves_path == waves_dir / f"requantiser.{handle.wave_format}"
    assert results.waves_path.stat().st_size > 0


def test_fst_without_lz4_is_a_clear_error():
    if fst_supported():
        pytest.skip("this machine has the lz4 development files: FST builds work")
    with pytest.raises(ToolchainError, match="FST tracing needs the lz4 development files"):
        build_cached(to_verilog(Requantiser(), "requantiser"), "requantiser", waves="fst")
