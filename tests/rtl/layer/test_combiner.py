# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The Combiner in Verilator under cocotb, bit-exact against the golden model.

Stimulus and expectations come from `QuantizedMoELayer` (transformers blocks with random weights,
imported and quantised): the router's gates and each expert's int16 outputs become contributions
``{token, gate, o}`` in the order the device produces them (expert-major) or shuffled, and the
expected outputs are ``forward_int(x)``. They reach the cocotb side
(sim/benches/combiner.py) as a JSON file named by ``MOEFORGE_TEST_PARAMS``.

Three builds:

``x8``  `Combiner.from_config` of the DeepSeek-V3 config, 8 lanes (``L = R = mac_rows``, one
        lane per MAC row): d_model 64 (8 beats per token), t_max 64, max_terms 5 (k = 4 +
        shared), 41-bit accumulators. Every family of `family_configs` has d_model 64 and
        t_max 64 and at most 5 terms, so this one build runs the Switch, Qwen2-MoE, DeepSeek-V2
        and DeepSeek-V3 batches (only the accumulator width differs between their own builds,
        and 41 bits hold each of their sums exactly).
``x4``  the same config on its ``combiner_lanes`` (4 for 8 rows, as the layer core builds it:
        ``L < R``): 16 beats per token, the same batches.
``x16`` a Qwen2-MoE config shrunk to d_model 16 and t_max 8, 16 lanes: one beat per token, so
        consecutive contributions of a token hit the same address on consecutive cycles (the
        read-modify-write forwarding path); 40-bit accumulators (max_terms 3).
"""

import json
import random

import pytest
import torch
from testkit import assert_one_off, hf_layer

from moeforge.hls_models.fixed_point import requantize
from moeforge.hls_models.hf_random import family_configs, make_hf_input
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.rtl.layer.combiner import Combiner, accumulator_width
from moeforge.sim.benches.common import stream_prefix
from moeforge.sim.build import run_cocotb
from moeforge.sim.toolchain import verilator_lint
from moeforge.spec.arith import GATE_BITS

COCOTB_MODULE = "moeforge.sim.benches.combiner"
LANES = {"x8": 8, "x4": 4, "x16": 16}
GATE_MAX = (1 << GATE_BITS) - 1


def small_qwen2():
    """Qwen2-MoE (sigmoid shared gate) at d_model 16 and t_max 8: the one-beat-per-token build."""
    return family_configs()["qwen2_moe"].replace(name="qwen2-moe-tiny", d_model=16, d_ff=16,
                                                 shared_d_ff=16, token_buffer_depth=8)


def build_config(build):
    return small_qwen2() if build == "x16" else family_configs()["deepseek_v3"]


def make_dut(build):
    return Combiner.from_config(build_config(build), lanes=LANES[build])


# ------------------------------------------------------------------------------ golden side

def model_batch(cfg, n_tokens, *, seed, order, name, **extra):
    """One batch from the golden model: contributions in device (`expert-major`) or `random`
    order, expected y = forward_int(x), and the layer's M_y, S_y."""
    q = hf_layer(cfg)
    x = q.quantize_input(make_hf_input(cfg, n_tokens, seed))
    x64 = q.expert_input(x).to(torch.int64)          # the experts' int8 (the router reads x)
    route = q.route_int(x)
    contribs = []
    for e in torch.unique(route.indices).tolist():          # expert-major, as the device runs
        tok, slot = torch.nonzero(route.indices == e, as_tuple=True)
        o = q.experts.forward(e, x64[tok])
        for j, t in enumerate(tok.tolist()):
            contribs.append((t, int(route.gates[t, slot[j]]), o[j].tolist()))
    if q.shared is not None:                                  # the shared expert: all tokens
        o = q.shared.forward(0, x64)
        contribs += [(t, int(route.shared_gate[t]), o[t].tolist()) for t in range(n_tokens)]
    if order == "random":
        random.Random(seed).shuffle(contribs)
    else:
        assert order == "expert-major", order
    expected = q.forward_int(x)
    # The contributions must be the golden model's sum, or the test would check the wrong thing.
    assert torch.equal(reference_y(contribs, n_tokens, cfg.d_model, q.out_mult, q.out_shift),
                       expected.to(torch.int64))
    assert max(g for _, g, _ in contribs) <= GATE_MAX
    return dict(name=name, n_tokens=n_tokens, mult=q.out_mult, shift=q.out_shift,
                contribs=[[t, g, o] for t, g, o in contribs], expected=expected.tolist(), **extra)


