"""Float weights + calibration tokens → the integer parameters of `QuantizedMoELayer`.

Weights: symmetric per output channel, int8 (max-abs scale) or int4 (`weight_bits = 4`, the
least-squared-error clip per row); router: one scale, `router_bits`.
Activations: symmetric per tensor, scales chosen on the calibration tokens
(MSE-optimal clipping for int8 tensors, max-abs with margin for int16 ones).
Input: optionally smoothed per channel (SmoothQuant, `input_smoothing`), then int16 for the
router with the experts' int8 derived by a shift (`input_bits = 16`), or int8 for both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moeforge.config import AccelConfig
from moeforge.errors import ShapeError
from moeforge.spec.arith import (GATE_FRAC, HIDDEN_BITS, LOGIT_FRAC, OUT_BITS, SILU_FRAC, UP_BITS, WEIGHT_BITS,
                                 X_BITS, X_SHIFT_MAX, X_SHIFT_MIN, X_WIDE_BITS, Y_BITS)

from .calibration import maxabs_scale, mse_scale, per_channel_mse_scale, per_channel_weight_scale
from .expert_bank import ExpertBank
from .fixed_point import fwht_blocks, multiplier_shift, narrow_input, quantize_symmetric
from .reference import FloatMoELayer
from .weights import FloatMoEWeights

__all__ = ["quantize_layer"]

# int16 tensors keep a 2x margin over their calibration maximum: 14 bits still resolve.
INT16_MARGIN = 2.0


def _q_weight(w: torch.Tensor, bits: int = WEIGHT_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """An expert matrix as int8 values of `bits` bits (4 or 8), one scale per output row."""
    scale = per_channel_weight_scale(w, bits) if bits == WEIGHT_BITS else per_channel_mse_scale(w, bits)
    q = quantize_symmetric(w, scale[..., None], bits)
    return q.to(torch.int8), scale


def _encode(real: torch.Tensor | float, what: str):
    try:
        m, s = multiplier_shift(real)
    except ValueError as exc:
        raise ShapeError(f"cannot quantise {what}: {exc}") from None
    return m.to(torch.int32), s.to(torch.int32)


def _stack(pairs):
    return torch.stack([m for m, _ in pairs]), torch.stack([s for _, s in pairs])


def _rotate(v: torch.Tensor, block: int) -> torch.Tensor:
    """Orthonormal block Walsh-Hadamard rotation of the last dim (float, host side)."""
    return fwht_blocks(v, block) / block ** 0.5


# A channel whose calibration maximum (or weight maximum) is 0 smooths as if it were this small.
SMOOTH_FLOOR = 1e-6


def smoothing_factors(w: FloatMoEWeights, calib: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-channel factors ``s_c = max|x_c|^alpha / max|W_c|^(1-alpha)`` [D]
    (all ones for alpha 0), ``W_c`` every weight that reads input channel ``c``: the router
    rows and the first layer of every routed and shared expert."""
    D = calib.shape[1]
    if alpha == 0:
        return torch.ones(D)
    first = [w.router, w.w_up.reshape(-1, D)]
    first += [t.reshape(-1, D) for t in (w.w_gate, w.shared_up, w.shared_gate_proj) if t is not None]
    if w.shared_expert_gate is not None:
        first.append(w.shared_expert_gate[None])
    w_max = torch.cat(first).abs().amax(dim=0).to(torch.float64).clamp_min(SMOOTH_FLOOR)
    x_max = calib.abs().amax(dim=0).to(torch.float64).clamp_min(SMOOTH_FLOOR)
    return (x_max ** alpha / w_max ** (1 - alpha)).to(torch.float32)


def _smoothed(w: FloatMoEWeights, s: torch.Tensor) -> FloatMoEWeights:
    """`w` with every weight that reads the input scaled by `s` per input channel: ``W·diag(s)``
    on ``x / s`` is ``W`` on ``x``."""
    out = w.float()
    for name in ("router", "w_up", "w_gate", "shared_up", "shared_gate_proj", "shared_expert_gate"):
        t = getattr(out, name)
        if t is not None:
            setattr(out, name, t * s)
    return out


