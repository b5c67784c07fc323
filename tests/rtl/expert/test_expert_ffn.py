# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The ExpertFFN in Verilator under cocotb, bit-exact against ``ExpertBank.forward``.

Golden side: quantised layers of `transformers` blocks with random weights (`family_configs`,
shrunk to d_model 32, d_ff 64, t_max 16), ``expected = QuantizedMoELayer.expert_int(e, x)``. The
engine runs on `WeightMemoryHarness` holding four experts' images (`expert_image`); the jobs run
back to back, each on its own expert (``w_base``), with random stalls on ``i_job``/``i_x`` and
back-pressure on ``o_y``: T = 1, 2, 3, R and t_max; calibrated tokens, all-127 and all-(-128)
tokens, uniform int8 tokens (which saturate many ``g``, ``u`` and ``h``).

Two builds:

``swiglu-r8c8``  Mixtral-style SwiGLU, 8×8 array: hidden unit lanes 4 < cols 8 (lane-granular
                 hidden buffer writes), rotation block 64 (16 hidden-unit beats).
``relu-r8c4``    Switch ReLU, 8×4 array: hidden unit lanes 8 > cols 4 (each ``h`` beat written
                 as two words), rotation block 64, parameter words of 32 bits.
``swiglu-r8c8-int4``  the SwiGLU build with int4 weights (``weight_bits = 4``): two weight-buffer
                 words to an image word, unpacked by the loader.

