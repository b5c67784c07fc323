"""`transformers` MoE blocks with deterministic random weights: the float side of every accuracy test.

Weights are N(0, 1/fan_in) so activations stay O(1) through the layer, which keeps the
int8 quantisation tests meaningful. `transformers` is imported inside the functions so
that `moeforge.hls_models` imports without it.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch

from moeforge.config import DEVICE_FIELDS, SECTIONS, AccelConfig
from moeforge.errors import ConfigError

__all__ = ["hf_config_for", "make_hf_block", "make_hf_input", "family_configs"]

# family -> (transformers module, config class, MoE block class)
HF_BLOCKS = {
    "switch": ("switch_transformers", "SwitchTransformersConfig", "SwitchTransformersSparseMLP"),
    "mixtral": ("mixtral", "MixtralConfig", "MixtralSparseMoeBlock"),
    "qwen2_moe": ("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeSparseMoeBlock"),
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeSparseMoeBlock"),
    "olmoe": ("olmoe", "OlmoeConfig", "OlmoeSparseMoeBlock"),
    "deepseek_v2": ("deepseek_v2", "DeepseekV2Config", "DeepseekV2Moe"),
    "deepseek_v3": ("deepseek_v3", "DeepseekV3Config", "DeepseekV3MoE"),
}

SELECTION_BIAS_RANGE = 0.05  # DeepSeek-V3 e_score_correction_bias ~ U[-0.05, 0.05]


# The example configs (one per family) that `family_configs` scales down.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# The sizes of the small test layers; every other field of [model], [routing] and [precision]
# is the family's example config's, and [hardware] is AccelConfig's default.
SMALL_SIZES = {
    "switch": dict(d_model=64, d_ff=64, n_experts=8, top_k=1),
    "mixtral": dict(d_model=64, d_ff=64, n_experts=8, top_k=2),
    "qwen2_moe": dict(d_model=64, d_ff=64, n_experts=8, top_k=2, shared_d_ff=64),
    "qwen3_moe": dict(d_model=64, d_ff=64, n_experts=8, top_k=2),
    "olmoe": dict(d_model=64, d_ff=64, n_experts=8, top_k=2),
    "deepseek_v2": dict(d_model=64, d_ff=64, n_experts=8, top_k=2, shared_d_ff=64),
    # d_ff=32: DeepSeek's shared expert is n_shared_experts × moe_intermediate_size wide.
    "deepseek_v3": dict(d_model=64, d_ff=32, n_experts=16, top_k=4, shared_d_ff=32),
}


def family_configs(folder: str | Path = CONFIGS) -> dict[str, AccelConfig]:
    """One small config (d_model=64) per family, shared by the reference and accuracy tests.

    Each is ``configs/<family>.toml`` in `folder` at the sizes of `SMALL_SIZES`, so a family's
    routing, activation and shared expert are written once, in its example config.

    Raises
    ------
    ConfigError
        If an example config is missing from `folder` or invalid, or is of another family.
    """
    out = {}
    for family, sizes in SMALL_SIZES.items():
        path = Path(folder) / f"{family}.toml"
        if not path.is_file():
            raise ConfigError("family", f"{path}: no example config for {family} (family_configs reads "
                              f"the configs/ folder of a source checkout)")
        full = AccelConfig.from_toml(path)
        if full.family != family:
            raise ConfigError("family", f"{path} is a {full.family} config, not {family}")
        fields = {f: getattr(full, f) for section in ("model", "routing", "precision") for f in SECTIONS[section]}
        fields.update(name=f"{family.replace('_', '-')}-small", **sizes)
        out[family] = AccelConfig(**fields)
    return out


def _hf_module(family: str):
    if family not in HF_BLOCKS:
        raise ConfigError("family", f"must name a transformers MoE family ({', '.join(HF_BLOCKS)}) "
                          f"to build a transformers block, not {family!r}")
    name = HF_BLOCKS[family][0]
    return importlib.import_module(f"transformers.models.{name}.modeling_{name}")


def _deepseek_shared_experts(cfg: AccelConfig) -> int:
    if cfg.shared_d_ff % cfg.d_ff:
        raise ConfigError("shared_d_ff", f"DeepSeek's shared expert is a whole number of d_ff-wide experts; "
                          f"{cfg.shared_d_ff} is not a multiple of d_ff={cfg.d_ff}")
    return cfg.shared_d_ff // cfg.d_ff


def _config_kwargs(cfg: AccelConfig) -> dict:
    D, F, E, k = cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.top_k
    # One attention head of one layer: only the MoE block is built, but configs validate heads.
    common = dict(hidden_size=D, num_attention_heads=1, num_key_value_heads=1, num_hidden_layers=1,
                  hidden_act="silu", num_experts_per_tok=k)
    f = cfg.family
    if f == "switch":
        # The accelerator has no expert capacity limit: make the capacity large enough that no token
        # is ever dropped, and switch off the router's training-time jitter.
        return dict(d_model=D, d_ff=F, num_experts=E, expert_capacity=1 << 20, router_jitter_noise=0.0,
                    router_bias=False, dense_act_fn="relu", dropout_rate=0.0, num_heads=1, num_layers=1,
                    num_decoder_layers=1)
    if f == "mixtral":
        return dict(common, intermediate_size=F, num_local_experts=E, router_jitter_noise=0.0)
    if f in ("qwen2_moe", "qwen3_moe"):
        out = dict(common, intermediate_size=F, moe_intermediate_size=F, num_experts=E,
                   norm_topk_prob=cfg.renormalize)
        if f == "qwen2_moe":
            out["shared_expert_intermediate_size"] = cfg.shared_d_ff
        return out
    if f == "olmoe":
        return dict(common, intermediate_size=F, num_experts=E, norm_topk_prob=cfg.renormalize)
    if f == "deepseek_v2":
        grouped = cfg.n_group > 1
        return dict(common, intermediate_size=F, moe_intermediate_size=F, n_routed_experts=E,
                    n_shared_experts=_deepseek_shared_experts(cfg),
                    topk_method="group_limited_greedy" if grouped else "greedy",
                    n_group=cfg.n_group, topk_group=cfg.topk_group,
                    routed_scaling_factor=cfg.routed_scaling_factor, first_k_dense_replace=0)
    if f == "deepseek_v3":
        return dict(common, intermediate_size=F, moe_intermediate_size=F, n_routed_experts=E,
                    n_shared_experts=_deepseek_shared_experts(cfg), n_group=cfg.n_group,
                    topk_group=cfg.topk_group, norm_topk_prob=cfg.renormalize,
                    routed_scaling_factor=cfg.routed_scaling_factor, first_k_dense_replace=0)
    raise AssertionError(f)  # _hf_module rejected every other family


def hf_config_for(cfg: AccelConfig):
    """A small `transformers` config of `cfg.family` with cfg's model and routing fields.

    Raises ConfigError naming the first field the family cannot express (e.g. Mixtral with
    softmax_topk), so a test never silently compares against a different layer.
    """
    module = _hf_module(cfg.family)
    config_cls = getattr(module, HF_BLOCKS[cfg.family][1])
    hf = config_cls(**_config_kwargs(cfg))
    hf._experts_implementation = "eager"  # the plain loop; None makes transformers log a warning
    # cfg's own hardware, so the implied config is buildable exactly when cfg is
    hardware = {n: getattr(cfg, n) for n in DEVICE_FIELDS}
    implied = AccelConfig.from_hf(hf, **hardware)
    for name in SECTIONS["model"] + SECTIONS["routing"]:
        if name not in ("name",) + DEVICE_FIELDS and getattr(implied, name) != getattr(cfg, name):
            raise ConfigError(name, f"a {cfg.family} block has {name}={getattr(implied, name)!r}; "
                              f"it cannot express {getattr(cfg, name)!r}")
    return hf


@torch.no_grad()
def _init_random(block: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _, p in block.named_parameters():
        if p.numel() == 0:
            continue  # an absent shared expert (shared_d_ff = 0)
        if p.dim() == 1:
            p.zero_()  # biases (none in the supported blocks, but never leave torch.empty garbage)
            continue
        fan_in = p.shape[-1]  # [out, in] and fused [E, out, in] both keep the input last
        p.copy_(torch.randn(p.shape, generator=gen) * fan_in ** -0.5)
    for name, b in block.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_((torch.rand(b.shape, generator=gen) * 2 - 1) * SELECTION_BIAS_RANGE)


def make_hf_block(cfg: AccelConfig, seed: int) -> torch.nn.Module:
    """The `transformers` MoE block of `cfg.family`, float32, eval mode, weights from `seed`."""
    hf = hf_config_for(cfg)
    block_cls = getattr(_hf_module(cfg.family), HF_BLOCKS[cfg.family][2])
    with warnings.catch_warnings():
        # shared_d_ff = 0 builds zero-width Linear layers, whose default init warns; harmless here
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op", UserWarning)
        block = block_cls(hf).to(torch.float32)
    _init_random(block, seed)
    return block.eval()


# Inputs draw from a stream offset from the weights' one: with equal seeds, tokens
# identical to weight rows would otherwise give wildly unrepresentative activations.
INPUT_STREAM = 0x1F3D5B79


# Outlier channels are a property of the layer, not of a batch: the same channels for every
# seed (calibration and evaluation tokens alike), drawn from their own stream.
OUTLIER_STREAM = 0x0C7A11E5


def make_hf_input(cfg: AccelConfig, n_tokens: int, seed: int, *, outliers: int = 0,
                  outlier_gain: float = 30.0) -> torch.Tensor:
    """[n_tokens, d_model] standard-normal activations, deterministic in `seed`.

    ``outliers > 0`` shapes them like a real LLM's hidden states: that many channels (the
    same ones for every seed) are scaled by `outlier_gain` (real models show a handful of
    channels 10-100x the others), which stresses the per-tensor input scale hardest.
    """
    if not 0 <= outliers <= cfg.d_model:
        raise ValueError(f"outliers must be in 0..d_model={cfg.d_model}, not {outliers}")
    gen = torch.Generator().manual_seed(INPUT_STREAM + seed)
    x = torch.randn(n_tokens, cfg.d_model, generator=gen)
    if outliers:
        pick = torch.randperm(cfg.d_model, generator=torch.Generator().manual_seed(OUTLIER_STREAM))
        x[:, pick[:outliers]] *= outlier_gain
    return x
