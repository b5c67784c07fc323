"""`FloatMoELayer`: the float reference of one MoE layer, for every family, driven only by cfg.

It reproduces the `transformers` MoE blocks' forward from `FloatMoEWeights` alone, so the
golden model's error can be measured against it without `transformers` in the loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moeforge.config import AccelConfig
from moeforge.errors import ShapeError

from .hf_import import float_weights_from_hf
from .weights import FloatMoEWeights

__all__ = ["FloatMoELayer"]

RENORM_EPS = 1e-20  # DeepSeek-V3's denominator guard; softmax routing renormalises without one


class FloatMoELayer:
    """Float32 MoE layer: router, top-k experts, gate-weighted sum, shared expert."""

    def __init__(self, cfg: AccelConfig, weights: FloatMoEWeights):
        self.cfg = cfg
        self.weights = weights.float().check(cfg)

    @classmethod
    def from_hf(cls, block, cfg: AccelConfig) -> "FloatMoELayer":
        """The float reference of a `transformers` MoE block (fused or per-expert layout)."""
        return cls(cfg, float_weights_from_hf(block, cfg))

    # --- routing --------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.cfg.d_model:
            raise ShapeError(f"input shape {list(x.shape)} is not [tokens, d_model={self.cfg.d_model}]")
        return x.to(torch.float32)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._check_input(x), self.weights.router)

    def _group_mask(self, choice: torch.Tensor) -> torch.Tensor:
        """[T, E] bool: experts in each token's `topk_group` best groups."""
        cfg = self.cfg
        grouped = choice.view(choice.shape[0], cfg.n_group, cfg.experts_per_group)
        if cfg.group_score == "max":
            group_score = grouped.max(dim=-1).values
        else:  # top2_sum
            group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)
        best = group_score.topk(cfg.topk_group, dim=-1).indices
        mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
        return mask.repeat_interleave(cfg.experts_per_group, dim=1)

    def _select(self, choice: torch.Tensor) -> torch.Tensor:
        """Top-k expert indices of `choice`, within the chosen groups when n_group > 1."""
        if self.cfg.n_group > 1:
            choice = choice.masked_fill(~self._group_mask(choice), float("-inf"))
        return choice.topk(self.cfg.top_k, dim=-1).indices

    def _route_unsorted(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, logits = self.cfg, self.router_logits(x)
        if cfg.routing == "topk_softmax":
            # softmax over the k already sums to one: renormalize has nothing left to do
            idx = logits.topk(cfg.top_k, dim=-1).indices
            gates = logits.gather(1, idx).softmax(dim=-1)
        elif cfg.routing == "softmax_topk":
            probs = logits.softmax(dim=-1)
            idx = self._select(probs)
            gates = probs.gather(1, idx)
            if cfg.renormalize:
                gates = gates / gates.sum(dim=-1, keepdim=True)
        else:  # sigmoid_topk
            scores = logits.sigmoid()
            choice = scores + self.weights.selection_bias if cfg.selection_bias else scores
            idx = self._select(choice)
            gates = scores.gather(1, idx)  # the bias picks experts but does not weight them
            if cfg.renormalize:
                gates = gates / (gates.sum(dim=-1, keepdim=True) + RENORM_EPS)
        return idx, gates * cfg.routed_scaling_factor

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices [T, k] int64 ascending per token, gate weights [T, k] in the same order)."""
        idx, gates = self._route_unsorted(x)
        idx, order = idx.sort(dim=-1)
        return idx, gates.gather(1, order)

    # --- experts --------------------------------------------------------
    def _ffn(self, x, w_gate, w_up, w_down) -> torch.Tensor:
        if self.cfg.activation == "relu":
            return F.linear(F.relu(F.linear(x, w_up)), w_down)
        return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Routed expert `e` on tokens x [T, D], without its gate weight."""
        w = self.weights
        return self._ffn(self._check_input(x), None if w.w_gate is None else w.w_gate[e], w.w_up[e], w.w_down[e])

    def shared_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The shared expert's contribution [T, D], gate included (zeros without one)."""
        x, w = self._check_input(x), self.weights
        if not self.cfg.shared_d_ff:
            return torch.zeros_like(x)
        y = self._ffn(x, w.shared_gate_proj, w.shared_up, w.shared_down)
        if self.cfg.shared_gate == "sigmoid":
            y = F.linear(x, w.shared_expert_gate[None]).sigmoid() * y
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, D] → [T, D]."""
        x = self._check_input(x)
        idx, gates = self._route_unsorted(x)
        out = torch.zeros_like(x)
        for e in range(self.cfg.n_experts):
            token, slot = (idx == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, self.expert_forward(e, x[token]) * gates[token, slot, None])
        return out + self.shared_forward(x)

    __call__ = forward
