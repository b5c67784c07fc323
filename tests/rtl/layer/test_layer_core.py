# amaranth: UnusedElaboratable=no
# (parameter checks build components that are never elaborated)

"""The LayerCore in Verilator under cocotb, bit-exact against ``QuantizedMoELayer.forward_int``.

Each config of ``configs/*.toml`` (every family; Switch is the ReLU one) is built once as a
`LayerCoreHarness`: the core with the flat-weights fixture on its cache side (every expert's
image in place, ``slot = expert``, grants after random delays, release bookkeeping checked).
The weights come from `random_layer` (a quantised transformers block of the family); the
cocotb side (sim/benches/layer_core.py) loads router, expert and shared images once and runs
the batches back to back on them:

* 3 calibrated tokens: the fixture holds the first grant until every request of the batch is
  pending (the core must request ahead of its grants), then delays each grant at random;
* tied logits (an all-zero token: every logit 0, ties to the lower index), an all-127 and an
  all-(-128) token, with request acceptance stalled in random bursts;
* tiny.toml also: one token, and ``token_buffer_depth`` tokens.

Few tokens per batch keep the images' load (one word per cycle per expert) the main cost.
"""

import json
from pathlib import Path

import pytest
import torch
from testkit import token_range

from moeforge import AccelConfig, ConfigError
from moeforge.hls_models.hf_random import make_hf_input
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.rtl.expert.expert_ffn import expert_image
from moeforge.rtl.layer.layer_core import LayerCore
from moeforge.rtl.routing.router import router_image
from moeforge.sim.benches.flat_weights import LayerCoreHarness
from moeforge.sim.build import run_cocotb
from moeforge.sim.unit_sim import random_layer
from moeforge.sim.toolchain import lint_problems

pytestmark = pytest.mark.verilator

COCOTB_MODULE = "moeforge.sim.benches.layer_core"
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


# The example configs take the 16-bit input (the router reads int16 tokens, the engines the int8
# derived on the way out of the token buffer); "<config>-int8" is the config with the int8-only
# input (router and engines on the same int8 token), which a config may still ask for.
# "<config>-skip" is the config with expert skipping (tiny's threshold 0.4 skips a second choice
# often enough that a batch has an expert in some token's top-k that no token keeps).
# "<config>-int4" is the config with int4 expert weights (packed images in the cache);
# "<config>-small" halves d_model and the shared expert and the token buffer (qwen2_moe's sigmoid
# shared gate in `make test` without its 12.7k-word shared image).
VARIANTS = {"-int8": dict(input_bits=8, input_smoothing=0.0), "-skip": dict(skip_threshold=0.4),
            "-int4": dict(weight_bits=4), "-small": dict(d_model=64, shared_d_ff=128, token_buffer_depth=32)}
EXTRA = ["tiny-int8", "qwen2_moe-int8", "tiny-skip", "tiny-int4", "switch-int4", "qwen2_moe-small"]


def config(name):
    for suffix, changes in VARIANTS.items():
        if name.endswith(suffix):
            base = AccelConfig.from_toml(CONFIG_DIR / f"{name.removesuffix(suffix)}.toml")
            return base.replace(name=name, **changes)
    return AccelConfig.from_toml(CONFIG_DIR / f"{name}.toml")


_LAYERS = {}


def layer(cfg):
    if cfg not in _LAYERS:
        _LAYERS[cfg] = random_layer(cfg, seed=3)
    return _LAYERS[cfg]


def extremes(cfg):
    """Tied logits (all-zero tokens: every logit 0, ties to the lower index), all-max, all-min."""
    dtype, lo, hi = token_range(cfg)
    D = cfg.d_model
    return torch.stack([torch.zeros(D), torch.full((D,), hi), torch.full((D,), lo)]).to(dtype)


def batch(core, q, name, x, *, grant_delay=0, req_stall=0, requests_first=False):
    """One batch: tokens, expected y, and what the counters must show."""
    cfg = core.cfg
    route = q.route_int(x)
    counts = route.expert_counts(cfg.n_experts)        # the tokens that keep each expert
    T = x.shape[0]
    jobs = sum(c > 0 for c in counts)
    shared_ops = core.shared.busy(T) if core.shared is not None else 0
    cpt = core.router.cycles_per_token()
    bound = (T * cpt + jobs * (core.image_words + grant_delay) + 2 * core.mac_ops(counts)
             + 2 * (core.shared_image_words + shared_ops) + 20_000)
    return dict(name=name, x=x.tolist(), expected=q.forward_int(x).tolist(), counts=counts,
                experts_run=jobs, chosen=route.indices.unique().numel(),
                mac_busy=core.mac_ops(counts), shared_mac_busy=shared_ops,
                grant_delay=grant_delay, req_stall=req_stall, max_cycles=3 * bound,
                requests_first=jobs if requests_first else 0)