def reference_y(contribs, n_tokens, d_model, mult, shift):
    """y = rq_8(Σ gate · o, M, S) per token (docs/arithmetic.md §5) on int64 tensors."""
    acc = torch.zeros(n_tokens, d_model, dtype=torch.int64)
    for t, g, o in contribs:
        if t < n_tokens:
            acc[t] += g * torch.tensor(o, dtype=torch.int64)
    return requantize(acc, mult, shift, 8)


def synthetic_batch(contribs, n_tokens, d_model, t_max, mult, shift, name, **extra):
    n_eff = min(n_tokens, t_max)
    return dict(name=name, n_tokens=n_tokens, mult=mult, shift=shift,
                contribs=[[t, g, list(o)] for t, g, o in contribs],
                expected=reference_y(contribs, n_eff, d_model, mult, shift).tolist(), **extra)


def extreme_contribs(dut):
    """The accumulator's corners: max_terms contributions of the largest gate with o at ±max
    (the sums need every bit of acc_width), mixed-sign lanes, a zero gate, an untouched token."""
    D, n = dut.d_model, dut.max_terms
    pattern = [32767, -32768, 0, 1, -1, 12345, -23456, 32767]
    mixed = [pattern[i % len(pattern)] for i in range(D)]
    contribs = []
    for _ in range(n):
        contribs += [(0, GATE_MAX, [-32768] * D), (1, GATE_MAX, [32767] * D),
                     (2, GATE_MAX, mixed)]
    contribs += [(4, 0, [32767] * D), (5, GATE_MAX, [-32768] * D), (5, 1, [1] * D)]
    # token 3 gets nothing: it must come out as 0
    random.Random(5).shuffle(contribs)
    return contribs, 6


def stress_contribs(rng, dut, n_tokens, count):
    """Many small contributions (more than max_terms: small values cannot overflow), tokens
    drawn from `n_tokens`: with one beat per token, back-to-back read-modify-writes of one
    address (n_tokens = 1) and of alternating addresses."""
    return [(rng.randrange(n_tokens), rng.randrange(1 << 16),
             [rng.randint(-2000, 2000) for _ in range(dut.d_model)]) for _ in range(count)]


def flush_after_flush(batch, d_model, t_max):
    """`batch` under heavy ``o_y`` back-pressure, then at once a flush without contributions
    with other M_y and S_y (1, so that any product they scale saturates): the unit takes the
    second flush while the first one's last beats are still in its pipeline, and those must
    keep the first flush's M_y and S_y."""
    assert (batch["mult"], batch["shift"]) != (65535, 1)
    return [dict(batch, out_stall=0.9),
            synthetic_batch([], 2, d_model, t_max, 65535, 1, out_stall=0.9,
                            name="flush right after a flush, new M_y and S_y")]


def batches_for(build):
    dut = make_dut(build)
    D, T = dut.d_model, dut.t_max
    fams = family_configs()
    out = []
    ext, n_ext = extreme_contribs(dut)
    # |acc| <= max_terms · 2^37 · M: with M = 65535 this S keeps y inside int8 (an overflow
    # of the accumulator would show), the second pair saturates every large lane.
    s_fit = dut.acc_width + 15 - 6
    if build in ("x8", "x4"):
        out += [
            model_batch(fams["deepseek_v3"], T, seed=11, order="expert-major",
                        name="deepseek_v3 T=T_max expert-major"),
            model_batch(fams["qwen2_moe"], 37, seed=12, order="random",
                        name="qwen2_moe T=37 random"),
            model_batch(fams["switch"], 1, seed=13, order="expert-major", name="switch T=1"),
            *flush_after_flush(model_batch(fams["switch"], 2, seed=18, order="random",
                                           name="switch T=2, o_y mostly stalled"), D, T),
            synthetic_batch([(t, GATE_MAX, [32767] * D) for t in range(3)], 0, D, T, 1 << 15, 1,
                            name="clear (n_tokens=0) with leftovers"),
            model_batch(fams["deepseek_v2"], T, seed=14, order="random",
                        name="deepseek_v2 T=T_max random"),
            synthetic_batch(ext, n_ext, D, T, 65535, s_fit, name="extreme, fits int8"),
            model_batch(fams["switch"], 23, seed=15, order="random", name="switch T=23 random"),
            synthetic_batch(ext, n_ext, D, T, 1 << 15, 30, name="extreme, saturates"),
            model_batch(fams["deepseek_v3"], 1, seed=16, order="random", name="deepseek_v3 T=1"),
            model_batch(fams["qwen2_moe"], T, seed=17, order="expert-major",
                        name="qwen2_moe T=T_max expert-major"),
        ]
    else:
        cfg = small_qwen2()
        rng = random.Random(21)
        out += [
            model_batch(cfg, 1, seed=21, order="expert-major", name="qwen2 T=1 no stalls",
                        in_stall=0.0),
            model_batch(cfg, T, seed=22, order="expert-major", name="qwen2 T=T_max"),
            *flush_after_flush(model_batch(cfg, 3, seed=25, order="random",
                                           name="qwen2 T=3, o_y mostly stalled"), D, T),
            synthetic_batch(stress_contribs(rng, dut, 1, 40), 1, D, T, 40000, 26,
                            name="T=1 back-to-back stress", in_stall=0.0),
            model_batch(cfg, 1, seed=23, order="random", name="qwen2 T=1"),
            synthetic_batch(stress_contribs(rng, dut, 2, 40), 2, D, T, 40000, 26,
                            name="T=2 alternating stress", in_stall=0.0),
            synthetic_batch(ext, n_ext, D, T, 65535, s_fit, name="extreme, fits int8"),
            model_batch(cfg, T, seed=24, order="random", name="qwen2 T=T_max random"),
            synthetic_batch(ext, n_ext, D, T, 1 << 15, 30, name="extreme, saturates"),
            synthetic_batch(stress_contribs(rng, dut, T, 30), 15, D, T, 40000, 26,
                            name="n_tokens above t_max"),
        ]
    return out


