# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The HiddenUnit in Verilator under cocotb, bit-exact against ``ExpertBank.hidden``.

Golden side: quantised layers of `transformers` blocks with random weights (`family_configs`);
for tokens ``x`` the accumulators are the exact GEMMs ``x · W_gate[e]^T`` and ``x · W_up[e]^T``
(``expert_bank.int_gemm``) and the expected ``h`` is ``bank.hidden(e, x)``. Accumulators that no
token produces (random over the whole int32 range: ``g`` and ``u`` saturate) are checked against
the same ``ExpertBank.hidden``, run on a one-expert bank whose "weights" are the accumulators
and whose "tokens" are the identity (`golden_from_acc`, itself checked against the real tokens).

Batches per build (each loads its own image through the write port, `hidden_image`):

1. an expert of the layer, calibrated tokens plus all-127 / all-(-128) tokens;
2. another expert, extreme accumulators (some ``g`` and ``u`` saturate, so most ``h`` do), and
   the same expert's state with a hidden shift that keeps most ``h`` in range;
3. synthetic state: multipliers over ``[2^15, 2^16)`` plus 0 and 65535, shifts over
   ``[1, 62]``, a hidden shift with some saturation;
4. directed corners in twin channels (`twin_acc`): identity requantisers, and pairs of
   channels whose ``p`` differ by a few units across the int24/int16 saturation limits, the
   sigmoid table's range edges (±8.0) and its steps, made visible in ``h`` by the rotation;
