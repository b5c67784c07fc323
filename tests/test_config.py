"""AccelConfig: validation of every field, TOML round trip, content hash, command-line errors."""

import glob
import subprocess
import sys

import pytest
import transformers

from moeforge import AccelConfig, ConfigError
from moeforge.cli import main
from moeforge.hf_config import model_fields_from_hf

CONFIGS = sorted(glob.glob("configs/*.toml"))


def test_example_configs_cover_every_family():
    families = {AccelConfig.from_toml(p).family for p in CONFIGS}
    assert {"switch", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3"} <= families
    assert "configs/tiny.toml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_toml_round_trip(path, tmp_path):
    cfg = AccelConfig.from_toml(path)
    out = tmp_path / "c.toml"
    cfg.to_toml(out)
    again = AccelConfig.from_toml(out)
    assert again == cfg
    assert again.content_hash() == cfg.content_hash()


def test_hash_is_stable_and_sensitive():
    a = AccelConfig()
    assert a.content_hash() == AccelConfig().content_hash()
    assert len(a.content_hash()) == 64
    assert a.replace(mac_rows=4).content_hash() != a.content_hash()
    # known value: the hash is over canonical JSON, so it must not drift between releases
    assert AccelConfig.from_toml("configs/tiny.toml").short_hash == "31e3d49b639e"


BAD = [
    (dict(top_k=9, n_experts=8), "top_k", "[1, 8]"),
    (dict(d_model=0), "d_model", "[1, 65536]"),
    (dict(d_ff=-4), "d_ff", "[1, 65536]"),
    (dict(n_experts=0), "n_experts", "[1, 1024]"),
    (dict(d_model=64.0), "d_model", "integer"),
    (dict(activation="gelu"), "activation", "relu, swiglu"),
    (dict(routing="expert_choice"), "routing", "softmax_topk"),
    (dict(n_group=3), "n_group", "divide n_experts=8"),
    (dict(n_group=4, topk_group=5), "topk_group", "[1, 4]"),
    (dict(n_group=4, topk_group=1, top_k=3), "top_k", "at most topk_group"),
    (dict(group_score="mean"), "group_score", "max, top2_sum"),
    (dict(n_experts=4, n_group=4, topk_group=2, group_score="top2_sum"), "group_score", "2 experts per group"),
    (dict(selection_bias=True), "selection_bias", "sigmoid_topk"),
    (dict(routed_scaling_factor=0), "routed_scaling_factor", "(0, 64]"),
    (dict(routed_scaling_factor=float("nan")), "routed_scaling_factor", "(0, 64]"),
    (dict(renormalize="yes"), "renormalize", "true or false"),
    (dict(skip_threshold=1.0), "skip_threshold", "[0, 1)"),
    (dict(skip_threshold=-0.1), "skip_threshold", "[0, 1)"),
    (dict(skip_threshold=float("nan")), "skip_threshold", "[0, 1)"),
    (dict(skip_threshold="0.1"), "skip_threshold", "[0, 1)"),
    (dict(skip_threshold=1e-6), "skip_threshold", "rounds to 0 in Q1.15"),
    (dict(top_k=1, skip_threshold=0.1), "skip_threshold", "needs top_k >= 2"),
    (dict(shared_gate="sigmoid"), "shared_gate", "shared_d_ff > 0"),
    (dict(shared_gate="softmax", shared_d_ff=32), "shared_gate", "none, sigmoid"),
    (dict(shared_d_ff=-1), "shared_d_ff", "[0, 65536]"),
    (dict(input_bits=12), "input_bits", "[8, 16]"),
    (dict(input_bits=True), "input_bits", "[8, 16]"),
    (dict(input_smoothing=1.5), "input_smoothing", "[0, 1]"),
    (dict(input_smoothing=float("nan")), "input_smoothing", "[0, 1]"),
    (dict(input_smoothing="0.5"), "input_smoothing", "[0, 1]"),
    (dict(weight_bits=6), "weight_bits", "[4, 8]"),
    (dict(act_bits=16), "act_bits", "[8, 8]"),
    (dict(router_bits=32), "router_bits", "[8, 16]"),
    (dict(hidden_rotation=3), "hidden_rotation", "power of two"),
    (dict(hidden_rotation=128), "hidden_rotation", "[0, 64]"),
    (dict(d_ff=48, hidden_rotation=32), "hidden_rotation", "divide d_ff=48"),
    (dict(mac_rows=0), "mac_rows", "[1, 64]"),
    (dict(mac_cols=128), "mac_cols", "[1, 64]"),
    (dict(cache_slots=9), "cache_slots", "[1, 8]"),
    (dict(cache_policy="fifo"), "cache_policy", "lru, lfu, pinned"),
    (dict(cache_policy="pinned"), "pinned_experts", "at least one"),
    (dict(cache_policy="pinned", cache_slots=2, pinned_experts=(0, 1)), "pinned_experts", "cache_slots - 1"),
    (dict(cache_policy="pinned", cache_slots=4, pinned_experts=(9,)), "pinned_experts", "[0, 7]"),
    (dict(cache_policy="pinned", cache_slots=4, pinned_experts=(1, 1)), "pinned_experts", "repeat"),
    (dict(pinned_experts=(1,)), "pinned_experts", "cache_policy='pinned'"),
    (dict(token_buffer_depth=0), "token_buffer_depth", "[1, 4096]"),
    (dict(clock_mhz=0.5), "clock_mhz", "[1, 1000]"),
    (dict(family="gpt"), "family", "mixtral"),
    (dict(name=""), "name", "non-empty"),
]


@pytest.mark.parametrize("kwargs,field,accepted", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_invalid_values_name_field_and_range(kwargs, field, accepted):
    with pytest.raises(ConfigError) as exc:
        AccelConfig(**kwargs)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}:")
    assert accepted in str(exc.value)


def test_unknown_toml_key_and_section(tmp_path):
    text = AccelConfig().to_toml()
    with pytest.raises(ConfigError, match=r"model\.d_modle: is not a known key"):
        AccelConfig.from_toml(text.replace("d_model", "d_modle"))
    with pytest.raises(ConfigError, match="extra: is not a known section"):
        AccelConfig.from_toml(text + "\n[extra]\na = 1\n")


def test_toml_that_does_not_parse(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model\nd_model = 64\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        AccelConfig.from_toml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        AccelConfig.from_toml(tmp_path / "missing.toml")


def test_wrong_type_in_toml_is_a_config_error():
    text = AccelConfig().to_toml().replace("top_k = 2", 'top_k = "two"')
    with pytest.raises(ConfigError, match="top_k"):
        AccelConfig.from_toml(text)


def test_frozen():
    with pytest.raises(AttributeError):
        AccelConfig().d_model = 3


@pytest.mark.parametrize("path", CONFIGS + sorted(glob.glob("configs/boards/*.toml")))
def test_combiner_lanes_is_the_smallest_divisor_of_the_rows_that_keeps_up(path):
    """L divides mac_rows and takes at least the values the engines' down projections deliver
    a cycle (R·C/F, + R·C/F_sh with a shared expert); no smaller divisor does."""
    from fractions import Fraction
    cfg = AccelConfig.from_toml(path)
    R, C, L = cfg.mac_rows, cfg.mac_cols, cfg.combiner_lanes
    rate = Fraction(R * C, cfg.d_ff)
    if cfg.shared_d_ff:
        rate += Fraction(R * C, cfg.shared_d_ff)
    assert R % L == 0 and cfg.d_model % L == 0
    assert L >= rate or L == R
    assert all(smaller < rate for smaller in range(1, L) if R % smaller == 0)


@pytest.mark.parametrize("changes, lanes", [
    ({}, 1),                                                    # tiny: 4·4/64 = 1/4
    (dict(mac_cols=16), 1),                                     # 4·16/64 = 1
    (dict(mac_cols=32), 2),                                     # 2
    (dict(mac_cols=32, d_ff=96, d_model=96), 2),                # 4·32/96 = 4/3: L = 2 of 4
    (dict(shared_d_ff=64), 1),                                  # 1/4 + 1/4
    (dict(mac_cols=16, shared_d_ff=64), 2),                     # 1 + 1
    (dict(mac_cols=64, shared_d_ff=64), 4),                     # 4 + 4 > R: every row
])
def test_combiner_lanes_examples(changes, lanes):
    assert AccelConfig.from_toml("configs/tiny.toml").replace(**changes).combiner_lanes == lanes


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text(AccelConfig().to_toml().replace("top_k = 2", "top_k = 99"))
    assert main(["config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "top_k" in err and "Traceback" not in err


def test_cli_subprocess_exit_codes(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("not toml [")
    r = subprocess.run([sys.executable, "-m", "moeforge.cli", "config", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "not valid TOML" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "moeforge.cli", "config", "configs/tiny.toml"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "31e3d49b639e" in r.stdout
    r = subprocess.run([sys.executable, "-m", "moeforge.cli", "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr


FULL_SIZE = [
    ("MixtralConfig", "mixtral", (4096, 14336, 8, 2)),
    ("Qwen2MoeConfig", "qwen2_moe", (2048, 1408, 60, 4)),
    ("Qwen3MoeConfig", "qwen3_moe", (2048, 768, 128, 8)),
    ("OlmoeConfig", "olmoe", (2048, 2048, 64, 8)),
    ("DeepseekV3Config", "deepseek_v3", (7168, 2048, 256, 8)),
    ("SwitchTransformersConfig", "switch", (768, 2048, 8, 1)),
]


@pytest.mark.parametrize("name,family,shape", FULL_SIZE)
def test_from_hf_reads_full_size_models_and_refuses_to_build_them(name, family, shape):
    # transformers is a declared test dependency: imported, never skipped
    config = getattr(transformers, name)()
    fields_ = model_fields_from_hf(config)
    assert fields_["family"] == family
    assert (fields_["d_model"], fields_["d_ff"], fields_["n_experts"], fields_["top_k"]) == shape
    # a full-size expert does not fit the MAC array's weight buffer: refused, naming the limit
    with pytest.raises(ConfigError, match=r"^d_ff: one expert's weights .* at most 262144"):
        AccelConfig.from_hf(config, mac_rows=16, cache_slots=4)


@pytest.mark.parametrize("name,family,_", FULL_SIZE)
def test_from_hf_scaled_down_configs(name, family, _):
    small = dict(hidden_size=64, intermediate_size=64, moe_intermediate_size=64,
                 shared_expert_intermediate_size=64, d_model=64, d_ff=64,
                 num_experts=16, n_routed_experts=16, num_local_experts=16, n_group=4, topk_group=2)
    config = getattr(transformers, name)(**small)
    cfg = AccelConfig.from_hf(config, mac_rows=16, cache_slots=4)
    assert cfg.family == family and (cfg.d_model, cfg.d_ff) == (64, 64)
    assert cfg.mac_rows == 16 and cfg.cache_slots == 4 and cfg.mac_cols == AccelConfig().mac_cols


def test_from_hf_errors():
    small = dict(hidden_size=64, intermediate_size=64)
    with pytest.raises(ConfigError, match="mac_colz: is not an AccelConfig field"):
        AccelConfig.from_hf(transformers.MixtralConfig(**small), mac_colz=4)
    with pytest.raises(ConfigError, match="model_type"):
        AccelConfig.from_hf(transformers.LlamaConfig())
    with pytest.raises(ConfigError, match="top_k"):  # the default DeepseekV2Config has no top-k
        AccelConfig.from_hf(transformers.DeepseekV2Config())
    with pytest.raises(ConfigError, match="activation"):
        AccelConfig.from_hf(transformers.MixtralConfig(hidden_act="gelu", **small))
