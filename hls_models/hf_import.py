"""Read the float weights of a `transformers` MoE block into `FloatMoEWeights`.

Duck-typed on class names (including base classes) and attributes, so `transformers`
stays optional. Reads both the fused expert layout (`experts.gate_up_proj` [E, 2F, D],
`experts.down_proj` [E, D, F]) and per-expert modules (`gate_proj/up_proj/down_proj`,
Mixtral's old `w1/w3/w2`, Switch's `wi/wo`), so old and new checkpoints both import.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError, WeightsError

from .weights import FloatMoEWeights

__all__ = ["float_weights_from_hf", "block_family", "SUPPORTED_BLOCKS"]

# transformers class name -> AccelConfig.family
SUPPORTED_BLOCKS = {
    "SwitchTransformersSparseMLP": "switch",
    "MixtralSparseMoeBlock": "mixtral",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "Qwen3MoeSparseMoeBlock": "qwen3_moe",
    "OlmoeSparseMoeBlock": "olmoe",
    "DeepseekV2Moe": "deepseek_v2",
    "DeepseekV2MoE": "deepseek_v2",  # the remote-code spelling
    "DeepseekV3MoE": "deepseek_v3",
}

# Per-expert projection names: (gate, up, down); Switch's ReLU FFN has no gate.
_EXPERT_LINEAR_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"), (None, "wi", "wo"))


def block_family(block) -> str:
    """The `AccelConfig.family` of a transformers MoE block; WeightsError if it is not one."""
    for klass in type(block).__mro__:
        if klass.__name__ in SUPPORTED_BLOCKS:
            return SUPPORTED_BLOCKS[klass.__name__]
    raise WeightsError(f"{type(block).__name__} is not a supported MoE block; supported: "
                       f"{', '.join(SUPPORTED_BLOCKS)}")


def _attr(name: str, *where, default=None):
    """First non-None attribute `name` of the router, the block or the block's config."""
    for obj in where:
        v = getattr(obj, name, None) if obj is not None else None
        if v is not None:
            return v
    return default


