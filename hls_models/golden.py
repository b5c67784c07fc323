"""`QuantizedMoELayer`: the bit-exact golden model of the accelerator (docs/arithmetic.md in code).

The RTL must reproduce `forward_int` bit for bit. All arithmetic is on int64 tensors; the
experts are `ExpertBank`s, whose GEMMs (`int_gemm`) are exact. The layer sits on top of the
quantiser (`quantize`), the weight image (`weight_image`) and the `transformers` import
(`hf_import`): they produce its parts, it is built from them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ShapeError

from moeforge.spec.arith import GATE_ONE, LOGIT_BITS, X_SHIFT_MAX, X_SHIFT_MIN, X_WIDE_BITS, Y_BITS

from .expert_bank import ExpertBank, int_gemm
from .fixed_point import narrow_input, quantize_symmetric, requantize, sigmoid_exact
from .hf_import import float_weights_from_hf
from .quantize import quantize_layer
from .routing import RouteResult, route_from_logits
from .weight_image import read_layer, save_layer

__all__ = ["QuantizedMoELayer", "ExpertBank"]


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


class QuantizedMoELayer:
    """One MoE layer in the device's integer arithmetic.

    Build it with `from_hf(block, cfg, calib=x)` or `from_float(weights, cfg, calib=x)`,
    or load a weight image with `load(path)`. `forward_int` is the specification the
    RTL is checked against; calling the layer on floats quantises, runs it, dequantises.
    """

    def __init__(self, cfg: AccelConfig, *, router_weight, router_mult, router_shift, selection_bias,
                 experts: ExpertBank, shared: ExpertBank | None, out_mult, out_shift,
                 x_scale: float, y_scale: float, o_scale: float, x_shift: int = 0,
                 x_smooth: torch.Tensor | None = None):
        self.cfg = cfg
        self.router_weight = router_weight      # [R, D] int16: E experts (+ Qwen2 shared gate row)
        self.router_mult = int(router_mult)     # acc → logit in units 2^-16
        self.router_shift = int(router_shift)
        self.selection_bias = selection_bias    # [E] int32 Q1.15 or None
        self.experts = experts
        self.shared = shared
        self.out_mult = int(out_mult)           # Σ gate·o → int8 y
        self.out_shift = int(out_shift)
        self.x_scale = float(x_scale)           # the device's input tokens (int16 or int8)
        self.x_shift = int(x_shift)             # S_x: wide token → the experts' int8 (0: int8 input)
        wide = cfg.input_bits == X_WIDE_BITS
        if (wide and not X_SHIFT_MIN <= self.x_shift <= X_SHIFT_MAX) or (not wide and self.x_shift):
            raise ValueError(f"x_shift {self.x_shift} does not suit input_bits={cfg.input_bits} "
                             f"({X_SHIFT_MIN}..{X_SHIFT_MAX} with 16, 0 with 8)")
        # host side only: the float token is divided by it per channel before quantisation
        self.x_smooth = (torch.ones(cfg.d_model) if x_smooth is None
                         else x_smooth.detach().to(torch.float32).reshape(cfg.d_model))
        self.y_scale = float(y_scale)
        self.o_scale = float(o_scale)

    # --- construction ---------------------------------------------------
    @classmethod
    def from_float(cls, weights, cfg: AccelConfig, *, calib: torch.Tensor) -> "QuantizedMoELayer":
        """Quantise float weights (`FloatMoEWeights`) for `cfg`, calibrated on the tokens `calib`."""
        return cls(cfg, **quantize_layer(weights, cfg, calib))

    @classmethod
    def from_hf(cls, block, cfg: AccelConfig, *, calib: torch.Tensor) -> "QuantizedMoELayer":
        """Import a `transformers` MoE block (fused or per-expert layout) and calibrate on `calib`."""
        return cls.from_float(float_weights_from_hf(block, cfg), cfg, calib=calib)

    # --- integer path ---------------------------------------------------
    @property
    def input_dtype(self) -> torch.dtype:
        """The device's input tokens: int16 with ``input_bits = 16``, else int8."""
        return torch.int16 if self.cfg.input_bits == X_WIDE_BITS else torch.int8

    def _check_int_input(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.input_dtype
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"input must be a torch.Tensor, not {type(x).__name__}")
        if x.dtype != dtype:
            raise ShapeError(f"the device takes {dtype} tokens (input_bits={self.cfg.input_bits}), "
                             f"not {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.cfg.d_model:
            raise ShapeError(f"input shape {list(x.shape)} is not [tokens, d_model={self.cfg.d_model}]")
        return x.to(torch.int64)

    def _narrow(self, x: torch.Tensor) -> torch.Tensor:
        """The experts' int8 tokens (int64 values) from the device's input tokens (int64 values)."""
        return narrow_input(x, self.x_shift)

    def expert_input(self, x_in: torch.Tensor) -> torch.Tensor:
        """The int8 tokens the experts take from the device's input tokens: with a wide input
        ``sat_8(rshift(x_in, S_x))`` (docs/arithmetic.md §2), else the tokens themselves."""
        return self._narrow(self._check_int_input(x_in)).to(torch.int8)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every router row [T, R], int32 range, units 2^-16, of the input tokens."""
        acc = int_gemm(x, self.router_weight)
        return requantize(acc, self.router_mult, self.router_shift, LOGIT_BITS)

    def route_int(self, x_in: torch.Tensor) -> RouteResult:
        """The router's result for the device's input tokens (`input_dtype`)."""
        x = self._check_int_input(x_in)
        return self._route(x)

    def _route(self, x: torch.Tensor) -> RouteResult:
        cfg = self.cfg
        logits = self.router_logits(x)
        routed = logits[:, :cfg.n_experts]
        bias = self.selection_bias.to(torch.int64) if self.selection_bias is not None else None
        indices, gates, kept = route_from_logits(routed, cfg, bias)
        T = x.shape[0]
        if cfg.shared_gate == "sigmoid":
            shared_gate = sigmoid_exact(logits[:, cfg.n_experts])
        elif cfg.shared_d_ff:
            shared_gate = torch.full((T,), GATE_ONE, dtype=torch.int64)
        else:
            shared_gate = torch.zeros(T, dtype=torch.int64)
        return RouteResult(routed, indices, gates, shared_gate, kept)

    def expert_int(self, e: int, x_int8: torch.Tensor) -> torch.Tensor:
        """int16 output of routed expert e for every given expert token (`expert_input`'s int8;
        used by unit-level checks)."""
        return self.experts.forward(e, self._check_int_input(x_int8, torch.int8))

    def partial_int(self, x_in: torch.Tensor, experts=None, shared: bool = True) -> torch.Tensor:
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
            If `x_in` is not a tensor [T, d_model] of `input_dtype`.
        ValueError
            If `experts` names an expert outside ``0 .. n_experts-1``.
        """
        x = self._check_int_input(x_in)
        keep = None
        if experts is not None:
            keep = {int(e) for e in experts}
            bad = sorted(e for e in keep if not 0 <= e < self.cfg.n_experts)
            if bad:
                raise ValueError(f"experts must be in 0..{self.cfg.n_experts - 1}, not {bad}")
        route = self._route(x)
        x = self._narrow(x)                      # the experts take int8
        T = x.shape[0]
        acc = torch.zeros(T, self.cfg.d_model, dtype=torch.int64)
        for e in route.experts_run():             # expert-major, as the device schedules
            if keep is not None and e not in keep:
                continue
            tok, slot = torch.nonzero((route.indices == e) & route.kept, as_tuple=True)
            o = self.experts.forward(e, x[tok])
            acc.index_add_(0, tok, route.gates[tok, slot, None] * o)
        if self.shared is not None and shared:
            acc += route.shared_gate[:, None] * self.shared.forward(0, x)
        return acc

    def forward_int(self, x_in: torch.Tensor) -> torch.Tensor:
        """The device's input tokens [T, d_model] (`input_dtype`: int16 with ``input_bits = 16``,
        else int8) → int8 outputs [T, d_model], exactly as the device computes:
        ``rq_8(partial_int(x), M_y, S_y)``."""
        return requantize(self.partial_int(x_in), self.out_mult, self.out_shift, Y_BITS).to(torch.int8)

    # --- float convenience ----------------------------------------------
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float tokens → the device's input tokens (`input_dtype`): each channel divided by
        its smoothing factor, then round half to even at `x_scale`, saturated.

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
        return quantize_symmetric(x / self.x_smooth, self.x_scale, self.cfg.input_bits).to(self.input_dtype)

    def dequantize_input(self, x_in: torch.Tensor) -> torch.Tensor:
        """The float tokens the device's input tokens stand for (smoothing undone)."""
        return x_in.to(torch.float32) * self.x_scale * self.x_smooth

    def dequantize_output(self, y: torch.Tensor) -> torch.Tensor:
        return y.to(torch.float32) * self.y_scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float tokens [..., d_model] → quantise → forward_int → dequantise."""
        if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
            raise ShapeError("the layer takes a float tensor; use forward_int for the device's integer tokens")
        if x.shape[-1] != self.cfg.d_model:
            raise ShapeError(f"input shape {list(x.shape)} does not end in d_model={self.cfg.d_model}")
        x_int = self.quantize_input(x)    # before flattening: a bad element is named by the caller's index
        y = self.dequantize_output(self.forward_int(x_int.reshape(-1, self.cfg.d_model)))
        return y.reshape(x.shape)

    # --- weight image ---------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the layer by name: the device's weight image (integers) and the
        host's input smoothing (``input.smooth``, float, never sent to the device)."""
        t = {"router.weight": self.router_weight,
             "router.mult": torch.tensor(self.router_mult, dtype=torch.int32),
             "router.shift": torch.tensor(self.router_shift, dtype=torch.int32),
             "combiner.mult": torch.tensor(self.out_mult, dtype=torch.int32),
             "combiner.shift": torch.tensor(self.out_shift, dtype=torch.int32),
             "input.shift": torch.tensor(self.x_shift, dtype=torch.int32),
             "input.smooth": self.x_smooth}
        if self.selection_bias is not None:
            t["router.selection_bias"] = self.selection_bias
        t.update(self.experts.tensors("experts"))
        if self.shared is not None:
            t.update(self.shared.tensors("shared"))
        return t

    def save(self, path: str | Path) -> None:
        """Write the layer's weight image to `path` (`weight_image.save_layer`)."""
        save_layer(self, path)

    @classmethod
    def load(cls, path: str | Path, cfg: AccelConfig | None = None) -> "QuantizedMoELayer":
        """Load a weight image; with `cfg`, refuse one made for a different config
        (`weight_image.read_layer`)."""
        file_cfg, parts = read_layer(path, cfg)
        return cls(file_cfg, **parts)