def batches_for(name, core, q):
    cfg = core.cfg
    calib = q.quantize_input(make_hf_input(cfg, cfg.token_buffer_depth + 8, seed=5))
    out = [batch(core, q, f"{name} T=3 calibrated, grant delays", calib[:3], grant_delay=400,
                 requests_first=True),
           batch(core, q, f"{name} tied/max/min, request stalls", extremes(cfg), req_stall=30)]
    if name.startswith("tiny"):
        T = cfg.token_buffer_depth
        out += [batch(core, q, "tiny T=1", calib[3:4], grant_delay=2000),
                batch(core, q, "tiny T=t_max", torch.cat([extremes(cfg), calib[4:T + 1]]),
                      grant_delay=100)]
    return out


def params_env(tmp_path, harness, name, *, perturb=None, summary=None, batches=None):
    cfg = harness.core.cfg
    core, q = harness.core, layer(cfg)
    ports = {path: p.name for path, p in verilog_ports(harness).items()}
    W = core.image_words
    experts = [[e * W + i, w] for e in range(cfg.n_experts)
               for i, w in enumerate(expert_image(q.experts, e, cfg))]
    shared = ([[i, w] for i, w in enumerate(expert_image(q.shared, 0, cfg))]
              if q.shared is not None else [])
    assert len(shared) == core.shared_image_words
    todo = batches_for(name, core, q) if batches is None else batches
    path = tmp_path / "params.json"
    path.write_text(json.dumps({
        "ports": ports, "cols": cfg.mac_cols, "rows": cfg.mac_rows, "d_model": cfg.d_model,
        "image_words": W, "router_image": router_image(q, lanes=cfg.mac_cols),
        "expert_image": experts, "shared_image": shared, "y_mult": q.out_mult,
        "y_shift": q.out_shift, "x_shift": q.x_shift, "input_bits": cfg.input_bits,
        "batches": todo, "perturb": perturb,
        "summary": None if summary is None else str(summary),
    }))
    return {"MOEFORGE_TEST_PARAMS": str(path)}


# In `make test`: tiny (Mixtral routing), switch (ReLU, top-1) and qwen2_moe-small (sigmoid shared
# gate); the router tests cover sigmoid and group-limited routing. The others repeat those paths
# at larger sizes (mixtral's 12.7k-word images take 30 s to elaborate, qwen2_moe's shared image is
# as large) and run with `make test-slow`; the whole layer runs on every config in
# bench/layer_cycles.py. qwen2_moe-int8 too: tiny-int8 keeps the int8-only input in `make test`.
SLOW = {"mixtral", "olmoe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "qwen2_moe", "qwen2_moe-int8",
        "switch-int4"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in CONFIGS + EXTRA])
def test_layer_core_matches_golden(sim_build, tmp_path, name):
    """Every batch's y == forward_int, exact counters (experts run, MAC ops, tokens routed),
    every grant released once and no read outside a held slot; cycle figures printed."""
    cfg = config(name)
    harness = LayerCoreHarness(cfg)
    handle = sim_build(harness, "layer_core")
    summary = tmp_path / "summary.json"
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                         extra_env=params_env(tmp_path, harness, name, summary=summary))
    assert (results.tests, results.passed) == (1, 1), results.summary()
    todo = json.loads((tmp_path / "params.json").read_text())["batches"]
    # an expert chosen by no token was neither requested nor run
    assert any(b["experts_run"] < cfg.n_experts for b in todo)
    if cfg.skip_threshold:          # an expert in some token's top-k that no token keeps: not run
        assert any(b["experts_run"] < b["chosen"] for b in todo)
    for b, s in zip(todo, json.loads(summary.read_text()), strict=True):
        print(f"{b['name']}: {s['cycles']} cycles (router {s['router_cycles']}), "
              f"MAC busy {s['mac_busy']} of {s['mac_total']}, {s['experts_run']} experts")


@pytest.mark.parametrize("name", ["tiny", "tiny-int8", "tiny-skip", "tiny-int4"])
def test_layer_core_wrong_expectation_fails(sim_build, tmp_path, name):
    """One expected y value off by one must fail the run and name the token and element."""
    cfg = config(name)
    harness = LayerCoreHarness(cfg)
    handle = sim_build(harness, "layer_core")
    q = layer(cfg)
    calib = q.quantize_input(make_hf_input(cfg, 5, seed=7))
    todo = [batch(harness.core, q, "first", calib[:2]),
            batch(harness.core, q, "second", calib[2:5])]
    token, element = 1, 5
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path, check=False,
                         extra_env=params_env(tmp_path, harness, name, batches=todo,
                                              perturb=[1, token, element]))
    assert not results.ok
    assert (results.tests, results.failed) == (1, 1), results.summary()
    message = results.failures[0].message
    index = 2 + token                              # the first batch's 2 tokens come before
    assert f"layer_core: mismatch at token {index}, element {element}" in message, message
    expected, actual = message.split("expected ", 1)[1].split(" (", 1)[0].split(", got ")
    assert int(expected) == int(actual) + 1, message


