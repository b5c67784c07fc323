"""The whole layer (`AcceleratorWithMemory`) in Verilator: bit-exact batches, cache counters
against `ExpertCacheModel`, bad commands flagged and survived, `moeforge sim` without --unit."""

import json

import pytest

from moeforge import AccelConfig
from moeforge.cli import main
from moeforge.sim.layer_sim import layer_program, run_layer, run_steps
from moeforge.spec.arith import X_SHIFT_MAX, X_SHIFT_MIN
from moeforge.spec.protocol import (COUNTERS, LOADED_FLAGS, PROTOCOL_VERSION, CommandLayout, Op,
                                    Status, encode, layer_commands)

pytestmark = pytest.mark.verilator
TINY = "configs/tiny.toml"


def test_tiny_layer_bit_exact_over_batches(tmp_path):
    """40 tokens: a full batch of 32 then one of 8, random stalls on both command streams."""
    cfg = AccelConfig.from_toml(TINY)
    trace = tmp_path / "trace.json"
    r = run_layer(cfg, tokens=40, seed=5, stall=0.3, workdir=tmp_path, trace=trace)
    assert r["passed"] and r["mismatches"] == 0, r.get("failure")
    assert r["batches"] == 2 and len(r["per_batch"]) == 2
    assert r["cache_model_match"], r["per_batch"]
    for b in r["per_batch"]:
        assert b["experts_run"] == b["experts"] == b["hits"] + b["misses"]
        assert b["tokens_routed"] == b["tokens"]
        assert b["mac_busy"] <= b["mac_total"] <= b["cycles"]
    assert r["bytes_fetched"] == r["misses"] * CommandLayout.from_config(cfg).image_words * cfg.mac_cols
    rows = json.loads(trace.read_text())
    assert [len(b["model"]) for b in rows] == [b["experts"] for b in r["per_batch"]]


def test_perturbed_expectation_fails(tmp_path):
    cfg = AccelConfig.from_toml(TINY)
    r = run_layer(cfg, tokens=4, seed=2, stall=0.0, perturb=True, workdir=tmp_path)
    assert not r["passed"] and r["mismatches"] == 1
    assert "mismatch at token 0, element 0" in r["failure"]


def _flags(*parts):
    """INFO's flags byte with `parts` loaded: the bits are named by ``LOADED_FLAGS``."""
    return sum(1 << LOADED_FLAGS.index(p) for p in parts)


def _info(cfg, error=0, flags=0):
    return bytes([Status.OK, PROTOCOL_VERSION]) + bytes.fromhex(cfg.content_hash()[:16]) + \
        bytes([error, flags])