Lanes equal to cols (ReLU 4×4) runs in Amaranth's simulator (`test_expert_ffn_amaranth_sim`).
"""

import json

import pytest
import torch
from testkit import assert_one_off, hf_layer

from moeforge.hls_models.hf_random import family_configs, make_hf_input
from moeforge.rtl.export import to_verilog
from moeforge.rtl.expert.expert_ffn import ExpertFFN, ExpertImageLayout, expert_image
from moeforge.rtl.expert.hidden import hidden_image
from moeforge.sim.benches.common import harness_ports
from moeforge.sim.benches.expert_ffn import amaranth_jobs, engine_kwargs, expected_beats, set_models
from moeforge.sim.build import run_cocotb
from moeforge.sim.toolchain import lint_problems
from moeforge.sim.weight_memory import WeightMemoryHarness

pytestmark = pytest.mark.verilator

COCOTB_MODULE = "moeforge.sim.benches.expert_ffn"
EXPERTS = 4                     # images in the weight memory
BUILDS = {
    "swiglu-r8c8": lambda: family_configs()["mixtral"].replace(
        name="mixtral-ffn", d_model=32, d_ff=64, mac_rows=8, mac_cols=8, token_buffer_depth=16),
    "relu-r8c4": lambda: family_configs()["switch"].replace(
        name="switch-ffn", d_model=32, d_ff=64, mac_rows=8, mac_cols=4, token_buffer_depth=16),
    "swiglu-r8c8-int4": lambda: BUILDS["swiglu-r8c8"]().replace(name="mixtral-ffn-int4", weight_bits=4),
}


def make_dut(cfg, experts=EXPERTS):
    eng = ExpertFFN(**engine_kwargs(cfg, experts))
    return eng, WeightMemoryHarness(eng, depth=experts * eng.image.words)


def job_beats(q, e, x):
    """o_y beats of one job of expert `e` on tokens `x`: per token D/R beats [R values of o,
    token, last]."""
    return expected_beats(q.expert_int(e, x), q.cfg.mac_rows)


def make_jobs(cfg, eng, seed=2):
    """(image writes, jobs): experts 0..3 at w_base e·words; the token sets of the docstring."""
    q = hf_layer(cfg)
    D, T_max, R = cfg.d_model, cfg.token_buffer_depth, cfg.mac_rows
    words = eng.image.words
    calib = q.expert_input(q.quantize_input(make_hf_input(cfg, 64, seed)))   # the experts' int8
    ext = torch.stack([torch.full((D,), 127), torch.full((D,), -128)]).to(torch.int8)
    g = torch.Generator().manual_seed(seed)
    uniform = torch.randint(-128, 128, (T_max, D), generator=g).to(torch.int8)
    cases = [
        ("T=1 calibrated", 0, calib[:1]),
        ("T=t_max calibrated + extremes", 1, torch.cat([ext, calib[1:T_max - 1]])),
        ("T=3 calibrated", 2, calib[20:23]),
        ("T=R calibrated", 3, calib[30:30 + R]),
        ("T=t_max uniform int8", 0, uniform),
        ("T=2 extremes", 2, ext.flip(0)),
    ]
    image = [[e * words + i, w] for e in range(EXPERTS)
             for i, w in enumerate(expert_image(q.experts, e, cfg))]
    jobs = [dict(name=name, w_base=e * words, x=x.tolist(), expected=job_beats(q, e, x),
                 busy=eng.busy(x.shape[0]), cycles=eng.cycles(x.shape[0]))
            for name, e, x in cases]
    return image, jobs


def params_env(tmp_path, cfg, *, stall=0.3, out_ready_every=None, perturb=None,
               image_change=None, summary=None, jobs=None, serial=False):
    eng, harness = make_dut(cfg)
    image, all_jobs = make_jobs(cfg, eng)
    if image_change is not None:                   # (address, xor mask) of one image word
        addr, mask = image_change
        image[addr][1] ^= mask
    run = all_jobs if jobs is None else [all_jobs[j] for j in jobs]
    for job in run:
        job["after_previous"] = serial
    set_models(eng, run)
    path = tmp_path / "params.json"
    path.write_text(json.dumps({
        "engine": engine_kwargs(cfg, EXPERTS),
        "ports": harness_ports(harness),
        "image": image, "jobs": run,
        "in_stall": stall, "out_stall": stall, "out_ready_every": out_ready_every,
        "perturb": perturb,
        "summary": None if summary is None else str(summary),
    }))
    return {"MOEFORGE_TEST_PARAMS": str(path)}


@pytest.mark.parametrize("build", BUILDS)
def test_expert_ffn_matches_golden(sim_build, tmp_path, build):
    """Both cocotb tests: random stalls (bit-exact, exact MAC ops), then no stalls (each job
    ends when `ExpertFFN.schedule` says). The SwiGLU build runs the jobs back to back (the
    engine prefetches the next job's weights and tokens while one computes); the ReLU build's
    no-stall run presents each job only after the previous one ended."""
    cfg = BUILDS[build]()
    serial = build.startswith("relu")
    handle = sim_build(make_dut(cfg)[1], "expert_ffn")
    summary = tmp_path / "summary.json"
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                         extra_env=params_env(tmp_path, cfg, summary=summary, serial=serial))
    assert (results.tests, results.passed) == (2, 2), results.summary()
    out = json.loads(summary.read_text())
    eng = ExpertFFN(**engine_kwargs(cfg, EXPERTS))
    counts = [len(job["x"]) for job in json.loads((tmp_path / "params.json").read_text())["jobs"]]
    periods = out["periods"]
    assert sum(b for b, _ in periods) == sum(eng.busy(T) for T in counts)
    if serial:                                    # one busy period per job
        assert [t for _, t in periods] == [eng.cycles(T) for T in counts], periods
    else:                                         # overlapped: shorter than one at a time
        (busy, total), = periods
        assert total < sum(eng.cycles(T) for T in counts) - 1000, (total, counts)


def test_expert_ffn_down_params_kept_while_their_bank_is_rewritten(sim_build, tmp_path):
    """``o_y`` ready one cycle in 500, three short jobs back to back on experts 2, 2 and 0: the
    first job's last beats wait in the down requantiser (its parameter read, then its
    registers) while the third job writes its own down parameters into the same bank (it is
    taken once the second job is current and loaded, and writes them once the second has
    issued its gate/up ops and drained the hidden unit: none of that waits for ``o_y``). The
    waiting beats must keep expert 2's M_d and S_d: a requantiser that re-read the parameter
    memory for a beat it holds fails here (checked), but passes the other tests' stalls."""
    cfg = BUILDS["swiglu-r8c8"]()
    handle = sim_build(make_dut(cfg)[1], "expert_ffn")
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="expert_ffn_jobs",
                         extra_env=params_env(tmp_path, cfg, stall=0.1, out_ready_every=500,
                                              jobs=[5, 2, 0]))   # T = 2, 3, 1
    assert (results.tests, results.passed) == (1, 1), results.summary()


