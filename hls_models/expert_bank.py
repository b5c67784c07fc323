"""`ExpertBank`: the integer experts of a layer (docs/arithmetic.md §4), and `int_gemm`.

Below the golden layer, the quantiser and the weight image, which all build or read banks.
GEMMs run as float64 matmuls, which are exact because every product sum stays far below 2^53
(int8·int8·d_model, int8·int16·d_model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeforge.spec.arith import HIDDEN_BITS, OUT_BITS, SILU_BITS, UP_BITS

from .fixed_point import fwht_blocks, requantize, silu_fixed

__all__ = ["ExpertBank", "int_gemm"]


def int_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact integer ``x @ w.T`` through float64 (see the module docstring): every GEMM of the
    device, and of the unit-level checks that feed a unit its accumulators."""
    return torch.matmul(x.to(torch.float64), w.to(torch.float64).T).to(torch.int64)


@dataclass
class ExpertBank:
    """Integer weights and requantisation parameters of n experts (routed: E, shared: 1)."""

    activation: str
    rotation: int                     # Walsh-Hadamard block applied before h is quantised
    w_up: torch.Tensor                # [n, F, D] int8 (ReLU: wi)
    up_mult: torch.Tensor             # [n, F]  → int16 u (SwiGLU) or a (ReLU)
    up_shift: torch.Tensor
    hid_mult: torch.Tensor            # [n]     rotated SiLU(g)·u, or rotated ReLU(a) → int8 h
    hid_shift: torch.Tensor
    w_down: torch.Tensor              # [n, D, F] int8, rotated to match h
    down_mult: torch.Tensor           # [n, D]  → int16 o at s_o
    down_shift: torch.Tensor
    w_gate: torch.Tensor | None = None     # [n, F, D] int8 (SwiGLU)
    gate_mult: torch.Tensor | None = None  # [n, F]  → int24 g in units 2^-12
    gate_shift: torch.Tensor | None = None

    FIELDS = ("w_up", "up_mult", "up_shift", "hid_mult", "hid_shift", "w_down", "down_mult", "down_shift",
              "w_gate", "gate_mult", "gate_shift")

    @property
    def n(self) -> int:
        return self.w_up.shape[0]

    def hidden(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """int8 hidden activation h [T, F] of expert e for int tokens x [T, D]."""
        i64 = torch.int64
        u = requantize(int_gemm(x, self.w_up[e]), self.up_mult[e].to(i64), self.up_shift[e].to(i64), UP_BITS)
        if self.activation == "relu":
            p = u.clamp(min=0)
        else:
            g = requantize(int_gemm(x, self.w_gate[e]), self.gate_mult[e].to(i64), self.gate_shift[e].to(i64),
                           SILU_BITS)
            p = silu_fixed(g) * u
        p = fwht_blocks(p, self.rotation)
        return requantize(p, int(self.hid_mult[e]), int(self.hid_shift[e]), HIDDEN_BITS)

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """int16 output o [T, D] of expert e (layer-wide scale s_o)."""
        h = self.hidden(e, x)
        i64 = torch.int64
        return requantize(int_gemm(h, self.w_down[e]), self.down_mult[e].to(i64), self.down_shift[e].to(i64),
                          OUT_BITS)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The bank's tensors named ``prefix.field``: its part of the weight image."""
        return {f"{prefix}.{f}": getattr(self, f) for f in self.FIELDS if getattr(self, f) is not None}
