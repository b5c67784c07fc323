# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The Router in Verilator under cocotb, bit-exact against ``QuantizedMoELayer.route_int``.

Stimulus: quantised layers of `transformers` blocks with random weights (`family_configs`), and
variants of them with edited router state (zero weights, identical rows or groups, saturated
logits, extreme selection biases). Each batch is an image for the write port (`router_image`),
tokens and the expected ``[experts..., gates..., shared_gate]`` of each token; they reach the
cocotb side (sim/benches/router.py) as a JSON file named by ``MOEFORGE_TEST_PARAMS``.

Five builds, one per routing family (the float-faithful int16 input, the default) and one with
the int8-only input:

``qwen2``        softmax_topk, renormalised, Qwen2's sigmoid shared-expert gate (9 rows);
                 d_model 64, 8 lanes.
``mixtral``      topk_softmax; router_bits 12 and 16 lanes (4 slices per token).
``deepseek_v3``  sigmoid_topk + selection bias, 4 groups (top2_sum, 2 kept), 16 experts, k 4,
                 renormalised, routed scaling 2.5, always-on shared expert.
``deepseek_v2``  softmax_topk without renormalisation (Z over every expert), 4 groups (max,
                 2 kept), routed scaling 2.0; d_model 32 in one 32-lane slice per token.
``qwen2_int8``   qwen2_moe with ``input_bits = 8``: int8 tokens on 8 lanes.

