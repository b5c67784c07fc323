"""`QuantizedMoELayer`: the bit-exact golden model of the accelerator (docs/arithmetic.md in code).

The RTL must reproduce `forward_int` bit for bit. All arithmetic is on int64 tensors;
GEMMs run as float64 matmuls, which are exact because every product sum stays far
below 2^53 (int8·int8·d_model, int8·int16·d_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ShapeError

from .fixed_point import GATE_ONE, SILU_BITS, fwht_blocks, quantize_symmetric, requantize, silu_fixed
from .routing import RouteResult, route_from_logits

__all__ = ["QuantizedMoELayer", "ExpertBank", "LOGIT_BITS", "HIDDEN_BITS", "UP_BITS", "OUT_BITS"]

LOGIT_BITS = 32   # router logits saturate to int32 (units 2^-16)
UP_BITS = 16      # SwiGLU up projection / ReLU activation, int16 at a per-expert scale
HIDDEN_BITS = 8   # the hidden activation entering the down projection (MAC array input)
OUT_BITS = 16     # each expert's output, int16 at the layer-wide scale s_o


def _first_non_finite(x: torch.Tensor, bad: torch.Tensor) -> str:
    """'token 17, element 3 is nan: ...' for the first True of `bad` (tokens are the leading
    dimensions of `x`, elements its last)."""
    i = int(bad.reshape(-1).to(torch.uint8).argmax())
    value = float(x.reshape(-1)[i])
    if x.dim() == 0:
        return f"the input is {value}: the device takes finite numbers"
    *lead, element = (int(v) for v in torch.unravel_index(torch.tensor(i), x.shape))
    token = "" if not lead else f"token {lead[0]}, " if len(lead) == 1 else f"token {lead}, "
    where = f"{token}element {element}"
    return f"{where} is {value}: the device takes finite numbers"


def _gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact integer x @ w.T through float64 (see module docstring)."""
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
        u = requantize(_gemm(x, self.w_up[e]), self.up_mult[e].to(i64), self.up_shift[e].to(i64), UP_BITS)
        if self.activation == "relu":
            p = u.clamp(min=0)
        else:
            g = requantize(_gemm(x, self.w_gate[e]), self.gate_mult[e].to(i64), self.gate_shift[e].to(i64),
                           SILU_BITS)
            p = silu_fixed(g) * u
        p = fwht_blocks(p, self.rotation)
        return requantize(p, int(self.hid_mult[e]), int(self.hid_shift[e]), HIDDEN_BITS)

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """int16 output o [T, D] of expert e (layer-wide scale s_o)."""
        h = self.hidden(e, x)
        i64 = torch.int64
        return requantize(_gemm(h, self.w_down[e]), self.down_mult[e].to(i64), self.down_shift[e].to(i64), OUT_BITS)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{f}": getattr(self, f) for f in self.FIELDS if getattr(self, f) is not None}

    @classmethod
    def from_tensors(cls, activation: str, rotation: int, tensors: dict[str, torch.Tensor],
                     prefix: str) -> "ExpertBank":
        return cls(activation=activation, rotation=rotation,
                   **{f: tensors.get(f"{prefix}.{f}") for f in cls.FIELDS})