def input_shift(x_scale8: float, calib_max: float) -> int:
    """S_x for a wide input: the largest shift whose int16 range, ``2^S_x`` steps per int8 step
    of `x_scale8`, still covers `INT16_MARGIN` times the calibration maximum (within
    ``X_SHIFT_MIN .. X_SHIFT_MAX``)."""
    room = ((1 << (X_WIDE_BITS - 1)) - 1) * x_scale8 / (INT16_MARGIN * calib_max) if calib_max else 0
    shift = math.floor(math.log2(room)) if room >= 1 else X_SHIFT_MIN
    return max(X_SHIFT_MIN, min(X_SHIFT_MAX, shift))


def _bank(w_gate, w_up, w_down, activation: str, rotation: int, x_hat: torch.Tensor, x_scale: float,
          bits: int):
    """Quantise n experts; returns the bank fields (down requant still unset) and float outputs for s_o.

    The hidden vector p is rotated, h = H·p/√R, before its int8 quantisation, and the
    down projection is rotated to match, W' = W·H/√R, so W'·h = W·p: the rotation spreads
    SwiGLU's heavy-tailed products over R values and halves the int8 error of h.
    """
    up_q, up_s = _q_weight(w_up, bits)
    w_down_rot = _rotate(w_down, rotation)
    down_q, down_s = _q_weight(w_down_rot, bits)
    up_enc, hid_enc, hid_scales, outs = [], [], [], []
    for e in range(w_up.shape[0]):
        u = x_hat @ w_up[e].T
        s_u = maxabs_scale(F.relu(u) if activation == "relu" else u, UP_BITS, INT16_MARGIN)
        up_enc.append(_encode(x_scale * up_s[e] / s_u, f"expert {e} up"))
        if activation == "relu":
            p, unit = F.relu(u), s_u
        else:
            p, unit = F.silu(x_hat @ w_gate[e].T) * u, 2.0 ** -SILU_FRAC * s_u
        h = _rotate(p, rotation)
        s_h = mse_scale(h, HIDDEN_BITS)
        hid_enc.append(_encode(unit / (rotation ** 0.5 * s_h), f"expert {e} hidden"))
        hid_scales.append(s_h)
        h_hat = torch.clamp(torch.round(h / s_h), -(1 << (HIDDEN_BITS - 1)), (1 << (HIDDEN_BITS - 1)) - 1) * s_h
        outs.append(h_hat @ w_down_rot[e].T)
    bank = dict(w_up=up_q, w_down=down_q, rotation=rotation)
    bank["up_mult"], bank["up_shift"] = _stack(up_enc)
    bank["hid_mult"], bank["hid_shift"] = _stack(hid_enc)
    if activation == "swiglu":
        gate_q, gate_s = _q_weight(w_gate, bits)
        bank["w_gate"] = gate_q
        bank["gate_mult"], bank["gate_shift"] = _encode(x_scale * gate_s * 2.0 ** SILU_FRAC, "gate projection")
    return bank, torch.tensor(hid_scales, dtype=torch.float64), down_s, torch.stack(outs)


def _finish_bank(bank: dict, hid_scales, down_s, o_scale: float, activation: str) -> ExpertBank:
    bank["down_mult"], bank["down_shift"] = _encode(hid_scales[:, None] * down_s / o_scale, "down projection")
    return ExpertBank(activation=activation, **bank)


