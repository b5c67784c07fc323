"""How closely the golden model tracks the float `transformers` block.

Two figures per layer, each measured twice:
- the relative L2 error of the dequantised golden output against the float block, and
- the share of tokens whose expert set (the top-k, skipped experts included) equals the
  float router's,
once with the float block fed the tokens the device receives (the int8 input,
dequantised: this isolates the device's own arithmetic, the part the toolkit's
knobs such as `router_bits` control) and once fed the raw float tokens (which also
counts what quantising the input to int8 costs: near-tied routes flip).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from moeforge.config import AccelConfig

from .golden import QuantizedMoELayer
from .hf_import import float_weights_from_hf
from .hf_random import make_hf_block, make_hf_input
from .reference import FloatMoELayer

__all__ = ["AccuracyReport", "measure_accuracy"]


@dataclass
class AccuracyReport:
    family: str
    tokens: int
    rel_l2: float              # ||y_golden - y_float|| / ||y_float||, float block on the device's input
    route_match: float         # same expert set as the float router, on the device's input
    rel_l2_float_input: float  # the same two figures with the float block on the raw float tokens
    route_match_float_input: float
    knobs: str = ""            # the knobs in force (input width, weight bits, smoothing, expert skipping)
    experts_per_token: float = 0.0   # routed experts a token runs (top_k without skipping)

    def as_dict(self) -> dict:
        return asdict(self)


def _expert_sets(indices: torch.Tensor) -> torch.Tensor:
    return torch.sort(indices, dim=-1).values


def measure_accuracy(cfg: AccelConfig, *, seed: int = 0, calib_tokens: int = 2048,
                     eval_tokens: int = 2048, outliers: int = 0,
                     outlier_gain: float = 30.0) -> AccuracyReport:
    """Build a random-weight `transformers` block for `cfg.family`, quantise, compare.
    `outliers` channels scaled by `outlier_gain` (`make_hf_input`) in calibration and
    evaluation tokens alike: hidden states shaped like a real LLM's."""
    block = make_hf_block(cfg, seed=seed)
    shape = dict(outliers=outliers, outlier_gain=outlier_gain)
    calib = make_hf_input(cfg, calib_tokens, seed=2 * seed, **shape)
    x = make_hf_input(cfg, eval_tokens, seed=2 * seed + 1, **shape)
    q = QuantizedMoELayer.from_hf(block, cfg, calib=calib)
    x_int = q.quantize_input(x)
    x_hat = q.dequantize_input(x_int)
    y_q = q.dequantize_output(q.forward_int(x_int))
    with torch.no_grad():
        y_hat, y_raw = (block(v[None]).reshape(v.shape) for v in (x_hat, x))

    ref = FloatMoELayer(cfg, float_weights_from_hf(block, cfg))
    route = q.route_int(x_int)
    dev = _expert_sets(route.indices)
    match_hat = (dev == _expert_sets(ref.route(x_hat)[0])).all(dim=-1).float().mean().item()
    match_raw = (dev == _expert_sets(ref.route(x)[0])).all(dim=-1).float().mean().item()
    return AccuracyReport(cfg.family, eval_tokens, _rel(y_q, y_hat), match_hat, _rel(y_q, y_raw),
                          match_raw, knobs(cfg), route.kept.sum(dim=1).float().mean().item())


def knobs(cfg: AccelConfig) -> str:
    """The knobs that decide the float-input error, as a report shows them."""
    skip = f", skip < {cfg.skip_threshold:g}" if cfg.skip_threshold else ""
    return f"int{cfg.input_bits} input, int{cfg.weight_bits} weights, smoothing {cfg.input_smoothing:g}{skip}"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()