def test_bad_commands_are_flagged_and_the_device_stays_usable(tmp_path):
    """Run before load, unknown opcode, short and long packets, writes beyond the memories
    (weights of another shape), a batch above the buffer, tokens never written: each answered
    with its status, nothing executed; then the same device runs a batch bit-exact."""
    from moeforge.sim.tops import AcceleratorWithMemory
    from moeforge.sim.unit_sim import random_layer
    from moeforge.hls_models.hf_random import make_hf_input

    cfg = AccelConfig.from_toml(TINY)
    assert cfg.input_bits == 16                  # the input-shift steps below assume it
    lay = CommandLayout.from_config(cfg)
    q = random_layer(cfg, 3)
    x = q.quantize_input(make_hf_input(cfg, 6, seed=3))
    load_and_run, batches = layer_program(cfg, q, x)

    def step(name, packet, status, **kw):
        return dict(name=name, packet=packet.hex(), status=status, max_cycles=20_000, **kw)

    t_max = cfg.token_buffer_depth
    before = [
        step("info on a fresh device", encode(Op.INFO), Status.OK, expect=_info(cfg).hex()),
        step("run before load", encode(Op.RUN, 1), Status.NOT_LOADED),
        step("info reports it", encode(Op.INFO), Status.OK,
             expect=_info(cfg, error=Status.NOT_LOADED).hex()),
        step("unknown opcode", bytes([0x3c, 1, 2, 3]), Status.BAD_OPCODE),
        step("opcode above 15", bytes([0xf1]), Status.BAD_OPCODE),
        step("short header", bytes([Op.RUN, 1]), Status.BAD_LENGTH),
        step("run with trailing bytes", encode(Op.RUN, 1) + b"\x00", Status.BAD_LENGTH),
        step("info with trailing bytes", encode(Op.INFO) + b"\x00\x00", Status.BAD_LENGTH),
        step("expert images beyond the backing memory (a larger d_ff)",
             encode(Op.WRITE_MEMORY, lay.memory_words - 1, [0, 0], lay.cols), Status.OUT_OF_RANGE),
        step("router words beyond the router", encode(Op.WRITE_ROUTER, lay.router_words, [1], lay.router_bytes),
             Status.OUT_OF_RANGE),
        step("shared image on a config without one", encode(Op.WRITE_SHARED, 0, [1], lay.cols),
             Status.OUT_OF_RANGE),
        step("write packet shorter than its count", encode(Op.WRITE_ROUTER, 0, [1, 2], lay.router_bytes)[:-3],
             Status.BAD_LENGTH),
        step("tokens beyond the buffer", encode(Op.WRITE_TOKENS, t_max - 1, [[0] * cfg.d_model] * 2,
                                                     lay.value_bytes),
             Status.OUT_OF_RANGE),
        step("output scale shift 0", encode(Op.SET_SCALE, 40000, 0, 0), Status.OUT_OF_RANGE),
        *(step(f"input shift {sx} on a 16-bit-input config", encode(Op.SET_SCALE, 40000, 17, sx),
               Status.OUT_OF_RANGE) for sx in (X_SHIFT_MIN - 1, X_SHIFT_MAX + 1)),
    ]
    after_load = [
        step("batch above the buffer", encode(Op.RUN, t_max + 1), Status.BAD_BATCH),
        step("empty batch", encode(Op.RUN, 0), Status.BAD_BATCH),
        step("run over tokens never written", encode(Op.RUN, 1), Status.NO_TOKENS),
        step("read outputs beyond the buffer", encode(Op.READ_OUTPUT, t_max, 1), Status.OUT_OF_RANGE),
        step("everything loaded", encode(Op.INFO), Status.OK,
             expect=_info(cfg, error=Status.OUT_OF_RANGE,
                          flags=_flags("router", "scale", "experts")).hex()),
    ]
    n_load = batches[0]["run_step"] - 1          # the load steps come before the first batch's
    steps = before + load_and_run[:n_load] + after_load + load_and_run[n_load:]
    top = AcceleratorWithMemory(cfg)
    results, summary, *_ = run_steps(top, steps, seed=3, stall=0.2, workdir=tmp_path)
    assert results.ok, (summary.get("failure"), [f.message for f in results.failures])
    assert summary["mismatches"] == 0
    for st, rsp in zip(steps, summary["responses"], strict=True):
        if "expect" in st:
            assert rsp == st["expect"], (st["name"], rsp)
    # the batch after the refused commands really ran: its counters are the golden routing's
    assert steps[-1]["packet"] == encode(Op.READ_COUNTERS).hex()
    raw = bytes.fromhex(summary["responses"][-1])
    assert raw[0] == Status.OK and len(raw) == 1 + 4 * len(COUNTERS)
    got = {n: int.from_bytes(raw[1 + 4 * i:5 + 4 * i], "little") for i, n in enumerate(COUNTERS)}
    experts = q.route_int(x).indices.unique().numel()
    assert (got["tokens_routed"], got["experts_run"]) == (x.shape[0], experts), got
    assert got["hits"] + got["misses"] == experts and got["misses"] >= 1, got
    assert got["words_fetched"] == got["misses"] * lay.image_words, got
    assert 0 < got["mac_busy"] <= got["mac_total"] <= got["cycles"], got


def test_layer_commands_refuse_a_layer_of_another_shape():
    from moeforge.sim.unit_sim import random_layer
    tiny = AccelConfig.from_toml(TINY)
    q = random_layer(tiny.replace(name="wider", d_ff=128), 1)
    with pytest.raises(ValueError, match=r"d_ff \(128 vs 64\)"):
        layer_commands(q, tiny)


