"""FloatMoELayer against the `transformers` MoE blocks it stands in for, family by family."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
# a declared test dependency (pyproject's `test` extra): missing, it fails the run, not skips it
import transformers  # noqa: F401

from moeforge import AccelConfig
from moeforge.config import SECTIONS
from moeforge.errors import ConfigError, ShapeError, WeightsError
from moeforge.hls_models import (FloatMoELayer, family_configs, float_weights_from_hf, hf_config_for,
                                 make_hf_block, make_hf_input)

FAMILIES = family_configs()
ATOL, RTOL = 1e-5, 1e-4
N_TOKENS = 96

# Routing variants the family table does not cover: greedy V2, V3 without renormalisation or
# groups, Qwen2 without a shared expert, OLMoE with renormalisation.
VARIANTS = {
    "deepseek_v2_greedy": FAMILIES["deepseek_v2"].replace(n_group=1, topk_group=1, routed_scaling_factor=1.0),
    "deepseek_v3_plain": FAMILIES["deepseek_v3"].replace(renormalize=False, n_group=1, topk_group=1),
    "qwen2_moe_unshared": FAMILIES["qwen2_moe"].replace(shared_d_ff=0, shared_gate="none"),
    "olmoe_renorm": FAMILIES["olmoe"].replace(renormalize=True, top_k=4),
}
ALL_CONFIGS = {**FAMILIES, **VARIANTS}


def _hf_routing(block, x):
    """(indices ascending, gate weights) as the block's own router picks them."""
    with torch.no_grad():
        if hasattr(block, "router"):  # Switch: one-hot dispatch mask and the top probability
            dispatch, probs, _ = block.router(x[None])
            return dispatch[0].argmax(-1, keepdim=True), probs[0]
        _, gates, idx = block.gate(x)
    idx, order = idx.sort(dim=-1)
    return idx, gates.gather(1, order)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_reference_matches_transformers_block(name):
    cfg = ALL_CONFIGS[name]
    block = make_hf_block(cfg, seed=11)
    x = make_hf_input(cfg, N_TOKENS, seed=12)
    with torch.no_grad():
        y_hf = block(x.view(1, N_TOKENS, cfg.d_model))
    assert isinstance(y_hf, torch.Tensor) and y_hf.shape == (1, N_TOKENS, cfg.d_model)

    ref = FloatMoELayer.from_hf(block, cfg)
    torch.testing.assert_close(ref.forward(x), y_hf[0], atol=ATOL, rtol=RTOL)

    idx, gates = ref.route(x)
    hf_idx, hf_gates = _hf_routing(block, x)
    assert idx.dtype == torch.int64 and idx.shape == (N_TOKENS, cfg.top_k)
    assert torch.equal(idx, hf_idx)
    torch.testing.assert_close(gates, hf_gates, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["switch", "deepseek_v3"])
def test_batched_input_matches_flat(name):
    cfg = FAMILIES[name]
    block = make_hf_block(cfg, seed=5)
    x = make_hf_input(cfg, 48, seed=6)
    with torch.no_grad():
        y_hf = block(x.view(3, 16, cfg.d_model)).reshape(48, cfg.d_model)
    torch.testing.assert_close(FloatMoELayer.from_hf(block, cfg)(x), y_hf, atol=ATOL, rtol=RTOL)


def test_expert_forward_is_the_ungated_expert():
    cfg = FAMILIES["qwen3_moe"]
    block = make_hf_block(cfg, seed=1)
    ref = FloatMoELayer.from_hf(block, cfg)
    x = make_hf_input(cfg, 8, seed=2)
    gate, up = torch.nn.functional.linear(x, block.experts.gate_up_proj[3].detach()).chunk(2, dim=-1)
    want = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, block.experts.down_proj[3].detach())
    torch.testing.assert_close(ref.expert_forward(3, x), want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_hf_config_round_trips_through_from_hf(name):
    cfg = ALL_CONFIGS[name]
    back = AccelConfig.from_hf(hf_config_for(cfg))
    for field in SECTIONS["model"] + SECTIONS["routing"]:
        if field != "name":
            assert getattr(back, field) == getattr(cfg, field), field


@pytest.mark.parametrize("changes, field", [
    (dict(routing="softmax_topk", renormalize=True), "routing"),       # Mixtral is topk_softmax
    (dict(family="custom"), "family"),
])
def test_hf_config_refuses_what_the_family_cannot_express(changes, field):
    with pytest.raises(ConfigError) as err:
        hf_config_for(FAMILIES["mixtral"].replace(**changes))
    assert err.value.field == field


def test_deepseek_shared_width_must_be_whole_experts():
    with pytest.raises(ConfigError, match="shared_d_ff"):
        hf_config_for(FAMILIES["deepseek_v2"].replace(shared_d_ff=96))


def test_make_hf_block_is_deterministic():
    cfg = FAMILIES["deepseek_v3"]
    a, b, c = (make_hf_block(cfg, seed=s).state_dict() for s in (7, 7, 8))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["experts.gate_up_proj"], c["experts.gate_up_proj"])
    bias = a["gate.e_score_correction_bias"]
    assert bias.abs().max() <= 0.05 and bias.abs().max() > 0
    assert torch.equal(make_hf_input(cfg, 4, seed=1), make_hf_input(cfg, 4, seed=1))


