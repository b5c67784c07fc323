"""AccelConfig decides what the hardware generator can build: a config it accepts elaborates
every registered unit, one it refuses raises ConfigError naming the field (no other error)."""

import gc
import math
import random
import warnings

import pytest
import tomli_w
from amaranth.hdl import Fragment

from moeforge import AccelConfig, ConfigError, MoeforgeError
from moeforge.cli import main
from moeforge.config import (BUFFER_ELEMENTS_MAX, DISPATCH_ENTRIES_MAX, EXPERT_BYTES_MAX,
                             LAYER_BYTES_MAX, ROUTER_WEIGHTS_MAX, TOP_K_MAX)
from moeforge.rtl.top.soc import MoESoC
from moeforge.rtl.units import UNITS, elaborate


def _elaborate_all(cfg: AccelConfig, *, full: bool) -> None:
    """Build every unit of `cfg`; with `full` also run Amaranth's elaboration of each (the
    checks inside `elaborate` methods, e.g. the MAC array's buffer depth), short of Verilog.
    Any exception fails the test."""
    units = []
    for name in UNITS:          # kept as they are built: a later unit's error leaves none unmarked
        units.append(elaborate(cfg, name))
        _BUILT.append(units[-1])
    if full:
        for unit in units:
            Fragment.get(unit, None)
    # and the whole device (layer core, expert cache, backing memory, host link): constructed,
    # which runs every parameter check of its parts
    _BUILT.append(MoESoC(cfg))


_BUILT = []   # units built only to be checked: dropped without Amaranth's unused warning


@pytest.fixture(autouse=True)
def _drop_built_units():
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _BUILT.clear()
        gc.collect()


def _fitting_fields(rng: random.Random) -> dict:
    """Fields chosen to follow the hardware's rules (array shape, lanes, rotation), with sizes
    that may or may not fit the limits."""
    activation = rng.choice(["swiglu", "relu"])
    rows = rng.choice([2, 4, 6, 8, 12, 16] if activation == "swiglu" else [1, 2, 3, 4, 6, 8, 16])
    lanes = rows // 2 if activation == "swiglu" else rows
    cols = rng.choice([c for c in range(1, 17) if lanes % c == 0 or c % lanes == 0])
    step_ff = math.lcm(lanes, cols)
    d_model = math.lcm(rows, cols) * rng.choice([1, 2, 4, 8, 16])
    d_ff = step_ff * rng.choice([1, 2, 4, 8, 16])
    shared = step_ff * rng.choice([1, 2, 4]) if rng.random() < 0.3 else 0
    n_experts = rng.choice([1, 2, 3, 4, 8, 16, 64, 256, 1024])
    kw = dict(activation=activation, mac_rows=rows, mac_cols=cols, d_model=d_model, d_ff=d_ff,
              shared_d_ff=shared, n_experts=n_experts, top_k=rng.randint(1, min(n_experts, 8)),
              cache_slots=rng.randint(1, min(n_experts, 4)),
              token_buffer_depth=rng.choice([1, 8, 32, 64, 256]),
              router_bits=rng.choice([8, 12, 16]))
    rotations = [r for r in (1, 2, 4, 8, 16, 32, 64)
                 if d_ff % r == 0 and shared % r == 0 and (r % lanes == 0 or lanes % r == 0)]
    kw["hidden_rotation"] = rng.choice([0, *rotations])
    if shared and rng.random() < 0.5:
        kw["shared_gate"] = "sigmoid"
    if rng.random() < 0.3:
        kw.update(routing="sigmoid_topk", selection_bias=rng.random() < 0.5,
                  renormalize=rng.random() < 0.5)
    kw["weight_bits"] = rng.choice([8, 4])          # drawn last: the draws above stay as they were
    return kw


# one field changed to a value that may break a rule of the hardware (or still be fine)
MUTATIONS = {
    "mac_rows": [1, 3, 5, 7, 10, 64],
    "mac_cols": [3, 5, 7, 9, 64],
    "d_model": [6, 20, 48, 100, 1000, 4096, 65536],
    "d_ff": [6, 10, 48, 100, 1000, 4096, 65536],
    "shared_d_ff": [6, 10, 48, 1000, 65536],
    "top_k": [32, 64, 65, 100, 1024],
    "n_experts": [512, 1024],
    "token_buffer_depth": [512, 1024, 4096],
    "hidden_rotation": [2, 8, 32, 64],
}