def write_params(tmp_path, dut, batches, *, perturb=None, in_stall=0.3, out_stall=0.3):
    """The cocotb module's parameters (from the component itself) and batches, as a JSON file."""
    ports = verilog_ports(dut)
    path = tmp_path / "combiner_params.json"
    path.write_text(json.dumps({
        "d_model": dut.d_model, "lanes": dut.lanes, "t_max": dut.t_max,
        "flush_latency": dut.flush_latency,
        "i_contrib": stream_prefix(ports, "i_contrib"), "i_flush": stream_prefix(ports, "i_flush"),
        "o_y": stream_prefix(ports, "o_y"),
        "y_mult": ports["y_mult"].name, "y_shift": ports["y_shift"].name,
        "in_stall": in_stall, "out_stall": out_stall, "perturb": perturb, "batches": batches,
    }))
    return {"MOEFORGE_TEST_PARAMS": str(path)}


# ------------------------------------------------------------------------------ tests

@pytest.mark.verilator
@pytest.mark.parametrize("build", LANES)
def test_combiner_matches_golden(sim_build, tmp_path, build):
    dut = make_dut(build)
    if build in ("x8", "x4"):
        # The families this build stands in for need nothing it lacks.
        for fam in ("switch", "qwen2_moe", "deepseek_v2", "deepseek_v3"):
            own = Combiner.from_config(family_configs()[fam], lanes=LANES[build])
            assert (own.d_model, own.t_max) == (dut.d_model, dut.t_max)
            assert own.acc_width <= dut.acc_width
    handle = sim_build(dut, "combiner")
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                         extra_env=write_params(tmp_path, dut, batches_for(build)))
    assert (results.tests, results.passed) == (2, 2), results.summary()


