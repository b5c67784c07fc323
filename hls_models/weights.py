"""`FloatMoEWeights`: the float weights of one MoE layer, in one layout for every family.

Importers (from `transformers` blocks) produce it; the float reference and the
quantiser consume it. Layout follows `torch.nn.functional.linear`: [out, in].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ShapeError

__all__ = ["FloatMoEWeights"]


@dataclass
class FloatMoEWeights:
    """Float weights; `None` where the family has no such tensor.

    router         [E, D]     gating GEMV
    selection_bias [E]        DeepSeek-V3 `e_score_correction_bias` (sigmoid routing)
    w_gate         [E, F, D]  SwiGLU gate projection (None for ReLU experts)
    w_up           [E, F, D]  SwiGLU up projection, or the ReLU FFN's `wi`
    w_down         [E, D, F]  down projection, or the ReLU FFN's `wo`
    shared_gate_proj / shared_up / shared_down  [Fs, D], [Fs, D], [D, Fs]; the shared
                              expert has the routed experts' activation (no gate_proj for ReLU)
    shared_expert_gate [D]    Qwen2's sigmoid gate on the shared expert
    """

    router: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor
    w_gate: torch.Tensor | None = None
    selection_bias: torch.Tensor | None = None
    shared_gate_proj: torch.Tensor | None = None
    shared_up: torch.Tensor | None = None
    shared_down: torch.Tensor | None = None
    shared_expert_gate: torch.Tensor | None = None

    def check(self, cfg: AccelConfig) -> "FloatMoEWeights":
        """Raise `ShapeError` naming the first tensor whose shape disagrees with `cfg`."""
        E, D, F, Fs = cfg.n_experts, cfg.d_model, cfg.d_ff, cfg.shared_d_ff
        want = {
            "router": (E, D),
            "w_up": (E, F, D),
            "w_down": (E, D, F),
            "w_gate": (E, F, D) if cfg.activation == "swiglu" else None,
            "selection_bias": (E,) if cfg.selection_bias else None,
            "shared_gate_proj": (Fs, D) if Fs and cfg.activation == "swiglu" else None,
            "shared_up": (Fs, D) if Fs else None,
            "shared_down": (D, Fs) if Fs else None,
            "shared_expert_gate": (D,) if cfg.shared_gate == "sigmoid" else None,
        }
        for name, shape in want.items():
            t = getattr(self, name)
            if shape is None:
                if t is not None:
                    raise ShapeError(f"{name}: the config has no such tensor "
                                     f"(activation={cfg.activation}, shared_d_ff={Fs}, "
                                     f"shared_gate={cfg.shared_gate}, selection_bias={cfg.selection_bias})")
                continue
            if t is None:
                raise ShapeError(f"{name}: missing; the config needs shape {list(shape)}")
            if tuple(t.shape) != shape:
                raise ShapeError(f"{name}: shape {list(t.shape)} does not match the config's {list(shape)}")
            if not torch.is_floating_point(t):
                raise ShapeError(f"{name}: must be a float tensor, not {t.dtype}")
        return self

    def float(self) -> "FloatMoEWeights":
        """A float32 copy, detached from autograd."""
        return FloatMoEWeights(**{k: (None if v is None else v.detach().to(torch.float32).clone())
                                  for k, v in self.__dict__.items()})