def _random_fields(seed: int) -> dict:
    """Even seeds: a config that follows the rules; odd seeds: one of its fields changed."""
    rng = random.Random(seed)
    kw = _fitting_fields(rng)
    if seed % 2:
        name = rng.choice(sorted(MUTATIONS))
        kw[name] = rng.choice(MUTATIONS[name])
        if name == "shared_d_ff" and kw.get("shared_gate") is None:
            kw["shared_gate"] = "none"
    return kw


def _outcomes(seeds, *, full: bool):
    accepted = refused = 0
    for seed in seeds:
        kw = _random_fields(seed)
        try:
            cfg = AccelConfig(**kw)
        except ConfigError:
            refused += 1
            continue
        try:
            _elaborate_all(cfg, full=full)
        except Exception as exc:  # noqa: BLE001 - any error at all is a disagreement
            pytest.fail(f"seed {seed}: AccelConfig accepts {kw} but a unit fails: {exc!r}")
        accepted += 1
    return accepted, refused


def test_random_configs_are_refused_or_build_every_unit():
    # 200 configs, some accepted and some refused (counted, so that the test cannot pass by
    # refusing everything or by never reaching a rule)
    accepted, refused = _outcomes(range(200), full=False)
    assert accepted >= 40 and refused >= 40, (accepted, refused)


def test_random_accepted_configs_elaborate_fully():
    # Amaranth's elaboration (the memories, the MAC array's depth check) of the first accepted
    # configs (9 of the first 20 seeds); a wider sweep is in the slow test below
    accepted, _ = _outcomes(range(20), full=True)
    assert accepted >= 5


@pytest.mark.slow
def test_random_configs_elaborate_fully_wide():
    accepted, refused = _outcomes(range(200, 600), full=True)
    assert accepted >= 50 and refused >= 50, (accepted, refused)


def _valid_base(**kw):
    """A small valid layer, with `kw` changed."""
    return dict(dict(d_model=64, d_ff=64, n_experts=4, top_k=2, mac_rows=4, mac_cols=4,
                     token_buffer_depth=32, cache_slots=2), **kw)


def test_valid_base_is_accepted_and_builds():
    _elaborate_all(AccelConfig(**_valid_base()), full=True)


# One rule broken at a time: the field named and the rule in the message.
BREAKS = [
    # what `moeforge verilog` rejected after `moeforge config` had accepted it
    (dict(d_model=48, mac_rows=5, mac_cols=7, activation="relu"), "d_model", "multiple of 35"),
    (dict(d_model=65536, d_ff=65536, n_experts=1024, top_k=2), "d_ff", "at most 262144"),
    (dict(activation="swiglu", mac_rows=3, mac_cols=3, d_model=63), "mac_rows", "even for SwiGLU"),
    (dict(d_model=42), "d_model", "multiple of 4"),
    (dict(mac_rows=8, mac_cols=8, d_ff=36), "d_ff", "multiple of 8"),
    (dict(shared_d_ff=6), "shared_d_ff", "multiple of 4"),
    (dict(mac_rows=12, mac_cols=8, d_model=96, d_ff=96), "mac_cols", "6 lanes"),
    (dict(mac_rows=12, mac_cols=2, d_model=96, d_ff=96, hidden_rotation=4), "hidden_rotation",
     "rotation block 4"),
    (dict(n_experts=128, top_k=TOP_K_MAX + 1, d_model=16, d_ff=16, token_buffer_depth=8),
     "top_k", f"at most {TOP_K_MAX}"),
    (dict(d_model=256, d_ff=512), "d_ff", f"at most {EXPERT_BYTES_MAX}"),
    (dict(d_model=256, d_ff=64, shared_d_ff=512), "shared_d_ff", f"at most {EXPERT_BYTES_MAX}"),
    (dict(n_experts=64, d_model=64, d_ff=128), "n_experts", f"at most {LAYER_BYTES_MAX}"),
    (dict(n_experts=1024, d_model=256, d_ff=1, mac_rows=1, mac_cols=1, activation="relu",
          token_buffer_depth=8), "n_experts", f"at most {ROUTER_WEIGHTS_MAX}"),
    (dict(token_buffer_depth=2048), "token_buffer_depth", f"at most {BUFFER_ELEMENTS_MAX}"),
    (dict(n_experts=512, d_model=8, d_ff=8, token_buffer_depth=256), "token_buffer_depth",
     f"at most {DISPATCH_ENTRIES_MAX}"),
    (dict(weight_bits=6), "weight_bits", "[4, 8]"),
    (dict(act_bits=16), "act_bits", "[8, 8]"),
]


