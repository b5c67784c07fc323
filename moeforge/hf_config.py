"""Read the model and routing part of an `AccelConfig` from a `transformers` config.

Duck-typed on `model_type` so that importing moeforge never needs `transformers`.
"""

from .errors import ConfigError

__all__ = ["model_fields_from_hf", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3",
                         "switch_transformers")


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _swiglu_act(cfg):
    act = _get(cfg, "hidden_act", default="silu")
    if act not in ("silu", "swish"):
        raise ConfigError("activation", f"the device implements SwiGLU with SiLU; "
                          f"hidden_act {act!r} is not supported")
    return "swiglu"


def model_fields_from_hf(cfg) -> dict:
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ConfigError("hf_config", f"model_type must be one of {', '.join(SUPPORTED_MODEL_TYPES)}, "
                          f"not {mt!r}")
    d = dict(name=f"{mt}-layer")
    if mt == "mixtral":
        d.update(family="mixtral", d_model=cfg.hidden_size, d_ff=cfg.intermediate_size,
                 n_experts=cfg.num_local_experts, top_k=cfg.num_experts_per_tok,
                 activation=_swiglu_act(cfg), routing="topk_softmax", renormalize=True)
    elif mt in ("qwen2_moe", "qwen3_moe", "olmoe"):
        d.update(family=mt, d_model=cfg.hidden_size, d_ff=_get(cfg, "moe_intermediate_size", "intermediate_size"),
                 n_experts=_get(cfg, "num_experts", "num_local_experts"), top_k=cfg.num_experts_per_tok,
                 activation=_swiglu_act(cfg), routing="softmax_topk",
                 renormalize=bool(_get(cfg, "norm_topk_prob", default=False)))
        if mt == "qwen2_moe":
            shared = int(_get(cfg, "shared_expert_intermediate_size", default=0))
            d.update(shared_d_ff=shared, shared_gate="sigmoid" if shared else "none")
    elif mt == "deepseek_v2":
        method = _get(cfg, "topk_method", default="greedy")
        if method not in ("greedy", "group_limited_greedy"):
            raise ConfigError("routing", f"DeepSeek-V2 topk_method {method!r} is not supported "
                              f"(greedy, group_limited_greedy)")
        n_group = int(_get(cfg, "n_group", default=1)) if method == "group_limited_greedy" else 1
        topk_group = int(_get(cfg, "topk_group", default=1)) if n_group > 1 else 1
        n_shared = int(_get(cfg, "n_shared_experts", default=0))
        d.update(family="deepseek_v2", d_model=cfg.hidden_size, d_ff=cfg.moe_intermediate_size,
                 n_experts=_get(cfg, "n_routed_experts", "num_experts"), top_k=cfg.num_experts_per_tok,
                 activation=_swiglu_act(cfg), routing="softmax_topk", renormalize=False,
                 n_group=n_group, topk_group=topk_group, group_score="max",
                 routed_scaling_factor=float(_get(cfg, "routed_scaling_factor", default=1.0)),
                 shared_d_ff=cfg.moe_intermediate_size * n_shared)
    elif mt == "deepseek_v3":
        n_shared = int(_get(cfg, "n_shared_experts", default=0))
        d.update(family="deepseek_v3", d_model=cfg.hidden_size, d_ff=cfg.moe_intermediate_size,
                 n_experts=_get(cfg, "n_routed_experts", "num_local_experts"), top_k=cfg.num_experts_per_tok,
                 activation=_swiglu_act(cfg), routing="sigmoid_topk",
                 renormalize=bool(_get(cfg, "norm_topk_prob", default=True)),
                 n_group=int(_get(cfg, "n_group", default=1)), topk_group=int(_get(cfg, "topk_group", default=1)),
                 group_score="top2_sum", selection_bias=True,
                 routed_scaling_factor=float(_get(cfg, "routed_scaling_factor", default=1.0)),
                 shared_d_ff=cfg.moe_intermediate_size * n_shared)
    elif mt == "switch_transformers":
        act = _get(cfg, "dense_act_fn", default="relu")
        if act != "relu":
            raise ConfigError("activation", f"Switch experts must use relu, not {act!r}")
        d.update(family="switch", d_model=cfg.d_model, d_ff=cfg.d_ff, n_experts=cfg.num_experts, top_k=1,
                 activation="relu", routing="softmax_topk", renormalize=False)
    return d