5. tokens of ``d_ff / 2`` channels (a shared expert's length), where the rotation allows.

Three builds:

``swiglu-r16-x4``  Mixtral-style SwiGLU, F 64, 4 lanes, R 16: four-beat blocks inside a token
``swiglu-r4-x8``   SwiGLU, 8 lanes, R 4: two blocks inside each beat
``relu-r64-x8``    Switch ReLU, 8 lanes, R 64: one eight-beat block per token

Variants without a build (1 and 6 lanes, R = 1, R = lanes, a 16-beat block) run in Amaranth's
simulator (`test_hidden_amaranth_sim`).
"""

import dataclasses
import json
import math
import random

import pytest
import torch
from testkit import assert_one_off, hf_layer

from moeforge.hls_models.expert_bank import ExpertBank, int_gemm
from moeforge.hls_models.fixed_point import requantize
from moeforge.hls_models.hf_random import family_configs, make_hf_input
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.rtl.expert.hidden import (HiddenAddressMap, HiddenUnit, channel_layout, hid_layout,
                                 hidden_image, sigmoid_rom)
from moeforge.sim.benches.common import stream_prefix
from moeforge.sim.build import run_cocotb
from moeforge.sim.stream import unpack_layout
from moeforge.sim.toolchain import verilator_lint
from moeforge.sim.unit_sim import hidden_beats

pytestmark = pytest.mark.verilator

COCOTB_MODULE = "moeforge.sim.benches.hidden"

# name -> (config, lanes)
BUILDS = {
    "swiglu-r16-x4": (lambda: family_configs()["mixtral"].replace(name="mixtral-r16",
                                                                  hidden_rotation=16), 4),
    "swiglu-r4-x8": (lambda: family_configs()["mixtral"].replace(name="mixtral-r4",
                                                                 hidden_rotation=4), 8),
    "relu-r64-x8": (lambda: family_configs()["switch"], 8),
}


def make_dut(build):
    cfg, lanes = BUILDS[build][0](), BUILDS[build][1]
    return cfg, HiddenUnit.from_config(cfg, lanes=lanes)


# ------------------------------------------------------------------------------ golden side

def accumulators(bank, e, x):
    """The exact int32 GEMM accumulators (acc_g or None, acc_u) of expert e for tokens x."""
    x = x.to(torch.int64)
    acc_u = int_gemm(x, bank.w_up[e])
    acc_g = int_gemm(x, bank.w_gate[e]) if bank.activation == "swiglu" else None
    return acc_g, acc_u


def golden_from_acc(bank, e, acc_g, acc_u):
    """``ExpertBank.hidden`` of expert e for given accumulators: a one-expert bank whose
    weights are the accumulators (transposed), applied to identity tokens (exact: float64)."""
    T = acc_u.shape[0]
    one = dict(w_up=acc_u.T.unsqueeze(0), up_mult=bank.up_mult[e:e + 1],
               up_shift=bank.up_shift[e:e + 1], hid_mult=bank.hid_mult[e:e + 1],
               hid_shift=bank.hid_shift[e:e + 1])
    if bank.activation == "swiglu":
        one |= dict(w_gate=acc_g.T.unsqueeze(0), gate_mult=bank.gate_mult[e:e + 1],
                    gate_shift=bank.gate_shift[e:e + 1])
    return dataclasses.replace(bank, **one).hidden(0, torch.eye(T, dtype=torch.int64))


PARAM_FIELDS = ("up_mult", "up_shift", "gate_mult", "gate_shift", "hid_mult", "hid_shift")


def check_saturation(bank, e, acc_g, acc_u):
    """The stimulus must saturate some g (int24) and u (int16) and leave others in range."""
    i64 = torch.int64
    values = [(requantize(acc_u, bank.up_mult[e].to(i64), bank.up_shift[e].to(i64), 16), 16)]
    if acc_g is not None:
        values.append((requantize(acc_g, bank.gate_mult[e].to(i64), bank.gate_shift[e].to(i64),
                                  24), 24))
    for v, bits in values:
        top, bottom = (1 << (bits - 1)) - 1, -(1 << (bits - 1))
        assert (v == top).any() and (v == bottom).any(), f"int{bits} never saturates"
        assert ((v > bottom) & (v < top)).float().mean() > 0.2, f"int{bits} mostly saturated"


def extreme_acc(rng, T, F):
    """int32 accumulators: corners, random magnitudes, uniform over the whole range."""
    lo, hi = -(1 << 31), (1 << 31) - 1
    rows = []
    for _ in range(T):
        row = []
        for _ in range(F):
            kind = rng.random()
            if kind < 0.15:
                row.append(rng.choice([lo, hi, lo + 1, hi - 1, 0, 1, -1]))
            elif kind < 0.6:
                b = rng.randint(0, 31)
                row.append(rng.randint(-(1 << b), (1 << b) - 1))
            else:
                row.append(rng.randint(lo, hi))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


def synthetic_bank(activation, F, rotation, seed):
    """One expert of random requantiser state over the device's whole range."""
    g = torch.Generator().manual_seed(seed)

    def mult(n):
        m = torch.randint(1 << 15, 1 << 16, (1, n), generator=g)
        m[0, 0], m[0, n // 2] = 0, (1 << 16) - 1
        return m

    def shift(n):
        s = torch.randint(8, 48, (1, n), generator=g)
        s[0, 1], s[0, n - 1] = 1, 62
        return s

    z = torch.zeros(1, 1, 1, dtype=torch.int8)
    swiglu = activation == "swiglu"
    hid_mult = torch.randint(1 << 15, 1 << 16, (1,), generator=g)
    return ExpertBank(activation=activation, rotation=rotation, w_up=z, up_mult=mult(F),
                      up_shift=shift(F), hid_mult=hid_mult, hid_shift=torch.tensor([1]), w_down=z, down_mult=None, down_shift=None,
                      w_gate=z if swiglu else None, gate_mult=mult(F) if swiglu else None,
                      gate_shift=shift(F) if swiglu else None)


def identity_bank(activation, F, rotation):
    """Requantisers that pass their input through: rq_b(v, 2^15, 15) = sat_b(v): g = sat_24(acc_g),
    u = sat_16(acc_u), h = sat_8(p')."""
    bank = synthetic_bank(activation, F, rotation, seed=0)
    bank.hid_mult[0], bank.hid_shift[0] = 1 << 15, 15
    for name in ("up_mult", "gate_mult"):
        if getattr(bank, name) is not None:
            getattr(bank, name).fill_(1 << 15)
    for name in ("up_shift", "gate_shift"):
        if getattr(bank, name) is not None:
            getattr(bank, name).fill_(15)
    return bank


def twin_pairs(rng, swiglu):
    """Pairs of channel inputs ``((acc_g, acc_u), (acc_g, acc_u))`` whose ``p`` differ by a
    little (or not at all) when the unit is right: across the sigmoid table's range edges
    (g = ±8.0), its steps (multiples of 64), g's int24 and u's int16 saturation limits."""
    top, bottom = (1 << 31) - 1, -(1 << 31)
    g_max, u_max = (1 << 23) - 1, (1 << 15) - 1
    if not swiglu:
        return [((None, u_max + 1), (None, u_max)), ((None, top), (None, u_max)),
                ((None, -1), (None, 0)), ((None, bottom), (None, 0)),
                ((None, -u_max - 2), (None, -1)), ((None, 1), (None, 0)), ((None, 2), (None, 1))]
    pairs = [((32768, 1), (32767, 1)), ((32769, 1), (32768, 1)), ((-32768, 1), (-32769, 1)),
             ((-32767, 1), (-32768, 1)), ((g_max + 1, 1), (g_max, 1)), ((top, 1), (g_max, 1)),
             ((-g_max - 2, 3), (-g_max - 1, 3)), ((bottom, 3), (-g_max - 1, 3)),
             ((4096, u_max + 1), (4096, u_max)), ((4096, top), (4096, u_max)),
             ((4096, -u_max - 2), (4096, -u_max - 1)), ((4096, bottom), (4096, -u_max - 1)),
             ((0, 5), (1, 5)), ((-1, 5), (0, 5))]
    return pairs + [((64 * k, 1), (64 * k - 1, 1)) for k in rng.sample(range(-511, 512), 10)]


def twin_acc(rng, dut, F):
    """Tokens of blocks whose ``p`` pair up, channels (2k, 2k+1): one pair per block from
    `twin_pairs`, the others identical twins of random inputs. Row 1 of the block's
    Walsh-Hadamard transform is Σ_k (p_2k − p_2k+1): the informative pair's difference, exact
    in h through identity requantisers (M = 2^15, S = 15); any lane that computes a twin
    differently shows there too."""
    R = dut.rotation
    pairs = twin_pairs(rng, dut.swiglu)
    blocks = -(-2 * len(pairs) // (F // R)) * (F // R)        # every pair twice, whole tokens
    order = (pairs * 2 + [rng.choice(pairs) for _ in range(blocks - 2 * len(pairs))])
    rng.shuffle(order)
    extreme = extreme_acc(rng, blocks, R // 2).tolist()
    g, u = [], []
    for n, pair in enumerate(order):
        a, b = pair if rng.random() < 0.5 else pair[::-1]
        k = rng.randrange(R // 2)
        for j in range(R // 2):
            twin = (extreme[n][j], rng.randint(-50, 50))
            first, second = (a, b) if j == k else (twin, twin)
            for acc_g, acc_u in (first, second):
                g.append(acc_g if acc_g is not None else 0)
                u.append(acc_u)
    T = blocks * R // F
    acc_g = torch.tensor(g, dtype=torch.int64).reshape(T, F) if dut.swiglu else None
    return acc_g, torch.tensor(u, dtype=torch.int64).reshape(T, F)


def twin_batch(rng, dut, F):
    """`twin_acc` tokens of F channels, their identity bank and expected h."""
    ident = identity_bank(dut.activation, F, dut.rotation)
    acc_g, acc_u = twin_acc(rng, dut, F)
    h = golden_from_acc(ident, 0, acc_g, acc_u)
    row1 = h.reshape(-1, dut.rotation)[:, 1]
    assert (row1.abs() < 127).all() and (row1 != 0).any(), row1    # visible, exact
    return ident, acc_g, acc_u, h


def tune_hid_shift(bank, acc_g, acc_u):
    """The smallest hidden shift that saturates at most a tenth of h (some saturation stays)."""
    for s in range(1, 63):
        bank.hid_shift[0] = s
        h = golden_from_acc(bank, 0, acc_g, acc_u)
        if ((h == 127) | (h == -128)).float().mean() <= 0.1:
            return h
    return h


def batch(dut, name, bank, e, acc_g, acc_u, expected):
    return dict(name=name, image=hidden_image(bank, e), beats=hidden_beats(dut, acc_g, acc_u),
                expected=expected.tolist())


def batches_for(cfg, dut, seed=0):
    rng = random.Random(seed)
    bank = hf_layer(cfg).experts
    F = dut.d_ff
    assert F == cfg.d_ff
    out = []
    # 1. real tokens through expert 3
    q = hf_layer(cfg)
    x = torch.cat([q.expert_input(q.quantize_input(make_hf_input(cfg, 16, 2))),
                   torch.full((1, cfg.d_model), 127, dtype=torch.int8),
                   torch.full((1, cfg.d_model), -128, dtype=torch.int8)])
    acc_g, acc_u = accumulators(bank, 3, x)
    h = bank.hidden(3, x.to(torch.int64))
    assert torch.equal(golden_from_acc(bank, 3, acc_g, acc_u), h)
    out.append(batch(dut, "expert 3, calibrated tokens", bank, 3, acc_g, acc_u, h))
    # 2. extreme accumulators through expert 6: g and u saturate (h then mostly does too, so
    # the same again with a hidden shift that keeps h mostly in range)
    acc_g = extreme_acc(rng, 10, F) if dut.swiglu else None
    acc_u = extreme_acc(rng, 10, F)
    check_saturation(bank, 6, acc_g, acc_u)
    out.append(batch(dut, "expert 6, extreme accumulators", bank, 6, acc_g, acc_u,
                     golden_from_acc(bank, 6, acc_g, acc_u)))
    e6 = dataclasses.replace(bank, **{f: getattr(bank, f)[6:7].clone() for f in PARAM_FIELDS
                                      if getattr(bank, f) is not None})
    acc_g = extreme_acc(rng, 8, F) if dut.swiglu else None
    acc_u = extreme_acc(rng, 8, F)
    out.append(batch(dut, "expert 6 state, extreme accumulators, in-range h", e6, 0, acc_g,
                     acc_u, tune_hid_shift(e6, acc_g, acc_u)))
    # 3. synthetic state over the whole range
    syn = synthetic_bank(cfg.activation, F, dut.rotation, seed + 1)
    acc_g = extreme_acc(rng, 8, F) if dut.swiglu else None
    acc_u = extreme_acc(rng, 8, F)
    out.append(batch(dut, "synthetic state", syn, 0, acc_g, acc_u,
                     tune_hid_shift(syn, acc_g, acc_u)))
    # 4. directed corners of g and u in twin channels (identity requantisers)
    if dut.rotation > 1:
        ident, acc_g, acc_u, h = twin_batch(rng, dut, F)
        out.append(batch(dut, "twin channels: corners of g, u and the sigmoid table", ident, 0,
                         acc_g, acc_u, h))
    # 5. short tokens: half the channels
    short = F // 2
    if short % math.lcm(dut.lanes, dut.rotation) == 0:
        syn = synthetic_bank(cfg.activation, short, dut.rotation, seed + 2)
        acc_g = extreme_acc(rng, 6, short) if dut.swiglu else None
        acc_u = extreme_acc(rng, 6, short)
        out.append(batch(dut, f"{short}-channel tokens", syn, 0, acc_g, acc_u,
                         tune_hid_shift(syn, acc_g, acc_u)))
    return out


def bench_file(tmp_path, dut, batches, *, in_stall=0.3, out_stall=0.3, perturb=None):
    ports = verilog_ports(dut)
    prefix = {s: stream_prefix(ports, s) for s in ("i_acc", "o_h")}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({
        "lanes": dut.lanes, "latency": dut.latency, **prefix,
        "wr": {k: ports[f"wr.{k}"].name for k in ("addr", "data", "en")},
        "h_data_offset": dut.h_layout["data"].offset,
        "h_last_offset": dut.h_layout["last"].offset,
        "batches": batches, "in_stall": in_stall, "out_stall": out_stall, "perturb": perturb,
    }))
    return {"MOEFORGE_HIDDEN_BENCH": str(path)}


# ------------------------------------------------------------------------------ Verilator

@pytest.mark.parametrize("build", BUILDS)
def test_hidden_matches_golden(sim_build, tmp_path, build):
    cfg, dut = make_dut(build)
    handle = sim_build(dut, "hidden")
    env = bench_file(tmp_path, dut, batches_for(cfg, dut))
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, extra_env=env)
    assert (results.tests, results.passed) == (2, 2), results.summary()


def test_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected h off by one must fail the run, naming the token and the channel."""
    cfg, dut = make_dut("swiglu-r16-x4")
    handle = sim_build(dut, "hidden")
    batches = batches_for(cfg, dut)
    token, element = 21, 37                   # batch 2: extreme accumulators
    env = bench_file(tmp_path, dut, batches, perturb=[token, element])
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, testcase="hidden_random",
                         check=False, extra_env=env)
    assert_one_off(results, "hidden", token, element)


LINT_VARIANTS = [
    dict(activation="swiglu", d_ff=64, lanes=4, rotation=16),
    dict(activation="swiglu", d_ff=64, lanes=8, rotation=4),
    dict(activation="relu", d_ff=64, lanes=8, rotation=64),
    dict(activation="relu", d_ff=24, lanes=6, rotation=2),       # lanes not a power of two
    dict(activation="swiglu", d_ff=16, lanes=1, rotation=1),
    dict(activation="swiglu", d_ff=8, lanes=8, rotation=8),       # R = lanes = d_ff
    dict(activation="relu", d_ff=64, lanes=1, rotation=64),
]


@pytest.mark.parametrize("params", LINT_VARIANTS,
                         ids=lambda p: "{activation}-f{d_ff}-x{lanes}-r{rotation}".format(**p))
def test_hidden_verilog_lints_clean(params):
    result = verilator_lint(to_verilog(HiddenUnit(**params), "hidden"), "hidden")
    assert result.ok, result.output


# ------------------------------------------------------------------------------ Amaranth sim

def amaranth_run(dut, bank, acc_g, acc_u, *, seed, stall=0.3):
    """Load `bank` (expert 0), stream the tokens with stalls on both sides in Amaranth's
    simulator; returns the received tokens (lists of ints, split at `last`)."""
    from amaranth.sim import Simulator

    rng = random.Random(seed)
    T, F = acc_u.shape
    L = dut.lanes
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def producer(ctx):
        for addr, word in hidden_image(bank, 0):
            ctx.set(dut.wr.addr, addr)
            ctx.set(dut.wr.data, word)
            ctx.set(dut.wr.en, 1)
            await ctx.tick()
        ctx.set(dut.wr.en, 0)
        await ctx.tick().repeat(2)
        for t in range(T):
            for b in range(F // L):
                while rng.random() < stall:
                    ctx.set(dut.i_acc.valid, 0)
                    await ctx.tick()
                value = {"up": acc_u[t, b * L:(b + 1) * L].tolist(), "last": int(b == F // L - 1)}
                if dut.swiglu:
                    value["gate"] = acc_g[t, b * L:(b + 1) * L].tolist()
                ctx.set(dut.i_acc.payload, value)
                ctx.set(dut.i_acc.valid, 1)
                await ctx.tick().until(dut.i_acc.ready)
        ctx.set(dut.i_acc.valid, 0)

    async def consumer(ctx):
        sink_rng = random.Random(seed + 1)
        token = []
        for _ in range(20 * T * (F // L) + 200):
            ctx.set(dut.o_h.ready, int(sink_rng.random() >= stall))
            _, _, valid, ready, payload = await ctx.tick().sample(
                dut.o_h.valid, dut.o_h.ready, dut.o_h.payload)
            if valid and ready:
                token += [int(v) for v in payload.data]
                if payload.last:
                    got.append(token)
                    token = []
                    if len(got) == T:
                        return

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return got


@pytest.mark.parametrize("activation,d_ff,lanes,rotation,short", [
    ("relu", 24, 6, 2, 0),          # lanes not a power of two (the write decode divides)
    ("swiglu", 16, 1, 1, 0),        # no rotation, one lane
    ("swiglu", 16, 8, 8, 0),        # R = lanes: the whole rotation inside a beat
    ("swiglu", 64, 4, 64, 0),       # a 16-beat block
    ("relu", 32, 2, 8, 16),         # tokens shorter than d_ff
])
def test_hidden_amaranth_sim(activation, d_ff, lanes, rotation, short):
    """Synthetic state with extreme accumulators, then the twin-channel corners (R > 1)."""
    dut = HiddenUnit(activation=activation, d_ff=d_ff, lanes=lanes, rotation=rotation)
    F = short or d_ff
    rng = random.Random(d_ff * lanes + rotation)
    bank = synthetic_bank(activation, F, rotation, seed=lanes)
    acc_g = extreme_acc(rng, 3, F) if activation == "swiglu" else None
    acc_u = extreme_acc(rng, 3, F)
    expected = tune_hid_shift(bank, acc_g, acc_u).tolist()
    assert amaranth_run(dut, bank, acc_g, acc_u, seed=rotation) == expected
    if rotation > 1:
        ident, acc_g, acc_u, h = twin_batch(rng, dut, F)
        assert amaranth_run(dut, ident, acc_g, acc_u, seed=rotation + 1) == h.tolist()


# ------------------------------------------------------------------------------ parameters

def test_layouts_and_address_map():
    dut = HiddenUnit(activation="swiglu", d_ff=64, lanes=4, rotation=16)
    assert dut.acc_layout.size == 2 * 4 * 32 + 1
    relu = HiddenUnit(activation="relu", d_ff=64, lanes=4, rotation=16)
    assert [name for name, _ in relu.acc_layout] == ["up", "last"]
    assert channel_layout("swiglu").size == 44 and channel_layout("relu").size == 22
    amap = HiddenAddressMap(d_ff=64, activation="swiglu")
    assert (amap.HID, amap.channel(0), amap.channel(63), amap.words) == (0, 1, 64, 65)
    word = amap.channel_word(up_mult=40000, up_shift=17, gate_mult=50000, gate_shift=62)
    fields = unpack_layout(channel_layout("swiglu"), word)
    assert fields == dict(up_mult=40000, up_shift=17, gate_mult=50000, gate_shift=62)
    assert unpack_layout(hid_layout(), amap.hid_word(65535, 1)) == dict(mult=65535, shift=1)
    with pytest.raises(ValueError, match="shift must be in"):
        amap.channel_word(up_mult=1, up_shift=0, gate_mult=1, gate_shift=1)
    with pytest.raises(ValueError, match="multiplier must be in"):
        amap.hid_word(1 << 16, 3)
    assert len(sigmoid_rom()) == 1024


def test_hidden_image_of_a_layer():
    cfg = BUILDS["swiglu-r16-x4"][0]()
    bank = hf_layer(cfg).experts
    image = hidden_image(bank, 5)
    amap = HiddenAddressMap(d_ff=cfg.d_ff, activation="swiglu")
    assert [a for a, _ in image] == list(range(cfg.d_ff + 1))
    assert image[0][1] == amap.hid_word(bank.hid_mult[5], bank.hid_shift[5])
    c = 17
    assert unpack_layout(channel_layout("swiglu"), image[1 + c][1]) == dict(
        up_mult=int(bank.up_mult[5, c]), up_shift=int(bank.up_shift[5, c]),
        gate_mult=int(bank.gate_mult[5, c]), gate_shift=int(bank.gate_shift[5, c]))
    with pytest.raises(ValueError, match="expert must be in"):
        hidden_image(bank, cfg.n_experts)


def test_from_config():
    cfg = family_configs()["qwen2_moe"].replace(name="q", d_ff=64, shared_d_ff=128)
    dut = HiddenUnit.from_config(cfg, lanes=8)
    assert (dut.activation, dut.d_ff, dut.lanes, dut.rotation) == ("swiglu", 128, 8, 64)
    assert dut.latency == dut.stages + 7
    switch = HiddenUnit.from_config(family_configs()["switch"], lanes=8)
    assert (switch.activation, switch.multipliers_per_lane) == ("relu", 2)
    with pytest.raises(TypeError, match="AccelConfig"):
        HiddenUnit.from_config({"d_ff": 64}, lanes=8)


@pytest.mark.parametrize("params,message", [
    (dict(activation="gelu"), "activation must be one of relu, swiglu, not 'gelu'"),
    (dict(lanes=0), r"lanes must be in \[1, 1024\], not 0"),
    (dict(rotation=12), "rotation must be a power of two in \\[1, 64\\], not 12"),
    (dict(rotation=128), r"rotation must be in \[1, 64\], not 128"),
    (dict(d_ff=60), "lanes must divide d_ff=60, not 8"),
    (dict(d_ff=48, rotation=32), "rotation must divide d_ff=48, not 32"),
    (dict(d_ff=48, lanes=12, rotation=8),
     "lanes must divide rotation=8 or be a multiple of it, not 12"),
])
def test_bad_parameters(params, message):
    args = dict(activation="swiglu", d_ff=64, lanes=8, rotation=16) | params
    with pytest.raises(ValueError, match=message):
        HiddenUnit(**args)
    with pytest.raises(TypeError, match="lanes must be an integer"):
        HiddenUnit(activation="relu", d_ff=64, lanes=4.0, rotation=4)