@pytest.mark.parametrize("name", ["tiny", "switch", "qwen2_moe-small"])
def test_layer_core_verilog_lints_clean(name):
    """Verilator -Wall: nothing but generator artefacts (`lint_problems`: the hierarchy's file
    name, alias wires); without a shared expert there is no unused ``shared_wr`` input."""
    problems = lint_problems(to_verilog(LayerCore(config(name)), "layer_core"), "layer_core")
    assert problems == []


def test_layer_core_ports_and_sizes():
    """The cache-side widths the shell wires 1:1, and the image sizes."""
    cfg = config("qwen2_moe")
    core = LayerCore(cfg)
    ports = verilog_ports(core)
    assert core.image_words == 3265 and core.shared_image_words == 12673
    assert ports["w_rd.addr"].width == (cfg.cache_slots * core.image_words - 1).bit_length()
    assert ports["o_req.payload"].width == 4                       # 16 experts
    assert ports["i_grant.payload"].width == 4 + 2 + 1             # expert, slot (4 slots), hit
    assert ports["tok_wr.data"].width == 16 * cfg.mac_cols                 # int16 tokens
    assert verilog_ports(LayerCore(config("qwen2_moe-int8")))["tok_wr.data"].width == 8 * cfg.mac_cols
    assert ports["out_rd.data"].width == 8 * cfg.mac_rows
    assert ports["i_run.payload"].width == 7                       # 0 .. 64
    for name in ("cycles", "router_cycles", "mac_busy", "mac_total", "shared_mac_busy",
                 "experts_run", "tokens_routed"):
        assert ports[name].width == 32 and ports[name].direction == "output"
    assert ports["shared_wr.addr"].width == (core.shared_image_words - 1).bit_length()
    tiny = LayerCore(config("tiny"))                # no shared expert: no shared image port
    assert tiny.shared_image_words == 0 and not any(p.startswith("shared_wr")
                                                    for p in verilog_ports(tiny))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(slots=0), ValueError, r"slots must be in \[1, 65536\], not 0"),
    (dict(slots=2.0), TypeError, "slots must be an integer"),
])
def test_layer_core_parameter_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LayerCore.from_config(config("tiny"), **kwargs)


def test_layer_core_bad_config():
    with pytest.raises(TypeError, match="cfg must be an AccelConfig"):
        LayerCore("configs/tiny.toml")
    with pytest.raises(ConfigError, match="d_model: must be a multiple of 12"):
        config("tiny").replace(mac_cols=6)      # refused before any unit sees it


def test_flat_weights_flags_misuse():
    """The fixture's bookkeeping can fail: a read outside the held slot and a second release
    of one grant set their error bits (Amaranth simulator, no core attached)."""
    from amaranth.sim import Simulator

    from moeforge.sim.benches.flat_weights import FlatWeights
    core = LayerCore(config("tiny"), slots=4)
    fix = FlatWeights(core)
    W = core.image_words
    seen = {}

    async def bench(ctx):
        ctx.set(fix.o_grant.ready, 1)
        ctx.set(fix.i_req.payload.expert, 2)
        ctx.set(fix.i_req.valid, 1)
        await ctx.tick()
        ctx.set(fix.i_req.valid, 0)
        while not ctx.get(fix.o_grant.valid):
            await ctx.tick()
        assert (ctx.get(fix.o_grant.payload.expert), ctx.get(fix.o_grant.payload.slot)) == (2, 2)
        await ctx.tick()
        for addr in (2 * W, 3 * W - 1):                  # inside slot 2: fine
            ctx.set(fix.w_rd.addr, addr)
            ctx.set(fix.w_rd.en, 1)
            await ctx.tick()
        seen["inside"] = ctx.get(fix.errors)
        ctx.set(fix.w_rd.addr, 3 * W)                    # slot 3 was never granted
        await ctx.tick()
        ctx.set(fix.w_rd.en, 0)
        await ctx.tick()
        seen["outside"] = ctx.get(fix.errors)
        for _ in range(2):                               # one grant, two releases
            ctx.set(fix.release, 1)
            await ctx.tick()
        ctx.set(fix.release, 0)
        await ctx.tick()
        seen["released"] = (ctx.get(fix.errors), ctx.get(fix.grants), ctx.get(fix.releases))

    sim = Simulator(fix)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"inside": 0, "outside": 0b010, "released": (0b011, 1, 2)}