def test_expert_ffn_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected value off by one must fail the run and name the beat and lane."""
    cfg = BUILDS["swiglu-r8c8"]()
    handle = sim_build(make_dut(cfg)[1], "expert_ffn")
    job, beat, lane = 1, 5, 3
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="expert_ffn_jobs",
                         check=False, extra_env=params_env(tmp_path, cfg, perturb=[job, beat, lane]))
    index = cfg.d_model // cfg.mac_rows + beat          # job 0 is one token: D/R beats
    assert_one_off(results, "expert_ffn", index, lane)


# (build, image word, bit): W_down[0, 24:32] at int8 (lane 7: output channel 0); at int4 the
# high half of the word holding W_down[0, 16:24] and W_down[0, 24:32] (its lane 7, bit 3: the sign)
FLIPS = {"swiglu-r8c8": (3, 62), "swiglu-r8c8-int4": (1, 63)}


@pytest.mark.parametrize("build", FLIPS)
def test_expert_ffn_wrong_weight_word_is_caught(sim_build, tmp_path, build):
    """One flipped bit in a down-projection weight of expert 0 must make its output differ."""
    cfg = BUILDS[build]()
    eng, harness = make_dut(cfg)
    handle = sim_build(harness, "expert_ffn")
    offset, bit = FLIPS[build]
    addr = eng.image.dw_base + offset
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="expert_ffn_jobs",
                         check=False, extra_env=params_env(tmp_path, cfg, image_change=(addr, 1 << bit),
                                                           jobs=[4]))
    assert not results.ok
    message = results.failures[0].message
    assert "expert_ffn: mismatch at token " in message and ", element 0 (cycle " in message, message


@pytest.mark.parametrize("build", BUILDS)
def test_expert_ffn_verilog_lints_clean(build):
    cfg = BUILDS[build]()
    eng = ExpertFFN.from_config(cfg)
    assert lint_problems(to_verilog(eng, "expert_ffn"), "expert_ffn") == []


def run_amaranth(cfg, jobs, image):
    """Run `jobs` back to back in Amaranth's simulator, no stalls (`amaranth_jobs`); returns
    the o_y beats, the counters at the end and each job's (accepted, ended) cycle counted from
    the first acceptance."""
    run = amaranth_jobs(*make_dut(cfg), image, jobs)
    return run.outs, run.counters, run.spans


def three_jobs_checked(cfg):
    """Experts 1, 2 and 5 (at bases 0, words, 2·words) on 4, 1 and 3 tokens, back to back in
    Amaranth's simulator (the second and third prefetched): bit-exact, exact MAC ops, each
    job's span as `ExpertFFN.schedule` has it (within 1 %). Returns the engine and the run's
    total cycles and spans."""
    eng = make_dut(cfg)[0]
    q = hf_layer(cfg)
    x = q.expert_input(q.quantize_input(make_hf_input(cfg, 8, 3)))
    words = eng.image.words
    image = [[slot * words + i, w] for slot, e in enumerate((1, 2, 5))
             for i, w in enumerate(expert_image(q.experts, e, cfg))]
    parts = [(0, 1, x[:4]), (1, 2, x[4:5]), (2, 5, x[5:])]
    jobs = [dict(w_base=slot * words, x=xs.tolist(), expected=job_beats(q, e, xs))
            for slot, e, xs in parts]
    outs, (busy, total), spans = run_amaranth(cfg, jobs, image)
    assert len(outs) == 8 * cfg.d_model // cfg.mac_rows
    assert outs == [beat for job in jobs for beat in job["expected"]]
    counts = [len(job["x"]) for job in jobs]
    assert busy == sum(eng.busy(T) for T in counts)
    for (a, e), (ma, me) in zip(spans, eng.schedule(counts)):
        assert abs(a - ma) <= 0.01 * ma + 4 and abs(e - me) <= 0.01 * me + 4, (spans, eng.schedule(counts))
    return eng, total, spans


def test_expert_ffn_amaranth_sim():
    """ReLU on a 4×4 array (hidden unit lanes = cols: whole-word hidden buffer writes): three
    jobs back to back (`three_jobs_checked`), shorter than one at a time."""
    cfg = family_configs()["switch"].replace(name="switch-4x4", d_model=16, d_ff=32, mac_rows=4,
                                             mac_cols=4, token_buffer_depth=4)
    eng, total, spans = three_jobs_checked(cfg)
    assert total == spans[-1][1] < sum(eng.cycles(T) for T in (4, 1, 3))


def test_expert_ffn_int4_amaranth_sim():
    """int4 weights on a 3×3 ReLU array, d_model = d_ff = 9: the gate/up section is 27 buffer
    words, so one image word holds its last word and the down section's first (the loader
    holds the high half across the section change, while a prefetched job waits for the down
    region); three jobs back to back (`three_jobs_checked`), and the weight region half the
    int8 one."""
    cfg = family_configs()["switch"].replace(name="switch-3x3-int4", d_model=9, d_ff=9, mac_rows=3,
                                             mac_cols=3, token_buffer_depth=4, hidden_rotation=1,
                                             weight_bits=4)
    lay = make_dut(cfg)[0].image
    assert lay.gu_words % 2 == 1 and lay.words == lay.gu_base + (lay.gu_words + lay.dw_words + 1) // 2
    assert lay.weight_words == (make_dut(cfg.replace(weight_bits=8))[0].image.weight_words + 1) // 2
    three_jobs_checked(cfg)


def test_expert_image_layout_int4():
    """An int4 image: the parameter sections as at int8, then the weight region two buffer
    words to an image word, each nibble sign-extended back to the bank's value."""
    cfg = BUILDS["swiglu-r8c8-int4"]()
    q = hf_layer(cfg)
    bank, e = q.experts, 2
    img = expert_image(bank, e, cfg)
    lay = ExpertImageLayout.from_config(cfg)
    wide = ExpertImageLayout.from_config(cfg.replace(weight_bits=8))
    assert (lay.pack, lay.gu_base) == (2, wide.gu_base)
    assert lay.words == wide.gu_base + (wide.words - wide.gu_base) // 2
    assert img[:lay.gu_base] == expert_image(bank, e, cfg.replace(weight_bits=8))[:lay.gu_base]
    C = cfg.mac_cols
    buf = []
    for w in img[lay.gu_base:]:
        for half in range(2):
            buf.append([((w >> (4 * (half * C + c))) & 0xF) - (16 if (w >> (4 * (half * C + c))) & 8 else 0)
                        for c in range(C)])
    S_D, S_F = lay.s_d, lay.s_f
    for j in (0, lay.gu_groups - 1):
        for r in range(cfg.mac_rows):
            which, ch = lay.gu_row(j, r)
            mat = bank.w_gate if which == "gate" else bank.w_up
            start = (j * cfg.mac_rows + r) * S_D
            assert sum(buf[start:start + S_D], []) == mat[e, ch].tolist()
    for n in (0, cfg.d_model - 1):
        start = lay.gu_words + n * S_F
        assert sum(buf[start:start + S_F], []) == bank.w_down[e, n].tolist()
    assert int(bank.w_up.min()) >= -8 and int(bank.w_up.max()) <= 7
    with pytest.raises(ValueError, match=r"weight 8 is outside the int4 range \[-8, 7\]"):
        lay.weight_words_of([[8] + [0] * (C - 1)])