class QuantizedMoELayer:
    """One MoE layer in the device's integer arithmetic.

    Build it with `from_hf(block, cfg, calib=x)` or `from_float(weights, cfg, calib=x)`,
    or load a weight image with `load(path)`. `forward_int` is the specification the
    RTL is checked against; calling the layer on floats quantises, runs it, dequantises.
    """

    def __init__(self, cfg: AccelConfig, *, router_weight, router_mult, router_shift, selection_bias,
                 experts: ExpertBank, shared: ExpertBank | None, out_mult, out_shift,
                 x_scale: float, y_scale: float, o_scale: float):
        self.cfg = cfg
        self.router_weight = router_weight      # [R, D] int16: E experts (+ Qwen2 shared gate row)
        self.router_mult = int(router_mult)     # acc → logit in units 2^-12
        self.router_shift = int(router_shift)
        self.selection_bias = selection_bias    # [E] int32 Q1.15 or None
        self.experts = experts
        self.shared = shared
        self.out_mult = int(out_mult)           # Σ gate·o → int8 y
        self.out_shift = int(out_shift)
        self.x_scale = float(x_scale)
        self.y_scale = float(y_scale)
        self.o_scale = float(o_scale)

    # --- construction ---------------------------------------------------
    @classmethod
    def from_float(cls, weights, cfg: AccelConfig, *, calib: torch.Tensor) -> "QuantizedMoELayer":
        from .quantize import quantize_layer
        return quantize_layer(weights, cfg, calib)

    @classmethod
    def from_hf(cls, block, cfg: AccelConfig, *, calib: torch.Tensor) -> "QuantizedMoELayer":
        """Import a `transformers` MoE block (fused or per-expert layout) and calibrate on `calib`."""
        from .hf_import import float_weights_from_hf
        return cls.from_float(float_weights_from_hf(block, cfg), cfg, calib=calib)

    # --- integer path ---------------------------------------------------
    def _check_int_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if x.dtype != torch.int8:
            raise ShapeError(f"forward_int takes int8 tokens, not {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.cfg.d_model:
            raise ShapeError(f"input shape {list(x.shape)} is not [tokens, d_model={self.cfg.d_model}]")
        return x.to(torch.int64)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every router row [T, R], int32 range, units 2^-16."""
        acc = _gemm(x, self.router_weight)
        return requantize(acc, self.router_mult, self.router_shift, LOGIT_BITS)

    def route_int(self, x_int8: torch.Tensor) -> RouteResult:
        x = self._check_int_input(x_int8)
        return self._route(x)

    def _route(self, x: torch.Tensor) -> RouteResult:
        cfg = self.cfg
        logits = self.router_logits(x)
        routed = logits[:, :cfg.n_experts]
        bias = self.selection_bias.to(torch.int64) if self.selection_bias is not None else None
        indices, gates = route_from_logits(routed, cfg, bias)
        T = x.shape[0]
        if cfg.shared_gate == "sigmoid":
            from .fixed_point import sigmoid_exact
            shared_gate = sigmoid_exact(logits[:, cfg.n_experts])
        elif cfg.shared_d_ff:
            shared_gate = torch.full((T,), GATE_ONE, dtype=torch.int64)
        else:
            shared_gate = torch.zeros(T, dtype=torch.int64)
        return RouteResult(routed, indices, gates, shared_gate)

    def expert_int(self, e: int, x_int8: torch.Tensor) -> torch.Tensor:
        """int16 output of routed expert e for every given token (used by unit-level checks)."""
        return self.experts.forward(e, self._check_int_input(x_int8))

    def partial_int(self, x_int8: torch.Tensor, experts=None, shared: bool = True) -> torch.Tensor:
        """The combiner's accumulator ``Σ g·o`` [T, d_model] (int64, before requantisation) over
        the contributions of the routed experts in `experts` (None: all) that the tokens chose,
        plus the shared expert's if `shared` (and the layer has one). Routing is unchanged: a
        token's top-k are the same whichever experts are counted.

        Sums over a partition of the experts (the shared one in exactly one part) add up to
        ``partial_int(x)``, and ``forward_int(x) = rq_8(partial_int(x), M_y, S_y)``: what a
        device with an expert mask accumulates (``READ_PARTIAL``), and what a host serving one
        layer from several devices adds before it requantises once.

        Raises
        ------
        ShapeError
            If `x_int8` is not an int8 tensor [T, d_model].
        ValueError
            If `experts` names an expert outside ``0 .. n_experts-1``.
        """
        x = self._check_int_input(x_int8)
        keep = None
        if experts is not None:
            keep = {int(e) for e in experts}
            bad = sorted(e for e in keep if not 0 <= e < self.cfg.n_experts)
            if bad:
                raise ValueError(f"experts must be in 0..{self.cfg.n_experts - 1}, not {bad}")
        route = self._route(x)
        T = x.shape[0]
        acc = torch.zeros(T, self.cfg.d_model, dtype=torch.int64)
        for e in torch.unique(route.indices).tolist():   # expert-major, as the device schedules
            if keep is not None and e not in keep:
                continue
            tok, slot = torch.nonzero(route.indices == e, as_tuple=True)
            o = self.experts.forward(e, x[tok])
            acc.index_add_(0, tok, route.gates[tok, slot, None] * o)
        if self.shared is not None and shared:
            acc += route.shared_gate[:, None] * self.shared.forward(0, x)
        return acc

    def forward_int(self, x_int8: torch.Tensor) -> torch.Tensor:
        """int8 tokens [T, d_model] → int8 outputs [T, d_model], exactly as the device computes:
        ``rq_8(partial_int(x), M_y, S_y)``."""
        return requantize(self.partial_int(x_int8), self.out_mult, self.out_shift, 8).to(torch.int8)

    # --- float convenience ----------------------------------------------
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float tokens → the device's int8 tokens (round half to even, saturated).

        Raises
        ------
        ShapeError
            An element is NaN or ±Inf: saturation would turn it into 0 or ±127 without a
            word, so the first such element is named (token index, element index) instead.
        """
        if torch.is_floating_point(x):
            bad = ~torch.isfinite(x)
            if bad.any():
                raise ShapeError(_first_non_finite(x, bad))
        return quantize_symmetric(x, self.x_scale).to(torch.int8)

    def dequantize_output(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(torch.float32) * self.y_scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float tokens [..., d_model] → quantise → forward_int → dequantise."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise ShapeError("the layer takes a float tensor; use forward_int for int8 tokens")
        if x.shape[-1] != self.cfg.d_model:
            raise ShapeError(f"input shape {list(x.shape)} does not end in d_model={self.cfg.d_model}")
        x_int = self.quantize_input(x)    # before flattening: a bad element is named by the caller's index
        y = self.dequantize_output(self.forward_int(x_int.reshape(-1, self.cfg.d_model)))
        return y.reshape(x.shape)

    # --- weight image ---------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every integer tensor of the layer by name: the device's weight image."""
        t = {"router.weight": self.router_weight,
             "router.mult": torch.tensor(self.router_mult, dtype=torch.int32),
             "router.shift": torch.tensor(self.router_shift, dtype=torch.int32),
             "combiner.mult": torch.tensor(self.out_mult, dtype=torch.int32),
             "combiner.shift": torch.tensor(self.out_shift, dtype=torch.int32)}
        if self.selection_bias is not None:
            t["router.selection_bias"] = self.selection_bias
        t.update(self.experts.tensors("experts"))
        if self.shared is not None:
            t.update(self.shared.tensors("shared"))
        return t

    def save(self, path: str | Path) -> None:
        from .weight_image import save_layer
        save_layer(self, path)

    @classmethod
    def load(cls, path: str | Path, cfg: AccelConfig | None = None) -> "QuantizedMoELayer":
        from .weight_image import load_layer
        return load_layer(path, cfg)
