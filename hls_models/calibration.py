"""Choosing quantisation scales from calibration data.

Scales are floats used only on the host side (to quantise inputs, dequantise outputs
and derive the integer multipliers); the device never sees a float.
"""

from __future__ import annotations

import torch

__all__ = ["mse_scale", "maxabs_scale", "per_channel_weight_scale", "per_channel_mse_scale"]

_MAX_SAMPLES = 1 << 20


def _sample(v: torch.Tensor) -> torch.Tensor:
    v = v.detach().reshape(-1).to(torch.float64)
    if v.numel() > _MAX_SAMPLES:  # deterministic stride sample keeps calibration fast
        v = v[:: v.numel() // _MAX_SAMPLES + 1]
    return v


def maxabs_scale(v: torch.Tensor, bits: int, margin: float = 1.0) -> float:
    """Scale that maps margin·max|v| to the largest code: no clipping on calibration data."""
    m = _sample(v).abs().max().item() if v.numel() else 0.0
    return (m * margin or 1.0) / ((1 << (bits - 1)) - 1)


def mse_scale(v: torch.Tensor, bits: int = 8, steps: int = 96) -> float:
    """Scale whose symmetric quantisation of `v` has the least mean squared error.

    Clipping a few outliers buys a finer step for everything else; for roughly
    Gaussian activations the optimum clips near 3σ instead of at the maximum. Clips
    are searched on a geometric grid from max/50 to max, since one extreme outlier
    can put the optimum far below the maximum.
    """
    s = _sample(v)
    m = s.abs().max().item() if s.numel() else 0.0
    if m == 0.0:
        return 1.0
    qmax = (1 << (bits - 1)) - 1
    best, best_err = m / qmax, None
    for i in range(steps):
        scale = m * 0.02 ** (1 - (i + 1) / steps) / qmax
        q = torch.clamp(torch.round(s / scale), -qmax - 1, qmax) * scale
        err = torch.mean((q - s) ** 2).item()
        if best_err is None or err < best_err:
            best, best_err = scale, err
    return best


def per_channel_weight_scale(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """max|w| of each output row (last dim is the input) over the largest code; 1.0 for all-zero rows."""
    m = w.detach().to(torch.float64).abs().amax(dim=-1)
    return torch.where(m > 0, m, 1.0) / ((1 << (bits - 1)) - 1)


def per_channel_mse_scale(w: torch.Tensor, bits: int, steps: int = 40) -> torch.Tensor:
    """Per output row, the scale whose symmetric quantisation of the row has the least squared
    error, clips searched from max|w| down to 0.3·max|w| (1.0 for all-zero rows).

    At int4 the max-abs scale spends most of the 16 codes on the tails: clipping instead lowers a
    Gaussian 512 × 256 matrix's relative error from 12.6% to 10.5%.
    """
    w = w.detach().to(torch.float64)
    m = w.abs().amax(dim=-1)
    top = torch.where(m > 0, m, 1.0)
    qmax = (1 << (bits - 1)) - 1
    best = top / qmax
    best_err = torch.full_like(m, float("inf"))
    for i in range(steps):
        scale = top * (1 - 0.7 * i / (steps - 1)) / qmax
        q = torch.clamp(torch.round(w / scale[..., None]), -qmax - 1, qmax) * scale[..., None]
        err = ((q - w) ** 2).sum(dim=-1)
        better = err < best_err
        best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return best