def test_weights_are_scaled_by_fan_in():
    cfg = FAMILIES["mixtral"].replace(d_model=256, d_ff=128)
    block = make_hf_block(cfg, seed=0)
    assert block.experts.gate_up_proj.std().item() == pytest.approx(256 ** -0.5, rel=0.05)
    assert block.experts.down_proj.std().item() == pytest.approx(128 ** -0.5, rel=0.05)
    assert not block.training


@pytest.mark.parametrize("module", [torch.nn.Linear(64, 8), "qwen2_shared_mlp"])
def test_unsupported_module_is_refused(module):
    if module == "qwen2_shared_mlp":  # a dense SwiGLU MLP, not an MoE block
        module = make_hf_block(FAMILIES["qwen2_moe"], seed=0).shared_expert
    with pytest.raises(WeightsError, match=f"{type(module).__name__} is not a supported MoE block"):
        float_weights_from_hf(module, FAMILIES["qwen2_moe"])


@pytest.mark.parametrize("changes, tensor", [
    (dict(d_ff=32), "w_up"),
    (dict(n_experts=16), "router"),
    (dict(d_model=32), "router"),
])
def test_shape_mismatch_is_refused(changes, tensor):
    block = make_hf_block(FAMILIES["olmoe"], seed=0)
    with pytest.raises(ShapeError, match=rf"^{tensor}: shape \[.*\] does not match the config's \[.*\]"):
        float_weights_from_hf(block, FAMILIES["olmoe"].replace(**changes))


def test_missing_shared_expert_is_refused():
    block = make_hf_block(FAMILIES["deepseek_v2"], seed=0)
    with pytest.raises(ShapeError, match=r"^shared_\w+: the config has no such tensor"):
        float_weights_from_hf(block, FAMILIES["deepseek_v2"].replace(shared_d_ff=0))


@pytest.mark.parametrize("family, changes, field", [
    ("deepseek_v3", dict(top_k=2), "top_k"),
    ("deepseek_v3", dict(routing="softmax_topk", selection_bias=False), "routing"),
    ("deepseek_v3", dict(routed_scaling_factor=1.0), "routed_scaling_factor"),
    ("deepseek_v2", dict(group_score="top2_sum"), "group_score"),
    ("qwen3_moe", dict(renormalize=False), "renormalize"),
    ("qwen3_moe", dict(family="olmoe"), "family"),
    ("switch", dict(activation="swiglu"), "activation"),
])
def test_routing_mismatch_is_refused(family, changes, field):
    block = make_hf_block(FAMILIES[family], seed=0)
    with pytest.raises(ConfigError) as err:
        float_weights_from_hf(block, FAMILIES[family].replace(**changes))
    assert err.value.field == field


def test_custom_family_config_is_accepted():
    cfg = FAMILIES["deepseek_v3"]
    block = make_hf_block(cfg, seed=0)
    weights = float_weights_from_hf(block, cfg.replace(family="custom"))
    assert weights.selection_bias.shape == (cfg.n_experts,)


def test_switch_router_bias_is_refused():
    cfg = FAMILIES["switch"]
    block = make_hf_block(cfg, seed=0)
    block.router.classifier = torch.nn.Linear(cfg.d_model, cfg.n_experts, bias=True)
    with pytest.raises(WeightsError, match="router has a bias"):
        float_weights_from_hf(block, cfg)


class _OldExpert(torch.nn.Module):
    """An older per-expert SwiGLU MLP (Mixtral's w1/w3/w2 or the gate_proj/up_proj/down_proj names)."""

    def __init__(self, gate, up, down, names):
        super().__init__()
        for name, w in zip(names, (gate, up, down)):
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            setattr(self, name, lin)
        self.act_fn = torch.nn.SiLU()