def _linear_weight(lin, what: str) -> torch.Tensor:
    if getattr(lin, "bias", None) is not None:
        raise WeightsError(f"{what} has a bias; the accelerator's projections have none")
    w = getattr(lin, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise WeightsError(f"{what} ({type(lin).__name__}) has no weight tensor")
    return w


def _fused_experts(experts):
    """Fused [E, 2F, D] gate/up and [E, D, F] down, honouring transformers' layout flags."""
    if getattr(experts, "has_bias", False) or getattr(experts, "gate_up_proj_bias", None) is not None:
        raise WeightsError(f"{type(experts).__name__} has expert biases; the accelerator's experts have none")
    gate_up, down = experts.gate_up_proj, experts.down_proj
    if getattr(experts, "is_transposed", False):  # stored [E, in, out]
        gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
    if getattr(experts, "is_concatenated", True):  # [gate; up]
        gate, up = gate_up.chunk(2, dim=1)
    else:  # interleaved rows gate0, up0, gate1, up1, ...
        gate, up = gate_up[:, 0::2], gate_up[:, 1::2]
    return gate, up, down, getattr(experts, "act_fn", None)


def _expert_modules(experts) -> list:
    if hasattr(experts, "keys"):  # Switch's ModuleDict of expert_{i}
        def index(key):
            digits = str(key).rsplit("_", 1)[-1]
            return int(digits) if digits.isdigit() else math.inf
        return [experts[k] for k in sorted(experts.keys(), key=index)]
    try:
        return list(experts)
    except TypeError:
        raise WeightsError(f"experts ({type(experts).__name__}) are neither fused tensors "
                           f"(gate_up_proj, down_proj) nor a list of expert modules") from None


def _per_expert(experts):
    """Stack per-expert Linear layers into [E, F, D] / [E, D, F]."""
    modules = _expert_modules(experts)
    if not modules:
        raise WeightsError("the block has no experts")
    gates, ups, downs, act = [], [], [], None
    for i, m in enumerate(modules):
        for g, u, d in _EXPERT_LINEAR_NAMES:
            if hasattr(m, u) and hasattr(m, d) and (g is None or hasattr(m, g)):
                break
        else:
            raise WeightsError(f"expert {i} ({type(m).__name__}) has none of gate_proj/up_proj/down_proj, "
                               f"w1/w3/w2 or wi/wo")
        if g is not None:
            gates.append(_linear_weight(getattr(m, g), f"expert {i} {g}"))
        ups.append(_linear_weight(getattr(m, u), f"expert {i} {u}"))
        downs.append(_linear_weight(getattr(m, d), f"expert {i} {d}"))
        act = act or getattr(m, "act_fn", None) or getattr(m, "act", None)
    if gates and len(gates) != len(ups):
        raise WeightsError("experts mix gated (SwiGLU) and ungated (ReLU) projections")
    try:
        stacked = [torch.stack(ws) if ws else None for ws in (gates, ups, downs)]
    except RuntimeError:
        raise WeightsError("the experts' weights do not all have the same shape") from None
    return (*stacked, act)


def _shared_expert(module):
    """(gate_proj, up, down) of a shared MLP; all None when it is absent or zero-wide."""
    if module is None:
        return None, None, None, None
    g = _linear_weight(module.gate_proj, "shared expert gate_proj")
    u = _linear_weight(module.up_proj, "shared expert up_proj")
    d = _linear_weight(module.down_proj, "shared expert down_proj")
    if u.shape[0] == 0:
        return None, None, None, None
    return g, u, d, getattr(module, "act_fn", None)


_PROBE = torch.linspace(-6.0, 6.0, 49)
_ACTIVATIONS = {"relu": F.relu, "swiglu": F.silu}  # the function applied to the gate (or wi) output


def _activation_of(act_fn) -> str | None:
    if act_fn is None:
        return None
    with torch.no_grad():
        y = act_fn(_PROBE)
    for name, ref in _ACTIVATIONS.items():
        if torch.allclose(y, ref(_PROBE), atol=1e-6):
            return name
    return f"unsupported ({type(act_fn).__name__})"


def _n_group(router, bcfg) -> int:
    return int(_attr("num_group", router) or _attr("n_group", router, bcfg) or 1)


def _implied_fields(family: str, block, router, has_shared: bool) -> dict:
    """The model/routing fields of AccelConfig that this block's forward implements."""
    bcfg = getattr(block, "config", None)
    top_k = _attr("top_k", router, block) or _attr("num_experts_per_tok", block, bcfg)
    if family == "switch":
        return dict(top_k=1, routing="softmax_topk", renormalize=False, n_group=1,
                    routed_scaling_factor=1.0, selection_bias=False)
    if top_k is None:
        raise WeightsError(f"cannot read top_k from {type(block).__name__}")
    out = dict(top_k=int(top_k))
    if family == "mixtral":
        # softmax over the k: renormalize changes nothing, so it is not checked
        out.update(routing="topk_softmax", n_group=1, routed_scaling_factor=1.0, selection_bias=False)
    elif family in ("qwen2_moe", "qwen3_moe", "olmoe"):
        out.update(routing="softmax_topk", n_group=1, routed_scaling_factor=1.0, selection_bias=False,
                   renormalize=bool(_attr("norm_topk_prob", router, block, bcfg, default=False)))
        if family == "qwen2_moe":
            out["shared_gate"] = "sigmoid" if has_shared else "none"
    elif family == "deepseek_v2":
        method = _attr("topk_method", router, block, bcfg, default="greedy")
        if method not in ("greedy", "group_limited_greedy"):
            raise ConfigError("routing", f"DeepSeek-V2 topk_method {method!r} is not supported "
                              f"(greedy, group_limited_greedy)")
        grouped = method == "group_limited_greedy"
        out.update(routing="softmax_topk", renormalize=False, selection_bias=False,
                   n_group=_n_group(router, bcfg) if grouped else 1,
                   topk_group=int(_attr("topk_group", router, bcfg, default=1)) if grouped else 1,
                   group_score="max",
                   routed_scaling_factor=float(_attr("routed_scaling_factor", router, bcfg, default=1.0)))
    elif family == "deepseek_v3":
        out.update(routing="sigmoid_topk", selection_bias=True,
                   renormalize=bool(_attr("norm_topk_prob", router, bcfg, default=True)),
                   n_group=_n_group(router, bcfg),
                   topk_group=int(_attr("topk_group", router, bcfg, default=1)),
                   group_score="top2_sum",
                   routed_scaling_factor=float(_attr("routed_scaling_factor", router, bcfg, default=1.0)))
    if out.get("n_group", 1) == 1:  # one group: the group fields select nothing
        out.pop("topk_group", None)
        out.pop("group_score", None)
    return out


def _check_fields(block, cfg: AccelConfig, implied: dict) -> None:
    for name, value in implied.items():
        have = getattr(cfg, name)
        same = math.isclose(have, value, rel_tol=1e-6) if isinstance(value, float) else have == value
        if not same:
            raise ConfigError(name, f"the {type(block).__name__} block has {name}={value!r}; "
                              f"the config says {have!r}")


def float_weights_from_hf(block, cfg: AccelConfig) -> FloatMoEWeights:
    """The block's weights in the common float32 layout, checked against `cfg`.

    Raises WeightsError (not an MoE block we support, biases, unreadable experts),
    ConfigError (the block routes or activates differently from `cfg`, naming the
    field) or ShapeError (a tensor's shape disagrees with `cfg`).
    """
    family = block_family(block)
    if cfg.family not in ("custom", family):
        raise ConfigError("family", f"the {type(block).__name__} block is {family!r}; "
                          f"the config says {cfg.family!r}")

    if family == "switch":
        router = block.router
        router_w = _linear_weight(router.classifier, "router")
    else:
        router = block.gate  # a TopKRouter (weight, no bias) or an old nn.Linear
        router_w = _linear_weight(router, "router")

    experts = block.experts
    if hasattr(experts, "gate_up_proj"):
        w_gate, w_up, w_down, act_fn = _fused_experts(experts)
    else:
        w_gate, w_up, w_down, act_fn = _per_expert(experts)

    shared_module = getattr(block, "shared_expert", None)  # Qwen2
    if shared_module is None:
        shared_module = getattr(block, "shared_experts", None)  # DeepSeek
    s_gate, s_up, s_down, s_act = _shared_expert(shared_module)
    shared_expert_gate = None
    if family == "qwen2_moe" and s_up is not None:
        shared_expert_gate = _linear_weight(block.shared_expert_gate, "shared_expert_gate").reshape(-1)

    implied = _implied_fields(family, block, router, has_shared=s_up is not None)
    implied["activation"] = "relu" if w_gate is None else "swiglu"
    _check_fields(block, cfg, implied)
    for where, fn in (("experts", act_fn), ("shared expert", s_act)):
        found = _activation_of(fn)
        if found is not None and found != cfg.activation:
            raise ConfigError("activation", f"the {type(block).__name__} block's {where} use {found}; "
                              f"the config says {cfg.activation!r}")

    bias = None
    if family == "deepseek_v3":
        bias = getattr(router, "e_score_correction_bias", None)
        if bias is None:
            raise WeightsError(f"{type(block).__name__} router has no e_score_correction_bias")

    weights = FloatMoEWeights(
        router=router_w, w_up=w_up, w_down=w_down, w_gate=w_gate, selection_bias=bias,
        shared_gate_proj=s_gate, shared_up=s_up,
        shared_down=s_down, shared_expert_gate=shared_expert_gate)
    return weights.float().check(cfg)
