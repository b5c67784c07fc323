"""The device's integer arithmetic as numbers: the widths and fixed-point formats of
docs/arithmetic.md.

The golden model (`moeforge.hls_models`) and the RTL (`moeforge.rtl`) both read these; neither
declares one of them again, so a change of format is made here once and both sides follow.
Plain Python: no torch, no Amaranth, nothing of the project.
"""

from __future__ import annotations

__all__ = [
    "X_BITS", "X_WIDE_BITS", "X_SHIFT_MIN", "X_SHIFT_MAX", "X_SHIFT_BITS",
    "WEIGHT_BITS", "WEIGHT_PACKED_BITS", "PROD_BITS", "ACC_BITS", "UP_BITS", "HIDDEN_BITS", "OUT_BITS", "Y_BITS",
    "MULT_BITS", "SHIFT_BITS", "SHIFT_MIN", "SHIFT_MAX",
    "ROUTER_BITS_MIN", "ROUTER_BITS_MAX", "LOGIT_BITS", "LOGIT_FRAC", "GATE_FRAC", "GATE_ONE", "RSF_FRAC", "RSF_FACTOR_MAX", "RSF_MAX",
    "GATE_BITS", "SHARED_GATE_BITS", "SIG_BITS", "QUO_BITS", "BIAS_BITS",
    "SILU_FRAC", "SILU_BITS",
    "EXP_ARG_SHIFT", "EXP_HI_SHIFT", "EXP_HI_SIZE", "EXP_LO_SIZE", "EXP_A_LIMIT", "EXP_D_MAX",
    "EXP_ROM_BITS", "SIG_STEP_SHIFT", "SIG_SIZE", "SIG_LIMIT",
]

# --- tensors (§2, §4, §5) ---------------------------------------------------------------
X_BITS = 8             # the experts' input tokens x: int8
X_WIDE_BITS = 16       # the wide input token x_in (`input_bits = 16`): the router reads it whole,
                       # the experts take x = sat_8(rshift(x_in, S_x)) derived on the device
X_SHIFT_MIN = 1        # S_x, with a wide input: rshift needs s >= 1 ...
X_SHIFT_MAX = 8        # ... and past 8 the int16 range would be narrower than the int8 one
X_SHIFT_BITS = 4       # S_x as stored (SET_SCALE's third byte)
WEIGHT_BITS = 8        # expert weights as the MAC array takes them: int8 lanes, a scale per output channel
WEIGHT_PACKED_BITS = 4 # `weight_bits = 4`: int4 weights, two to an image byte, sign-extended
                       # into the int8 lanes as the engine loads them
PROD_BITS = X_BITS + WEIGHT_BITS   # one int8 · int8 product fits signed 16 bits (-128 · -128 = 16384)
ACC_BITS = 32          # GEMM accumulators: int32 (|acc| <= 127 · 128 · d_model < 2^31)
UP_BITS = 16           # SwiGLU up projection u / ReLU activation: int16 at a per-expert scale
HIDDEN_BITS = 8        # the hidden activation h entering the down projection
OUT_BITS = 16          # each expert's output o: int16 at the layer-wide scale s_o
Y_BITS = 8             # the device's output y: int8

# --- the requantiser rq_b(acc, M, S) (§1) ------------------------------------------------
MULT_BITS = 16         # M: unsigned 16-bit, normalised to [2^15, 2^16)
SHIFT_BITS = 6         # S as stored: 6 bits
SHIFT_MIN = 1          # rshift needs s >= 1 ...
SHIFT_MAX = 62         # ... and a multiplier that would need more encodes as M = 0

# --- router (§2, §3) ---------------------------------------------------------------------
ROUTER_BITS_MIN = 8    # router weights: int8 ...
ROUTER_BITS_MAX = 16   # ... to int16 (`router_bits`), one scale for the whole matrix
LOGIT_BITS = 32        # logits L: int32 ...
LOGIT_FRAC = 16        # ... in units 2^-16: near-ties finer than that are the only ones the
                       # integer router can order differently from the float one
GATE_FRAC = 15         # gate weights, EXP and SIG values: unsigned Q1.15
GATE_ONE = 1 << GATE_FRAC
RSF_FRAC = 12          # routed scaling factor: unsigned Q.12 ...
RSF_FACTOR_MAX = 64    # ... for a factor of at most 64
RSF_MAX = RSF_FACTOR_MAX << RSF_FRAC
GATE_BITS = (GATE_ONE * RSF_FACTOR_MAX).bit_length()   # 22: routed gates after scaling, <= 2^21
SHARED_GATE_BITS = GATE_FRAC + 1   # 16: the shared-expert gate, <= 2^15
SIG_BITS = GATE_FRAC + 1           # 16: SIG and EXP values, <= 2^15
QUO_BITS = GATE_FRAC + 1           # 16: div15 quotients, <= 2^15 (numerator <= denominator)
BIAS_BITS = 32         # selection bias b_q: int32, Q1.15

# exp(-d) for d >= 0 in units 2^-LOGIT_FRAC: the argument is rounded to 2^-12 steps, then two
# tables, coarse (step 1/32) and fine (step 1/4096).
EXP_ARG_SHIFT = LOGIT_FRAC - 12    # 4: a = rshift(d, 4) is the argument in units 2^-12
EXP_HI_SHIFT = 7                   # a >> 7 indexes the coarse table (1/32 steps)
EXP_LO_SIZE = 1 << EXP_HI_SHIFT    # 128 entries, step 1/4096
EXP_HI_SIZE = 512                  # covers d < 16.0
EXP_A_LIMIT = EXP_HI_SIZE << EXP_HI_SHIFT   # 65536: from this a on, EXP = 0
EXP_D_MAX = (EXP_A_LIMIT << EXP_ARG_SHIFT) - (1 << (EXP_ARG_SHIFT - 1))   # from this d on, EXP = 0
EXP_ROM_BITS = GATE_FRAC + 1       # 16: every table entry is at most 2^15

# --- SwiGLU (§4) -------------------------------------------------------------------------
SILU_FRAC = 12         # gate pre-activation g: signed, units 2^-12 ...
SILU_BITS = 24         # ... saturated to int24 (±2048)
SIG_STEP_SHIFT = SILU_FRAC - 6     # the sigmoid LUT steps by 1/64: index g >> 6
SIG_SIZE = 1024                    # over [-8, 8)
SIG_LIMIT = (SIG_SIZE // 2) << SIG_STEP_SHIFT   # 8.0 in units 2^-12: at or above, σ = 2^15