def test_cli_sim_whole_layer_json(capsys):
    assert main(["sim", "--config", TINY, "--tokens", "8", "--seed", "4", "--stall", "0.1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["passed"] and r["mismatches"] == 0 and r["cache_model_match"]
    for key in ("cycles", "cycles_bound", "hits", "misses", "bytes_fetched", "stall_cycles", "mac_util"):
        assert key in r
    assert r["cycles"] >= r["cycles_bound"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--mem-bandwidth", "0"], "--mem-bandwidth"),
    (["--mem-bandwidth", "fast"], "--mem-bandwidth"),
    (["--mem-latency", "0"], "--mem-latency"),
    (["--trace", "/nonexistent/dir/t.json"], "does not exist"),
    (["--unit", "router", "--trace", "t.json"], "--trace"),
])
def test_cli_sim_layer_bad_input_exit_2(argv, message, capsys):
    try:
        code = main(["sim", "--config", TINY, *argv])
    except SystemExit as exc:      # argparse's usage error
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def _random_config(seed: int) -> AccelConfig:
    """A small random accelerator of a random family: array, cache slots and policy, the input
    width (16-bit or int8-only) and the expert weights (int8 or int4) vary."""
    import random

    from moeforge.hls_models.hf_random import family_configs
    rng = random.Random(seed)
    family = rng.choice(sorted(family_configs()))
    base = family_configs()[family]
    # SwiGLU pairs gate and up rows (even rows only); ReLU takes any row count d_model allows
    rows = rng.choice([2, 4]) if base.activation == "swiglu" else rng.choice([1, 2, 4])
    slots = rng.randint(1, 3)
    policy = rng.choice(["lru", "lfu", "pinned"])
    pinned = (rng.randrange(base.n_experts),) if policy == "pinned" and slots > 1 else ()
    policy = policy if pinned or policy != "pinned" else "lru"
    cfg = base.replace(name=f"random-{seed}", d_model=32, mac_rows=rows, mac_cols=rng.choice([4, 8]),
                       cache_slots=slots, cache_policy=policy, pinned_experts=pinned,
                       token_buffer_depth=rng.choice([8, 16]))
    bits = rng.choice([8, 16])                     # drawn last: the draws above stay as they were
    weight_bits = rng.choice([8, 4])               # (and after the input width, likewise)
    return cfg.replace(input_bits=bits, input_smoothing=0.5 if bits == 16 else 0.0, weight_bits=weight_bits)


# make test: switch ReLU 4×8 LFU, one slot; DeepSeek-V2 shared 2×8 pinned, int4 experts. make
# test-slow: eight more (switch 1×8: a one-row array).
SLOW_SEEDS = (1, 2, 3, 4, 5, 7, 8, 9)


def test_random_configs_cover_what_the_array_allows():
    """The sweep's seeds draw both activations, SwiGLU with even rows only, ReLU with one row too,
    both input widths and both weight widths (in `make test`'s seeds too), and each config is one
    the accelerator elaborates (which also marks each design used)."""
    from amaranth.hdl import Fragment

    from moeforge.sim.tops import AcceleratorWithMemory
    cfgs = [_random_config(s) for s in (6, 14, *SLOW_SEEDS)]
    shapes = {(c.activation, c.mac_rows) for c in cfgs}
    assert ("relu", 1) in shapes and {a for a, _ in shapes} == {"relu", "swiglu"}, shapes
    assert all(r % 2 == 0 for a, r in shapes if a == "swiglu"), shapes
    assert {c.input_bits for c in cfgs[:2]} == {8, 16}, [c.input_bits for c in cfgs]
    assert {c.weight_bits for c in cfgs[:2]} == {4, 8}, [c.weight_bits for c in cfgs]
    for c in cfgs:
        Fragment.get(AcceleratorWithMemory(c), None)


@pytest.mark.parametrize("seed", [6, 14, *(pytest.param(s, marks=pytest.mark.slow) for s in SLOW_SEEDS)])
def test_random_config_layer_bit_exact(seed, tmp_path):
    """Random family, array, cache and backing memory; two batches, random stalls."""
    import random
    from fractions import Fraction
    cfg = _random_config(seed)
    rng = random.Random(seed)
    latency, bpc = rng.randint(1, 40), Fraction(rng.randint(1, 8), rng.randint(1, 3))
    r = run_layer(cfg, tokens=cfg.token_buffer_depth + 3, seed=seed, latency=latency,
                  bytes_per_cycle=bpc, stall=0.3, workdir=tmp_path)
    assert r["passed"] and r["mismatches"] == 0, (cfg, r.get("failure"))
    assert r["cache_model_match"], (cfg, r["per_batch"])