def test_expert_image_layout():
    """Every section of the image decodes back to the bank's values."""
    cfg = BUILDS["relu-r8c4"]().replace(name="swiglu-r8c4", family="mixtral", activation="swiglu",
                                        routing="topk_softmax", renormalize=True, top_k=2)
    q = hf_layer(cfg)
    bank, e = q.experts, 3
    img = expert_image(bank, e, cfg)
    lay = ExpertImageLayout(activation="swiglu", d_model=32, d_ff=64, rows=8, cols=4)
    assert len(img) == lay.words and (lay.hpw, lay.dpw) == (2, 1)
    wb = 32

    def value(i, n):
        return sum(img[i + k] << (wb * k) for k in range(n))

    assert [value(lay.hp_base + 2 * a, 2) for a in range(lay.hp_items)] == \
        [d for _, d in hidden_image(bank, e)]
    for n in range(32):
        v = value(lay.dp_base + n, 1)
        assert (v & 0xFFFF, v >> 16) == (int(bank.down_mult[e, n]), int(bank.down_shift[e, n]))

    def row(base, length):
        out = []
        for w in img[base:base + length // 4]:
            out += [((w >> (8 * c)) & 0xFF) - (256 if (w >> (8 * c)) & 0x80 else 0) for c in range(4)]
        return out

    # group 5: rows 0-3 gate rows of channels 20-23, rows 4-7 up rows of the same channels
    g5 = lay.gu_base + 5 * 8 * lay.s_d
    assert row(g5 + 1 * lay.s_d, 32) == bank.w_gate[e, 21].tolist()
    assert row(g5 + 6 * lay.s_d, 32) == bank.w_up[e, 22].tolist()
    assert row(lay.dw_base + 7 * lay.s_f, 64) == bank.w_down[e, 7].tolist()
    with pytest.raises(ValueError, match="activation 'swiglu' is not the config's 'relu'"):
        expert_image(bank, e, BUILDS["relu-r8c4"]())
    with pytest.raises(ValueError, match=r"expert must be in \[0, 7\], not 8"):
        expert_image(bank, 8, cfg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rows=7), "rows must be even for SwiGLU"),
    (dict(rows=8, cols=6), "d_model must be a multiple of 6, not 32"),
    (dict(rows=12, cols=8), "d_model must be a multiple of 12, not 32"),
    (dict(rows=4, cols=4, d_ff=66), "d_ff must be a multiple of 4, not 66"),
    (dict(rows=6, cols=4, d_model=48, d_ff=48), "the hidden unit's 3 lanes and cols=4 must divide"),
    (dict(activation="gelu"), "activation must be swiglu or relu, not 'gelu'"),
    (dict(t_max=0), r"t_max must be in \[1, 4096\], not 0"),
])
def test_expert_ffn_parameter_errors(kwargs, match):
    base = dict(activation="swiglu", d_model=32, d_ff=64, rows=8, cols=8, t_max=16, rotation=16)
    with pytest.raises(ValueError, match=match):
        ExpertFFN(**(base | kwargs))