@pytest.mark.verilator
def test_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected y off by one must fail the run, naming the beat and the lane."""
    dut = make_dut("x16")
    handle = sim_build(dut, "combiner")
    batches = batches_for("x16")[:2]
    beat, lane = 3, 5                    # batch 1 (T = T_max), token 2: beats count across batches
    batches[1]["expected"][beat - 1][lane] += 1
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="combiner_batches",
                         check=False, extra_env=write_params(tmp_path, dut, batches))
    assert_one_off(results, "combiner", beat, lane)


@pytest.mark.verilator
@pytest.mark.parametrize("build", LANES)
def test_combiner_verilog_lints_clean(build):
    result = verilator_lint(to_verilog(make_dut(build), "combiner"), "combiner")
    assert result.ok, result.output


@pytest.mark.verilator
@pytest.mark.parametrize("kw", [dict(d_model=6, lanes=2, t_max=5, max_terms=1),
                                dict(d_model=64, lanes=64, t_max=300, max_terms=9)])
def test_odd_shapes_lint_clean(kw):
    """Beats per token and t_max that are not powers of two; one beat per token, 9 terms."""
    result = verilator_lint(to_verilog(Combiner(**kw), "combiner"), "combiner")
    assert result.ok, result.output


def test_builds_cover_fewer_lanes_than_rows_and_one_per_row():
    cfg = build_config("x8")
    assert LANES["x8"] == cfg.mac_rows and LANES["x4"] == cfg.combiner_lanes < cfg.mac_rows


def test_accumulator_width():
    # 38 bits for one product (22-bit gate × int16), + ceil(log2 terms)
    assert [accumulator_width(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [38, 39, 40, 40, 41, 41, 42]
    lo = -(1 << (accumulator_width(5) - 1))
    assert 5 * GATE_MAX * -32768 >= lo and 5 * GATE_MAX * -32768 < lo // 2  # 41 bits, not 40
    fams = family_configs()
    assert Combiner.from_config(fams["switch"], lanes=8).acc_width == 38
    assert Combiner.from_config(fams["qwen2_moe"], lanes=8).acc_width == 40
    assert Combiner.from_config(fams["deepseek_v3"], lanes=8).acc_width == 41


@pytest.mark.parametrize("change, exc, match", [
    (dict(lanes=6), ValueError, "lanes must divide d_model=64, not 6"),
    (dict(lanes=0), ValueError, r"lanes must be in \[1, 64\], not 0"),
    (dict(t_max=0), ValueError, r"t_max must be in \[1, 4096\], not 0"),
    (dict(max_terms=2.0), TypeError, "max_terms must be an integer"),
])
def test_bad_parameters(change, exc, match):
    with pytest.raises(exc, match=match):
        Combiner(**{**dict(d_model=64, lanes=8, t_max=4, max_terms=2), **change})


def test_acc_rd_reads_the_last_batch_until_the_next_one():
    """`acc_rd` (Amaranth simulator, 3 beats per token): after a flush it reads the flushed
    batch's sums (untouched tokens: 0), repeatedly; a flush with no contribution still
    outputs zeros; the next batch's first contribution forgets the previous batch's rows."""
    from amaranth.sim import Simulator

    D, L, T = 6, 2, 4
    dut = Combiner(d_model=D, lanes=L, t_max=T, max_terms=3)
    rng = random.Random(3)
    M, S = 40000, 20

    def vec():
        return [rng.randint(-32768, 32767) for _ in range(D)]

    batches = [[(0, 5, vec()), (2, GATE_MAX, vec()), (0, 1 << 15, vec()), (2, 77, vec())],
               [],                                    # a flush with nothing: all zeros
               [(1, 123456, vec())]]
    seen = {"y": [], "acc": []}

    async def send_contrib(ctx, token, gate, o):
        for b in range(D // L):
            ctx.set(dut.i_contrib.payload, {"token": token, "gate": gate,
                                            "data": o[b * L:(b + 1) * L], "last": b == D // L - 1})
            ctx.set(dut.i_contrib.valid, 1)
            await ctx.tick().until(dut.i_contrib.ready)
        ctx.set(dut.i_contrib.valid, 0)

    async def flush(ctx, n):
        ctx.set(dut.i_flush.payload.n_tokens, n)
        ctx.set(dut.i_flush.valid, 1)
        await ctx.tick().until(dut.i_flush.ready)
        ctx.set(dut.i_flush.valid, 0)
        y = []
        while len(y) < n * D:
            await ctx.tick()
            if ctx.get(dut.o_y.valid):
                y += list(ctx.get(dut.o_y.payload.data))
        for _ in range(4):
            await ctx.tick()
        return y

    async def read_acc(ctx):
        rows = []
        for t in range(T):
            row = []
            for b in range(D // L):
                ctx.set(dut.acc_rd.token, t)
                ctx.set(dut.acc_rd.beat, b)
                ctx.set(dut.acc_rd.en, 1)
                await ctx.tick()
                ctx.set(dut.acc_rd.en, 0)
                await ctx.tick()                      # held while en is low
                data = list(ctx.get(dut.acc_rd.data))
                row += data if ctx.get(dut.acc_rd.touched) else [0] * L
            rows.append(row)
        return rows

    async def bench(ctx):
        ctx.set(dut.o_y.ready, 1)
        ctx.set(dut.y_mult, M)
        ctx.set(dut.y_shift, S)
        for contribs in batches:
            for c in contribs:
                await send_contrib(ctx, *c)
            seen["y"].append(await flush(ctx, T))
            seen["acc"].append([await read_acc(ctx), await read_acc(ctx)])

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for i, contribs in enumerate(batches):
        acc = torch.zeros(T, D, dtype=torch.int64)
        for token, gate, o in contribs:
            acc[token] += gate * torch.tensor(o, dtype=torch.int64)
        assert seen["acc"][i] == [acc.tolist()] * 2, i
        assert seen["y"][i] == requantize(acc, M, S, 8).flatten().tolist(), i