def quantize_layer(weights: FloatMoEWeights, cfg: AccelConfig, calib: torch.Tensor) -> dict:
    """Quantise `weights` for `cfg`, calibrated on the float tokens `calib` [N, d_model].

    Returns the layer's parts, `QuantizedMoELayer`'s keyword arguments after `cfg`
    (``QuantizedMoELayer.from_float`` builds the layer from them).

    Raises
    ------
    ShapeError
        If `calib` is not a float tensor [N > 0, d_model], or a scale cannot be encoded.
    """
    w_raw = weights.float().check(cfg)
    if not isinstance(calib, torch.Tensor) or not torch.is_floating_point(calib):
        raise ShapeError("calib must be a float tensor of tokens [N, d_model]")
    calib = calib.detach().to(torch.float32).reshape(-1, calib.shape[-1])
    if calib.shape[1] != cfg.d_model or calib.shape[0] == 0:
        raise ShapeError(f"calib shape {list(calib.shape)} is not [N > 0, d_model={cfg.d_model}]")

    if not torch.isfinite(calib).all():
        raise ShapeError("calib holds NaN or ±Inf: calibration takes finite tokens")

    # Smoothing: the device sees x / s and weights W·diag(s) (host side, once).
    x_smooth = smoothing_factors(w_raw, calib, cfg.input_smoothing)
    w = _smoothed(w_raw, x_smooth)
    calib = calib / x_smooth

    # The experts' int8 scale; a wide input token is 2^S_x finer, and the experts take
    # sat_8(rshift(x_in, S_x)) of it, exactly what the device derives.
    x_scale8 = mse_scale(calib, X_BITS)
    x_shift = input_shift(x_scale8, calib.abs().max().item()) if cfg.input_bits == X_WIDE_BITS else 0
    x_scale = x_scale8 / 2 ** x_shift
    x8 = narrow_input(quantize_symmetric(calib, x_scale, cfg.input_bits), x_shift)
    x_hat = (x8.to(torch.float64) * x_scale8).to(torch.float32)

    # Router: one scale over every row, so logits of all experts share a fixed point.
    rows = w.router if w.shared_expert_gate is None else torch.cat([w.router, w.shared_expert_gate[None]])
    qmax = (1 << (cfg.router_bits - 1)) - 1
    r_scale = rows.abs().max().item() / qmax or 1.0
    router_weight = quantize_symmetric(rows, r_scale, cfg.router_bits).to(torch.int16)
    router_mult, router_shift = _encode(x_scale * r_scale * 2.0 ** LOGIT_FRAC, "router logits")
    sel_bias = None
    if cfg.selection_bias:
        sel_bias = torch.round(w.selection_bias.to(torch.float64) * 2 ** GATE_FRAC).to(torch.int32)

    R = cfg.rotation_block
    bank, hid_s, down_s, outs = _bank(w.w_gate, w.w_up, w.w_down, cfg.activation, R, x_hat, x_scale8,
                                      cfg.weight_bits)
    sh = None
    if cfg.shared_d_ff:
        sh_gate = None if w.shared_gate_proj is None else w.shared_gate_proj[None]
        sh, sh_hid_s, sh_down_s, sh_outs = _bank(sh_gate, w.shared_up[None], w.shared_down[None],
                                                 cfg.activation, R, x_hat, x_scale8, cfg.weight_bits)
        outs = torch.cat([outs, sh_outs])
    o_scale = maxabs_scale(outs, OUT_BITS, INT16_MARGIN)
    experts = _finish_bank(bank, hid_s, down_s, o_scale, cfg.activation)
    shared = _finish_bank(sh, sh_hid_s, sh_down_s, o_scale, cfg.activation) if sh is not None else None

    y_ref = FloatMoELayer(cfg, w).forward(x_hat)
    y_scale = mse_scale(y_ref, Y_BITS)
    out_mult, out_shift = _encode(o_scale * 2.0 ** -GATE_FRAC / y_scale, "combiner output")

    return dict(router_weight=router_weight, router_mult=router_mult, router_shift=router_shift,
                selection_bias=sel_bias, experts=experts, shared=shared, out_mult=out_mult, out_shift=out_shift,
                x_scale=x_scale, y_scale=y_scale, o_scale=o_scale, x_shift=x_shift, x_smooth=x_smooth)
