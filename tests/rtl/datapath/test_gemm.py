# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The GemmEngine in Verilator under cocotb, bit-exact against an integer matmul (torch int64).

The cocotb side is sim/benches/gemm.py. The engine runs on `WeightMemoryHarness` (its weight
read port on a plain memory the test fills); every job of a build runs back to back with its
own ``W`` (at its own ``w_base``) and ``X``, random stalls on ``i_job``/``i_x`` and back-pressure
on ``o_y``.

Two builds:

``r4c4``    4×4 array, N 16, K 32, t_max 16, one group per block: 4 double-buffered blocks.
``r8c8g2``  8×8 array, N 32, K 64, t_max 64, two groups per block (16 rows): 2 blocks.
"""

import json

import pytest
import torch
from testkit import assert_one_off, unread_register

from moeforge.rtl.datapath.gemm import GemmEngine, gemm_image
from moeforge.rtl.export import to_verilog
from moeforge.sim.benches.common import harness_ports
from moeforge.sim.benches.gemm import expected_beats
from moeforge.sim.build import run_cocotb
from moeforge.sim.toolchain import lint_problems
from moeforge.sim.weight_memory import WeightMemoryHarness

pytestmark = pytest.mark.verilator

COCOTB_MODULE = "moeforge.sim.benches.gemm"
CONFIGS = {
    "r4c4": dict(rows=4, cols=4, n=16, k=32, t_max=16, w_addr_width=12),
    "r8c8g2": dict(rows=8, cols=8, n=32, k=64, t_max=64, group_rows=2, w_addr_width=12),
}
MAX_JOBS = 8


def make_dut(config):
    eng = GemmEngine(**CONFIGS[config])
    return eng, WeightMemoryHarness(eng, depth=MAX_JOBS * eng.image_words)


def job_beats(eng, x, w):
    """o_y beats of one job: block-major, token, group; [R values, token, block, last]."""
    return expected_beats(eng, x.to(torch.int64) @ w.to(torch.int64).T)      # exact


def make_jobs(eng, seed):
    """Token counts 1, 3, R, t_max and random ones; the int8 corners in X and W."""
    g = torch.Generator().manual_seed(seed)
    N, K, R, tm = eng.n, eng.k, eng.rows, eng.t_max

    def rnd(*shape):
        return torch.randint(-128, 128, shape, generator=g)

    full = lambda T, v: torch.full((T, K), v)                       # noqa: E731
    cases = [
        (rnd(1, K), rnd(N, K)),                                      # T = 1
        (rnd(3, K), rnd(N, K)),
        (rnd(R, K), rnd(N, K)),
        (torch.cat([full(2, -128), full(2, 127), rnd(tm - 4, K)]),   # T = t_max, corners
         torch.cat([torch.full((N // 2, K), -128), torch.full((N // 2, K), 127)])[torch.randperm(N, generator=g)]),
        (rnd(int(torch.randint(1, tm + 1, (1,), generator=g)), K), rnd(N, K)),
        (full(tm, -128), torch.full((N, K), -128)),                  # the largest sum
    ]
    image, jobs = [], []
    for j, (x, w) in enumerate(cases):
        base = j * eng.image_words
        image += [[base + i, word] for i, word in enumerate(gemm_image(w, eng.cols))]
        jobs.append(dict(w_base=base, x=x.tolist(), expected=job_beats(eng, x, w),
                         busy=eng.busy(x.shape[0]), cycle_bound=eng.cycles(x.shape[0])))
    assert len(cases) <= MAX_JOBS
    return image, jobs


def params_file(tmp_path, config, *, seed=1, stall=0.3, perturb=None):
    eng, harness = make_dut(config)
    image, jobs = make_jobs(eng, seed)
    path = tmp_path / "params.json"
    path.write_text(json.dumps({
        "engine": CONFIGS[config], "depth": harness.depth,
        "ports": harness_ports(harness),
        "image": image, "jobs": jobs, "in_stall": stall, "out_stall": stall, "perturb": perturb,
    }))
    return {"MOEFORGE_TEST_PARAMS": str(path)}


@pytest.mark.parametrize("config", CONFIGS)
def test_gemm_matches_matmul(sim_build, tmp_path, config):
    handle = sim_build(make_dut(config)[1], "gemm")
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                         extra_env=params_file(tmp_path, config, seed=len(config)))
    assert (results.tests, results.passed) == (2, 2), results.summary()


def test_gemm_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected value off by one must fail the run and name the beat and lane."""
    eng, harness = make_dut("r4c4")
    handle = sim_build(harness, "gemm")
    job, beat, lane = 3, 5, 2
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="gemm_jobs", check=False,
                         extra_env=params_file(tmp_path, "r4c4", perturb=[job, beat, lane]))
    # beats of jobs 0..2 come first: T = 1, 3, R with N/R blocks each
    index = (1 + 3 + eng.rows) * eng.groups + beat
    assert_one_off(results, "gemm", index, lane)


@pytest.mark.parametrize("config", CONFIGS)
def test_gemm_verilog_lints_clean(config):
    eng, _ = make_dut(config)
    assert lint_problems(to_verilog(eng, "gemm"), "gemm") == []


def test_lint_check_keeps_unused_registers():
    """The alias rule must not excuse state: a register nobody reads is still reported."""
    problems = lint_problems(to_verilog(unread_register(), "careless"), "careless")
    assert any("UNUSEDSIGNAL" in p and "'forgotten'" in p for p in problems), problems


def test_gemm_image_layout():
    w = torch.tensor([[1, -1, 2, -128], [127, 0, 0, 3]])
    assert gemm_image(w, 2) == [0xFF01, 0x8002, 0x007F, 0x0300]
    with pytest.raises(ValueError, match="not a multiple of cols=3"):
        gemm_image(w, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=4, cols=4, n=16, k=30, t_max=4), "k must be a multiple of cols=4, not 30"),
    (dict(rows=4, cols=4, n=16, k=32, t_max=4, group_rows=3), "n must be a multiple of rows·group_rows = 12, not 16"),
    (dict(rows=0, cols=4, n=16, k=32, t_max=4), r"rows must be in \[1, 64\], not 0"),
    (dict(rows=4, cols=4, n=16, k=32, t_max=5000), r"t_max must be in \[1, 4096\], not 5000"),
])
def test_gemm_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GemmEngine(**kwargs)
    with pytest.raises(TypeError, match="rows must be an integer"):
        GemmEngine(rows=4.0, cols=4, n=16, k=32, t_max=4)
