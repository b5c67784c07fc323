"""Integer routing: logits → top-k experts and Q1.15 gate weights (docs/arithmetic.md §3–4).

Vectorised over tokens; ties always go to the lower expert (or group) index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeforge.config import AccelConfig
from moeforge.spec.arith import GATE_ONE, RSF_FRAC

from .fixed_point import exp_neg, round_shift, sigmoid_exact

__all__ = ["RouteResult", "route_from_logits", "topk_lowest_index", "rsf_fixed", "skip_fixed"]

_NEG = -(1 << 50)  # below every real score (|score| < 2^33): marks experts outside the chosen groups


@dataclass
class RouteResult:
    """What the router unit hands to the scheduler, per token."""

    logits: torch.Tensor       # [T, E] int64, units 2^-16
    indices: torch.Tensor      # [T, k] int64, in selection order (best first)
    gates: torch.Tensor        # [T, k] int64, Q1.15 after routed scaling; 0 where skipped
    shared_gate: torch.Tensor  # [T] int64, Q1.15 (2^15 for always-on, 0 without shared expert)
    kept: torch.Tensor         # [T, k] bool: the expert runs for the token (all True without skipping)

    def expert_counts(self, n_experts: int) -> list[int]:
        """Tokens that keep each expert: what the device's dispatch table counts."""
        return torch.bincount(self.indices[self.kept], minlength=n_experts).tolist()

    def beat_rows(self, keep: bool = False) -> list[list[int]]:
        """Per token, the router unit's ``o_route`` beat as integers: ``[experts..., gates...,
        shared_gate]``, and with `keep` (expert skipping) the kept mask (bit j: ``indices[j]``)."""
        rows = []
        for t in range(self.indices.shape[0]):
            row = self.indices[t].tolist() + self.gates[t].tolist() + [int(self.shared_gate[t])]
            if keep:
                row.append(sum(1 << j for j, k in enumerate(self.kept[t].tolist()) if k))
            rows.append(row)
        return rows

    def experts_run(self) -> list[int]:
        """The experts some token keeps, ascending: the ones the device fetches and computes."""
        return torch.unique(self.indices[self.kept]).tolist()


def topk_lowest_index(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest integers per row, best first; equal scores: lower index first."""
    n = score.shape[-1]
    idx = torch.arange(n, dtype=torch.int64)
    # Scores are within ±2^50 and n <= 1024, so the composite key is exact in int64.
    key = score * 1024 + (1023 - idx)
    return torch.topk(key, k, dim=-1, sorted=True).indices


def _group_mask(score: torch.Tensor, cfg: AccelConfig) -> torch.Tensor:
    """Boolean [T, E]: experts in the topk_group best groups (all experts without grouping)."""
    if cfg.n_group == 1:
        return torch.ones_like(score, dtype=torch.bool)
    T = score.shape[0]
    grouped = score.view(T, cfg.n_group, cfg.experts_per_group)
    if cfg.group_score == "max":
        gscore = grouped.max(dim=-1).values
    else:
        gscore = torch.topk(grouped, 2, dim=-1).values.sum(dim=-1)
    chosen = topk_lowest_index(gscore, cfg.topk_group)
    gmask = torch.zeros(T, cfg.n_group, dtype=torch.bool)
    gmask.scatter_(1, chosen, True)
    return gmask.repeat_interleave(cfg.experts_per_group, dim=1)


def _divide_q15(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """round-half-up(num · 2^15 / den) for den > 0; 0 where den == 0."""
    safe = torch.where(den > 0, den, 1)
    q = torch.div(num * GATE_ONE + (safe >> 1), safe, rounding_mode="floor")
    return torch.where(den > 0, q, 0)


def rsf_fixed(cfg: AccelConfig) -> int:
    """routed_scaling_factor as Q.12."""
    return int(round(cfg.routed_scaling_factor * (1 << RSF_FRAC)))


def skip_fixed(cfg: AccelConfig) -> int:
    """skip_threshold as Q1.15 (0: no skipping)."""
    return int(round(cfg.skip_threshold * GATE_ONE))


def route_from_logits(logits: torch.Tensor, cfg: AccelConfig, selection_bias: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k selection, gate weights and the kept mask from routed-expert logits [T, E] (int64)."""
    k = cfg.top_k
    if cfg.routing == "sigmoid_topk":
        prob = sigmoid_exact(logits)
        choice = prob + selection_bias if selection_bias is not None else prob
    else:
        choice = logits
    allowed = _group_mask(choice, cfg)
    indices = topk_lowest_index(torch.where(allowed, choice, _NEG), k)

    normalises = cfg.routing == "topk_softmax" or cfg.renormalize   # over the selected experts
    if cfg.routing == "sigmoid_topk":
        sel = prob.gather(1, indices)
        gates = _divide_q15(sel, sel.sum(dim=1, keepdim=True)) if cfg.renormalize else sel
    else:
        sel_logits = logits.gather(1, indices)
        if cfg.routing == "topk_softmax":
            ref = sel_logits.max(dim=1, keepdim=True).values
            sel = exp_neg(ref - sel_logits)
            denom = sel.sum(dim=1, keepdim=True)
        else:
            ref = logits.max(dim=1, keepdim=True).values
            sel = exp_neg(ref - sel_logits)
            denom = sel.sum(dim=1, keepdim=True) if cfg.renormalize else exp_neg(ref - logits).sum(dim=1, keepdim=True)
        gates = _divide_q15(sel, denom)
    kept = torch.ones_like(indices, dtype=torch.bool)
    tau = skip_fixed(cfg)
    if tau:                                   # §3.7 expert skipping: the first choice always stays
        kept = gates >= tau
        kept[:, 0] = True
        if normalises:
            gates = _divide_q15(sel, torch.where(kept, sel, 0).sum(dim=1, keepdim=True))
        gates = torch.where(kept, gates, 0)
    gates = round_shift(gates * rsf_fixed(cfg), RSF_FRAC)
    return indices, gates, kept