@pytest.mark.parametrize("kw,field,text", BREAKS, ids=[f"{b[1]}-{i}" for i, b in enumerate(BREAKS)])
def test_one_broken_rule_is_a_config_error(kw, field, text):
    with pytest.raises(ConfigError) as exc:
        AccelConfig(**_valid_base(**kw))
    assert exc.value.field == field, str(exc.value)
    assert text in str(exc.value), str(exc.value)


@pytest.mark.parametrize("kw,field,text", BREAKS[:2], ids=["array-5x7", "huge"])
def test_cli_config_refuses_what_verilog_cannot_build(kw, field, text, tmp_path, capsys):
    p = tmp_path / "c.toml"
    # written without validation: the file a user would have
    data = AccelConfig(**_valid_base()).to_dict()
    for section in data.values():
        for key in section:
            if key in kw:
                section[key] = kw[key]
    p.write_text(tomli_w.dumps(data))
    assert main(["config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{field}:" in err and text in err, err
    assert main(["verilog", "--config", str(p), "--unit", "router"]) == 2
    assert f"{field}:" in capsys.readouterr().err


def test_limits_admit_each_extreme_alone():
    # each size limit is reachable: the largest value of one quantity with the rest small
    for kw in (dict(d_model=256, d_ff=340, mac_rows=4, mac_cols=4),
               dict(n_experts=1024, top_k=TOP_K_MAX, d_model=128, d_ff=2, mac_rows=2, mac_cols=2,
                    token_buffer_depth=64, cache_slots=2),
               dict(d_model=1024, d_ff=64, token_buffer_depth=BUFFER_ELEMENTS_MAX // 1024)):
        cfg = AccelConfig(**_valid_base(**kw))
        _elaborate_all(cfg, full=False)


def test_toml_without_model_section_is_refused(tmp_path, capsys):
    for text in ("", "[hardware]\nmac_rows = 4\n", "[model]\n"):
        p = tmp_path / "empty.toml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=r"^model: .* has no \[model\] section"):
            AccelConfig.from_toml(p)
        assert main(["config", str(p)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "no [model] section" in err, err
    # the text form too (a string holding a newline)
    with pytest.raises(ConfigError, match=r"<text> has no \[model\] section"):
        AccelConfig.from_toml("[precision]\nrouter_bits = 8\n")


def test_automatic_rotation_fits_the_hidden_lanes():
    # 6 lanes (12 rows, SwiGLU): a block of 32 (the largest power of two dividing d_ff = 96)
    # would not fit them; the automatic block is 2, and the layer builds
    cfg = AccelConfig(**_valid_base(mac_rows=12, mac_cols=2, d_model=96, d_ff=96))
    assert cfg.rotation_block == 2
    assert cfg.hidden_lanes == 6
    _elaborate_all(cfg, full=True)
    # with power-of-two lanes the block is the largest power of two up to 64 dividing the sizes
    for kw, block in ((dict(d_ff=96), 32), (dict(d_ff=64, shared_d_ff=48), 16),
                      (dict(d_ff=256, mac_rows=8, mac_cols=8), 64)):
        assert AccelConfig(**_valid_base(**kw)).rotation_block == block


def test_to_toml_into_a_missing_folder_is_one_error_and_leaves_nothing(tmp_path):
    with pytest.raises(MoeforgeError, match="cannot write"):
        AccelConfig().to_toml(tmp_path / "nodir" / "c.toml")
    target = tmp_path / "c.toml"
    AccelConfig().to_toml(target)
    assert AccelConfig.from_toml(target) == AccelConfig()
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]     # no temporary file beside it