Elaboration variants no build covers (one expert, groups of one, lanes 1, router_bits 8, k = E,
un-normalised sigmoid gates with Qwen2's shared gate, rsf 64 ...) run in Amaranth's simulator
(`test_router_amaranth_sim`), as does the divider.
"""

import copy
import json
import random

import pytest
import torch
from testkit import assert_one_off, hf_layer, token_range

from moeforge.config import AccelConfig
from moeforge.hls_models import QuantizedMoELayer
from moeforge.hls_models.hf_random import family_configs, make_hf_input
from moeforge.rtl.datapath.divider import Divider
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.rtl.routing.router import Router, RouterAddressMap, route_layout, router_image, token_layout
from moeforge.sim.benches import router as router_bench
from moeforge.sim.benches.common import stream_prefix
from moeforge.sim.build import run_cocotb
from moeforge.sim.toolchain import verilator_lint
from moeforge.spec.arith import GATE_BITS, X_SHIFT_MAX, X_WIDE_BITS

COCOTB_MODULE = "moeforge.sim.benches.router"


def _fam(family, **changes):
    return family_configs()[family].replace(**changes)


# name -> (config, lanes)
BUILDS = {
    "qwen2": (lambda: _fam("qwen2_moe", name="qwen2-renorm", renormalize=True), 8),
    "mixtral": (lambda: _fam("mixtral", name="mixtral-rb12", router_bits=12), 16),
    "deepseek_v3": (lambda: _fam("deepseek_v3"), 8),
    "deepseek_v2": (lambda: _fam("deepseek_v2", name="deepseek-v2-d32", d_model=32), 32),
    # the int8-only input: int8 tokens on the router's lanes (the others take int16)
    "qwen2_int8": (lambda: _fam("qwen2_moe", name="qwen2-int8", input_bits=8,
                                input_smoothing=0.0), 8),
    # expert skipping where the kept gates are divided again (the first choice is not always
    # the largest gate: the bias selects)
    "deepseek_v3_skip": (lambda: _fam("deepseek_v3", name="deepseek-v3-skip",
                                      skip_threshold=0.25), 8),
}


def build_config(build):
    make, lanes = BUILDS[build]
    return make(), lanes


def make_dut(build):
    cfg, lanes = build_config(build)
    return Router.from_config(cfg, lanes=lanes)


# ------------------------------------------------------------------------------ golden side

def synthetic_layer(cfg, seed):
    """Random router state only (route_int needs nothing else): weights over the whole
    router_bits range, M in [2^15, 2^16), a shift giving logits of a few units, biases ±0.1."""
    g = torch.Generator().manual_seed(seed)
    hi = (1 << (cfg.router_bits - 1)) - 1
    w = torch.randint(-hi, hi + 1, (cfg.router_rows, cfg.d_model), generator=g).to(torch.int16)
    mult = int(torch.randint(1 << 15, 1 << 16, (1,), generator=g))
    # |acc| ~ sqrt(D)·74·hi/1.7; aim for logits around 2^17 (2.0), some runs wider or narrower
    acc_bits = (int((cfg.d_model ** 0.5) * 74 * hi / 1.7) or 1).bit_length()
    shift = max(1, min(62, acc_bits + 16 - 17 + int(torch.randint(-3, 4, (1,), generator=g))))
    bias = (torch.randint(-3277, 3278, (cfg.n_experts,), generator=g).to(torch.int32)
            if cfg.selection_bias else None)
    return QuantizedMoELayer(cfg, router_weight=w, router_mult=mult, router_shift=shift,
                             selection_bias=bias, experts=None, shared=None, out_mult=0,
                             out_shift=1, x_scale=1.0, y_scale=1.0, o_scale=1.0,
                             x_shift=X_SHIFT_MAX if cfg.input_bits == X_WIDE_BITS else 0)


def variant(q, **router):
    """A copy of `q` with some router state replaced (router_weight, router_mult, ...)."""
    v = copy.copy(q)
    for key, value in router.items():
        assert hasattr(q, key), key
        setattr(v, key, value)
    return v


def random_tokens(cfg, n, seed):
    dtype, lo, hi = token_range(cfg)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n, cfg.d_model), generator=g).to(dtype)


def extreme_tokens(cfg):
    dtype, lo, hi = token_range(cfg)
    return torch.stack([torch.full((cfg.d_model,), hi), torch.full((cfg.d_model,), lo)]) \
        .to(dtype)


def aligned_tokens(cfg, w_row, n, seed):
    """Tokens along a weight row (its logit large and positive), slightly perturbed."""
    dtype, lo, hi = token_range(cfg)
    g = torch.Generator().manual_seed(seed)
    base = w_row.to(torch.float64) / max(1, int(w_row.abs().max())) * hi
    noise = torch.randint(-20, 21, (n, w_row.numel()), generator=g) * ((hi + 1) // 128)
    return (base + noise).round().clamp(lo, hi).to(dtype)


def expected_routes(q, x):
    return q.route_int(x).beat_rows(keep=bool(q.cfg.skip_threshold))


def make_batch(name, q, x, lanes):
    exp = expected_routes(q, x)
    assert all(0 <= g < (1 << GATE_BITS) for row in exp for g in row[q.cfg.top_k:])
    return dict(name=name, image=router_image(q, lanes=lanes), tokens=x.tolist(), expected=exp)


def edge_batches(cfg, q, lanes, seed):
    """The router-state corners of one layer `q` (see the module docstring)."""
    E, G = cfg.n_experts, cfg.experts_per_group
    w = q.router_weight.to(torch.int64)
    out = []
    # All logits equal (0): experts 0..k-1 (the lowest groups); sigmoid ties broken by bias only.
    zero = variant(q, router_weight=torch.zeros_like(q.router_weight))
    out.append(make_batch("zero weights", zero, torch.cat([random_tokens(cfg, 3, seed),
                                                           extreme_tokens(cfg)]), lanes))
    if cfg.selection_bias:
        out.append(make_batch("zero weights, zero bias",
                              variant(zero, selection_bias=torch.zeros_like(q.selection_bias)),
                              random_tokens(cfg, 2, seed + 1), lanes))
    # Two identical rows (a < b), made the largest for tokens along them: both selected, a first.
    if E >= 2:
        a, b = (1, E - 2) if E >= 4 else (0, E - 1)
        hi = (1 << (cfg.router_bits - 1)) - 1
        strong = (w[a] * 3).clamp(-hi, hi)
        w2 = w.clone()
        w2[a] = w2[b] = strong
        twin = variant(q, router_weight=w2.to(torch.int16))
        out.append(make_batch(f"rows {a} and {b} identical", twin,
                              torch.cat([aligned_tokens(cfg, strong, 6, seed + 2),
                                         random_tokens(cfg, 4, seed + 3)]), lanes))
    if cfg.n_group > 1:
        # Every group a copy of group 0 (bias too): all group scores tie, lowest groups win.
        w3 = w.clone()
        for gi in range(1, cfg.n_group):
            w3[gi * G:(gi + 1) * G] = w[:G]
        changes = dict(router_weight=w3.to(torch.int16))
        if cfg.selection_bias:
            changes["selection_bias"] = q.selection_bias[:G].repeat(cfg.n_group)
        out.append(make_batch("identical groups", variant(q, **changes),
                              random_tokens(cfg, 5, seed + 4), lanes))
    # Saturated logits (shift cut by 24, M maximal): ±2^31, EXP of differences up to 2^32.
    sat = variant(q, router_mult=65535, router_shift=max(1, q.router_shift - 24))
    out.append(make_batch("saturated logits", sat, torch.cat([random_tokens(cfg, 5, seed + 5),
                                                              extreme_tokens(cfg)]), lanes))
    # Shifts 15 smaller (logits ×2^15: some saturate, the rest spread so far that EXP of most
    # differences is 0) and 12 larger (logits within a few 2^-16 units: near ties, EXP
    # arguments rounding to the same 2^-12 step).
    for label, ds in (("half-saturated logits", -15), ("tiny logits", 12)):
        out.append(make_batch(label, variant(q, router_shift=min(62, max(1, q.router_shift + ds))),
                              random_tokens(cfg, 6, seed + 9 + ds), lanes))
    # M = 0: every logit 0 through the requantiser.
    out.append(make_batch("router_mult 0", variant(q, router_mult=0),
                          random_tokens(cfg, 2, seed + 6), lanes))
    if cfg.selection_bias:
        g = torch.Generator().manual_seed(seed + 7)
        pick = torch.tensor([-(1 << 31), (1 << 31) - 1, 0, -32768, 32768, 1, -1])
        bias = pick[torch.randint(0, len(pick), (E,), generator=g)].to(torch.int32)
        out.append(make_batch("extreme selection bias", variant(q, selection_bias=bias),
                              random_tokens(cfg, 4, seed + 8), lanes))
    return out


def assert_skipping_seen(cfg, batches):
    """With skipping, the batches must both skip an expert and keep a later choice, so the
    comparison covers each outcome (the keep mask is the beat's last value)."""
    if not cfg.skip_threshold:
        return
    full = (1 << cfg.top_k) - 1
    masks = {row[-1] for b in batches for row in b["expected"]}
    assert masks & {m for m in range(1, full)} and masks - {1}, masks


def batches_for(build):
    cfg, lanes = build_config(build)
    q = hf_layer(cfg)
    x = q.quantize_input(make_hf_input(cfg, 40, 2))
    out = [make_batch("hf layer, calibrated tokens", q, torch.cat([x, extreme_tokens(cfg)]),
                      lanes),
           make_batch("hf layer, one token", q, x[:1], lanes)]
    out += edge_batches(cfg, q, lanes, seed=10)
    for seed in (3, 4):
        out.append(make_batch(f"synthetic layer {seed}, random tokens", synthetic_layer(cfg, seed),
                              random_tokens(cfg, 12, 11 + seed), lanes))
    out.append(make_batch("hf layer again (state reloaded)", q, x[5:9], lanes))
    assert_skipping_seen(cfg, out)
    return out


def write_params(tmp_path, dut, batches, *, in_stall=0.3, out_stall=0.3, wr_stall=0.2):
    """The cocotb module's parameters (from the component itself) and batches, as a JSON file."""
    ports = verilog_ports(dut)
    path = tmp_path / "router_params.json"
    path.write_text(json.dumps({
        "lanes": dut.lanes, "input_bits": dut.input_bits, "slices": dut.slices,
        "n_experts": dut.n_experts, "top_k": dut.top_k, "skip": bool(dut.skip),
        "cycles_per_token": dut.cycles_per_token(),
        "i_tokens": stream_prefix(ports, "i_tokens"), "o_route": stream_prefix(ports, "o_route"),
        "wr_addr": ports["wr.addr"].name, "wr_data": ports["wr.data"].name,
        "wr_en": ports["wr.en"].name,
        "in_stall": in_stall, "out_stall": out_stall, "wr_stall": wr_stall, "batches": batches,
    }))
    return {"MOEFORGE_TEST_PARAMS": str(path)}


# ------------------------------------------------------------------------------ Verilator

@pytest.mark.verilator
@pytest.mark.parametrize("build", BUILDS)
def test_router_matches_golden(sim_build, tmp_path, build):
    dut = make_dut(build)
    handle = sim_build(dut, "router")
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                         extra_env=write_params(tmp_path, dut, batches_for(build)))
    assert (results.tests, results.passed) == (2, 2), results.summary()


@pytest.mark.verilator
def test_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected gate off by one must fail the run, naming the token and the element."""
    dut = make_dut("mixtral")
    handle = sim_build(dut, "router")
    batches = batches_for("mixtral")[:2]
    token, slot = 7, 1                           # batch 0, token 7: its second gate
    element = dut.top_k + slot
    batches[0]["expected"][token][element] += 1
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="router_batches",
                         check=False, extra_env=write_params(tmp_path, dut, batches))
    assert_one_off(results, "router", token, element)


# Elaboration variants no Verilator build covers, as configs (also run in Amaranth's simulator).
# A 1×1 ReLU array makes any d_model a valid config; the router's lanes are given separately.
ODD_CONFIGS = {
    # un-normalised sigmoid gates, Qwen2's sigmoid shared gate, groups of one expert (max),
    # router_bits 8, one lane
    "sigmoid-plain-shared": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=8, d_ff=8, n_experts=4, top_k=2,
                                         routing="sigmoid_topk", n_group=4, topk_group=3,
                                         shared_d_ff=8, shared_gate="sigmoid", router_bits=8),
                             1),
    # renormalised softmax_topk over top2_sum groups, six experts, k 3, rsf 64, 3 slices
    "softmax-renorm-top2": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=6, d_ff=8, n_experts=6, top_k=3,
                                        renormalize=True, n_group=3, topk_group=2,
                                        group_score="top2_sum", routed_scaling_factor=64.0),
                            2),
    # one expert: its gate is always 1.0
    "one-expert": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=4, d_ff=8, n_experts=1, top_k=1, cache_slots=1), 4),
    # k = E (every expert), rsf 0.5, router_bits 9
    "topk-softmax-all": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=12, d_ff=8, n_experts=3, top_k=3,
                                     routing="topk_softmax", renormalize=True,
                                     routed_scaling_factor=0.5, router_bits=9), 3),
    # renormalised sigmoid without bias, five experts, rsf 2.5, 3 lanes
    "sigmoid-renorm-5": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=9, d_ff=8, n_experts=5, top_k=2,
                                     routing="sigmoid_topk", renormalize=True,
                                     routed_scaling_factor=2.5, shared_d_ff=8), 3),
    # expert skipping: un-normalised sigmoid gates (the threshold sees SIG itself, no division)
    "skip-sigmoid-plain": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=8, d_ff=8, n_experts=6, top_k=3,
                                       routing="sigmoid_topk", skip_threshold=0.6), 2),
    # skipping without normalisation: softmax over every expert (one division pass), rsf 2.0
    "skip-softmax-all": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=8, d_ff=8, n_experts=6, top_k=3,
                                     routed_scaling_factor=2.0, skip_threshold=0.25), 4),
    # skipping with normalisation over the kept experts: topk_softmax, k 3 (two passes)
    "skip-topk-softmax": (AccelConfig(mac_rows=1, mac_cols=1, activation="relu", d_model=8, d_ff=8, n_experts=5, top_k=3,
                                      routing="topk_softmax", renormalize=True, skip_threshold=0.25), 8),
}


@pytest.mark.verilator
@pytest.mark.parametrize("config", [*BUILDS, *ODD_CONFIGS])
def test_router_verilog_lints_clean(config):
    cfg, lanes = build_config(config) if config in BUILDS else ODD_CONFIGS[config]
    result = verilator_lint(to_verilog(Router.from_config(cfg, lanes=lanes), "router"), "router")
    assert result.ok, result.output


@pytest.mark.verilator
@pytest.mark.parametrize("kw", [dict(num_bits=31, den_bits=19, quo_bits=16),
                                dict(num_bits=8, den_bits=4)])
def test_divider_verilog_lints_clean(kw):
    result = verilator_lint(to_verilog(Divider(**kw), "divider"), "divider")
    assert result.ok, result.output


@pytest.mark.verilator
@pytest.mark.parametrize("path", ["configs/deepseek_v3.toml", "configs/qwen2_moe.toml",
                                  "configs/tiny.toml"])
def test_example_configs_lint_clean(path):
    result = verilator_lint(to_verilog(Router.from_config(AccelConfig.from_toml(path)),
                                       "router"), "router")
    assert result.ok, result.output


# ------------------------------------------------------------------------------ Amaranth sim

def amaranth_route(dut, image, tokens, *, seed, stall=0.3):
    """Run the router in Amaranth's simulator (`router_bench.amaranth_route`): write `image`,
    stream `tokens` (random stalls and back-pressure); return each token's [experts...,
    gates..., shared_gate]."""
    return router_bench.amaranth_route(dut, image, tokens, seed=seed, stall=stall).routes


@pytest.mark.parametrize("config", ODD_CONFIGS)
def test_router_amaranth_sim(config):
    cfg, lanes = ODD_CONFIGS[config]
    dut = Router.from_config(cfg, lanes=lanes)
    routes, expected = [], []
    for seed in range(3):
        q = synthetic_layer(cfg, seed)
        x = torch.cat([random_tokens(cfg, 12, seed), extreme_tokens(cfg)])
        batches = [make_batch("synthetic", q, x, lanes)] + edge_batches(cfg, q, lanes, seed)
        assert_skipping_seen(cfg, batches)
        for b in batches:
            expected += b["expected"]
            routes += amaranth_route(dut, b["image"], b["tokens"], seed=seed)
    assert routes == expected


@pytest.mark.parametrize("num_bits, den_bits, quo_bits", [(8, 4, 8), (31, 19, 16), (6, 6, 1)])
def test_divider_amaranth_sim(num_bits, den_bits, quo_bits):
    """floor(num / den) and the remainder, 0 for den = 0, whenever the quotient fits."""
    from amaranth.sim import Simulator

    dut = Divider(num_bits=num_bits, den_bits=den_bits, quo_bits=quo_bits)
    assert dut.latency == quo_bits + 1
    rng = random.Random(num_bits)
    ops = [(0, 0), ((1 << num_bits) - 1, 0), (0, 1), (5 % (1 << num_bits), 1)]
    while len(ops) < 200:
        den = rng.randrange(1 << den_bits)
        num = rng.randrange(1 << num_bits)
        if den == 0 or num < den << quo_bits:
            ops.append((num, den))
    ops = [(n, d) for n, d in ops if d == 0 or n < d << quo_bits]
    got = []

    async def bench(ctx):
        for num, den in ops:
            ctx.set(dut.i_op.payload.num, num)
            ctx.set(dut.i_op.payload.den, den)
            ctx.set(dut.i_op.valid, 1)
            while not ctx.get(dut.i_op.ready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(dut.i_op.valid, 0)
            cycles = 1
            ctx.set(dut.o_quo.ready, 1)
            while not ctx.get(dut.o_quo.valid):
                await ctx.tick()
                cycles += 1
            got.append((ctx.get(dut.o_quo.payload.quotient), ctx.get(dut.o_quo.payload.remainder),
                        cycles))
            await ctx.tick()
            ctx.set(dut.o_quo.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = [(n // d, n % d, dut.latency) if d else (0, 0, dut.latency) for n, d in ops]
    assert got == want


# ------------------------------------------------------------------------------ Python side

def test_router_image_address_map():
    cfg = _fam("deepseek_v3")
    q = hf_layer(cfg)
    amap = RouterAddressMap.from_config(cfg, lanes=8)
    dut = Router.from_config(cfg, lanes=8)
    assert dut.address_map == amap
    image = dict(router_image(q, lanes=8))
    S = cfg.d_model // 8
    assert (amap.weight_words, amap.mult, amap.shift, amap.bias, amap.words) == \
        (16 * S, 16 * S, 16 * S + 1, 16 * S + 2, 16 * S + 2 + 16)
    assert sorted(image) == list(range(amap.words))
    assert amap.data_bits == verilog_ports(dut)["wr.data"].width == 8 * 16
    # row 3, slice 2: lanes 16..23 of row 3, lane 0 in the low bits, two's complement
    word = image[amap.weight_addr(3, 2)]
    lanes = [(word >> (16 * i)) & 0xFFFF for i in range(8)]
    assert [v - (1 << 16) if v >> 15 else v for v in lanes] == q.router_weight[3, 16:24].tolist()
    assert image[amap.mult] == q.router_mult and image[amap.shift] == q.router_shift
    bias = [v - (1 << 32) if v >> 31 else v for v in (image[amap.bias + e] for e in range(16))]
    assert bias == q.selection_bias.tolist()
    # Qwen2: the shared gate row follows the experts; no bias words
    qwen = RouterAddressMap.from_config(_fam("qwen2_moe"), lanes=16)
    assert (qwen.rows, qwen.slices, qwen.words, qwen.data_bits) == (9, 4, 9 * 4 + 2, 256)


def test_layouts():
    dut = make_dut("deepseek_v3")
    assert dut.token_layout == token_layout(lanes=8, input_bits=16)
    assert dut.token_layout.size == 8 * 16 + 1
    assert make_dut("qwen2_int8").token_layout == token_layout(lanes=8)
    lay = route_layout(n_experts=16, top_k=4)
    assert dut.route_layout == lay
    assert lay.size == 4 * 4 + 4 * 22 + 16
    assert (lay["experts"].offset, lay["gates"].offset, lay["shared_gate"].offset) == (0, 16, 104)


def test_cycles_per_token_formula():
    # GEMV R·S + 8, TOPK k(E + 1), EXP k + 4 (+ E + 5), DIV k·19, SIG 24 each, OUT 1
    assert make_dut("mixtral").cycles_per_token() == 4 + 8 * 4 + 8 + 2 * 9 + 6 + 2 * 19 + 1
    assert make_dut("deepseek_v3").cycles_per_token() == \
        8 + 16 * 8 + 8 + 16 * 24 + 17 + 2 * 4 + 4 * 17 + 4 * 19 + 1
    # skipping where the gates are normalised: one KEEP cycle, still one division per gate
    assert make_dut("deepseek_v3_skip").cycles_per_token() == make_dut("deepseek_v3").cycles_per_token() + 1


@pytest.mark.parametrize("change, exc, match", [
    (dict(lanes=6), ValueError, "lanes must divide d_model=64, not 6"),
    (dict(top_k=9), ValueError, r"top_k must be in \[1, 8\], not 9"),
    (dict(n_group=3), ValueError, "n_group must divide n_experts=8, not 3"),
    (dict(n_group=4, topk_group=1, top_k=3), ValueError, "top_k must be at most"),
    (dict(selection_bias=True), ValueError, "selection_bias is only defined for routing"),
    (dict(routing="softmax"), ValueError, "routing must be one of"),
    (dict(rsf=(64 << 12) + 1), ValueError, r"rsf must be in \[0, 262144\]"),
    (dict(router_bits=17), ValueError, r"router_bits must be in \[8, 16\], not 17"),
    (dict(shared_gate="always_on"), ValueError, "shared_gate must be one of"),
    (dict(renormalize=1), TypeError, "renormalize must be a bool"),
    (dict(n_group=8, topk_group=2, group_score="top2_sum"), ValueError,
     "top2_sum' needs at least 2 experts per group"),
])
def test_bad_parameters(change, exc, match):
    with pytest.raises(exc, match=match):
        Router(**{**dict(d_model=64, n_experts=8, top_k=2), **change})


def test_from_config_needs_a_config():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        Router.from_config({"d_model": 64})