@pytest.mark.parametrize("family, names", [("mixtral", ("w1", "w3", "w2")),
                                           ("qwen3_moe", ("gate_proj", "up_proj", "down_proj"))])
def test_per_expert_layout_imports_like_fused(family, names):
    cfg = FAMILIES[family]
    block = make_hf_block(cfg, seed=3)
    fused = float_weights_from_hf(block, cfg)
    block.experts = torch.nn.ModuleList(
        _OldExpert(fused.w_gate[e], fused.w_up[e], fused.w_down[e], names) for e in range(cfg.n_experts))
    old = float_weights_from_hf(block, cfg)
    for field in ("router", "w_gate", "w_up", "w_down"):
        assert torch.equal(getattr(old, field), getattr(fused, field)), field


def test_imported_weights_are_detached_float32():
    cfg = FAMILIES["qwen2_moe"]
    weights = float_weights_from_hf(make_hf_block(cfg, seed=0), cfg)
    assert weights.selection_bias is None  # only DeepSeek-V3 has one
    for name, t in vars(weights).items():
        if name == "selection_bias":
            continue
        assert t is not None, name
        assert t.dtype == torch.float32 and not t.requires_grad, name
    assert weights.shared_expert_gate.shape == (cfg.d_model,)


def test_reference_refuses_bad_input_shape():
    cfg = FAMILIES["olmoe"]
    ref = FloatMoELayer.from_hf(make_hf_block(cfg, seed=0), cfg)
    with pytest.raises(ShapeError, match="d_model=64"):
        ref(torch.zeros(1, 4, cfg.d_model))


def test_hls_models_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None; "
            "import moeforge.hls_models as h; h.FloatMoELayer; h.family_configs()")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def test_family_configs_are_the_example_configs_scaled_down(tmp_path):
    """Each family's test layer is configs/<family>.toml at the small sizes: a routing fact
    changed in the example config changes the test layer, and every field but the sizes (and
    the name and hardware) is the example config's."""
    root = Path(__file__).resolve().parents[2] / "configs"
    sizes = {"name", "d_model", "d_ff", "n_experts", "top_k", "shared_d_ff"}
    for family, cfg in FAMILIES.items():
        full = AccelConfig.from_toml(root / f"{family}.toml")
        for section in ("model", "routing", "precision"):
            for f in set(SECTIONS[section]) - sizes:
                assert getattr(cfg, f) == getattr(full, f), (family, f)
    for f in root.glob("*.toml"):
        (tmp_path / f.name).write_text(f.read_text())
    v2 = tmp_path / "deepseek_v2.toml"
    v2.write_text(v2.read_text().replace("routed_scaling_factor = 2.0", "routed_scaling_factor = 3.0"))
    changed = family_configs(tmp_path)
    assert changed["deepseek_v2"].routed_scaling_factor == 3.0
    assert changed["deepseek_v2"].replace(routed_scaling_factor=2.0) == FAMILIES["deepseek_v2"]
    (tmp_path / "olmoe.toml").unlink()
    with pytest.raises(ConfigError, match="olmoe.toml: no example config"):
        family_configs(tmp_path)
    (tmp_path / "olmoe.toml").write_text((root / "mixtral.toml").read_text())
    with pytest.raises(ConfigError, match="is a mixtral config, not olmoe"):
        family_configs(tmp_path)


def test_outlier_tokens_scale_the_same_channels_for_every_seed():
    cfg = FAMILIES["mixtral"]
    plain = [make_hf_input(cfg, 512, seed=s) for s in (0, 1)]
    shaped = [make_hf_input(cfg, 512, seed=s, outliers=3, outlier_gain=30.0) for s in (0, 1)]
    for p, o in zip(plain, shaped):
        ratio = (o / p)[0]
        hot = torch.nonzero(ratio != 1).flatten()
        assert hot.numel() == 3 and torch.allclose(ratio[hot], torch.full((3,), 30.0))
        assert torch.equal(o[:, ratio == 1], p[:, ratio == 1])     # the rest untouched
    assert torch.equal(torch.nonzero((shaped[0] / plain[0])[0] != 1),
                       torch.nonzero((shaped[1] / plain[1])[0] != 1))
    with pytest.raises(ValueError, match="outliers must be in 0..d_model"):
        make_hf_input(cfg, 4, seed=0, outliers=cfg.d_model + 1)
