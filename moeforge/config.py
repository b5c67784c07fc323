"""`AccelConfig`: the one description of an MoE-layer accelerator.

Everything else — the golden model, the RTL parameters, the host runtime's device
check — derives from this frozen dataclass, so a value lives in exactly one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path

from .checks import choice_problem, int_problem
from .errors import ConfigError
from .spec.arith import (GATE_ONE, RSF_FACTOR_MAX, ROUTER_BITS_MAX, ROUTER_BITS_MIN, WEIGHT_BITS,
                         WEIGHT_PACKED_BITS, X_BITS, X_WIDE_BITS)

__all__ = ["AccelConfig", "SECTIONS", "DEVICE_FIELDS"]

ACTIVATIONS = ("relu", "swiglu")
ROUTINGS = ("softmax_topk", "topk_softmax", "sigmoid_topk")
GROUP_SCORES = ("max", "top2_sum")
SHARED_GATES = ("none", "sigmoid")
CACHE_POLICIES = ("lru", "lfu", "pinned")
INPUT_BITS_CHOICES = (X_BITS, X_WIDE_BITS)   # `input_bits`: the token on the wire
WEIGHT_BITS_CHOICES = (WEIGHT_PACKED_BITS, WEIGHT_BITS)   # `weight_bits`: int4 (packed) or int8 experts
FAMILIES = ("custom", "switch", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")

# TOML section of each field; also the order fields are written in.
SECTIONS = {
    "model": ("name", "family", "d_model", "d_ff", "n_experts", "top_k", "activation",
              "shared_d_ff", "shared_gate"),
    "routing": ("routing", "renormalize", "n_group", "topk_group", "group_score",
                "selection_bias", "routed_scaling_factor", "skip_threshold"),
    "precision": ("input_bits", "input_smoothing", "weight_bits", "act_bits", "router_bits", "hidden_rotation"),
    "hardware": ("mac_rows", "mac_cols", "cache_slots", "cache_policy", "pinned_experts",
                 "token_buffer_depth", "clock_mhz"),
}

# Fields a `transformers` config does not have: the device's own choices (precision, hardware,
# and expert skipping, a routing option of the device's), taken from kwargs by `from_hf`.
DEVICE_FIELDS = ("skip_threshold",) + SECTIONS["precision"] + SECTIONS["hardware"]

MAX_DIM = 1 << 16

# What the hardware generator can build in bounded time. Amaranth writes every word of every
# memory into the Verilog (a 4-Mbit memory takes 10-20 s to elaborate and convert), so each
# limit bounds the memories of one unit: with any of them at its maximum, a unit of
# `moeforge.rtl.units` converts to Verilog in about a minute at most (the 64 × 64 MAC array's
# own logic, not its memories, is then the largest part).
TOP_K_MAX = 64                 # the router's top-k selection logic grows with top_k × n_experts
EXPERT_BYTES_MAX = 1 << 18     # one expert's weights: the MAC array's weight buffer holds them all
LAYER_BYTES_MAX = 1 << 20      # every routed expert: the simulated device's backing memory
ROUTER_WEIGHTS_MAX = 1 << 17   # router_rows × d_model: the router's weight memory (16-bit words)
BUFFER_ELEMENTS_MAX = 1 << 16  # token_buffer_depth × the widest token: token, hidden, output and
                               # combiner buffers (the combiner's are 40-bit accumulators)
DISPATCH_ENTRIES_MAX = 1 << 16  # n_experts × token_buffer_depth: the dispatch table


def _check_int(name, value, lo, hi):
    problem = int_problem(value, lo, hi)
    if problem is not None:
        raise ConfigError(name, problem[1])


def _check_choice(name, value, choices):
    problem = choice_problem(value, choices)
    if problem is not None:
        raise ConfigError(name, problem)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, not {value!r}")


def _check_at_most(name, what, value, limit, why):
    if value > limit:
        raise ConfigError(name, f"{what} must be at most {limit} ({why}), not {value}")


@dataclass(frozen=True, kw_only=True)
class AccelConfig:
    """Model shape, routing, precision and hardware of one MoE-layer accelerator.

    Parameters (model)
    ------------------
    d_model, d_ff : hidden size and per-expert intermediate size.
    n_experts, top_k : routed experts and experts chosen per token.
    activation : ``relu`` (Switch FFN) or ``swiglu`` (gate, up, down).
    shared_d_ff : intermediate size of the always-computed shared expert MLP (0: none).
    shared_gate : ``none`` (DeepSeek, always on) or ``sigmoid`` (Qwen2's per-token gate).

    Parameters (routing)
    --------------------
    routing : ``softmax_topk`` (softmax over all experts, then top-k),
        ``topk_softmax`` (top-k of logits, softmax over the k) or ``sigmoid_topk``.
    renormalize : divide the k gate weights by their sum.
    n_group, topk_group : group-limited selection (1 group: none).
    group_score : a group's score, its best expert (``max``) or its best two summed.
    selection_bias : sigmoid routing adds a per-expert bias for selection only.
    routed_scaling_factor : multiplies routed gate weights.
    skip_threshold : expert skipping, in [0, 1) (0, the default: off). A selected expert
        other than the token's first choice whose gate (before routed scaling) is below it
        is dropped, and a family that normalises over the selected experts normalises over
        the kept ones (docs/arithmetic.md §3.7): a token runs 1 to ``top_k`` experts, and
        the device neither fetches nor computes an expert no token keeps. Needs ``top_k`` ≥ 2.

    Parameters (precision)
    ----------------------
    input_bits : the token the host sends, 16 (default) or 8. With 16 the router reads the
        int16 token whole and the experts take an int8 derived from it on the device
        (docs/arithmetic.md §2): routing then follows the float router on float input.
        8 is the int8-only input, router and experts on the same int8 token (fewer bytes on
        the wire, narrower router lanes).
    input_smoothing : SmoothQuant's migration strength alpha in [0, 1] (0.5, the default; 0: off):
        the host divides each input channel by ``s_c = max|x_c|^alpha / max|W_c|^(1-alpha)``
        and folds ``s_c`` into the router and first-layer expert weights, so outlier
        channels no longer set the int8 input scale. Host side only; the device is unchanged.
    weight_bits : expert weights (routed and shared), 8 (default) or 4. With 4 each weight
        is int4 at a scale per output channel, two to an image byte in the weight image, the
        backing memory and the cache (an expert image is about half the words); the engine
        sign-extends them into its int8 lanes as it loads them (docs/arithmetic.md §2).
    act_bits : activations (8).
    router_bits : router weight precision, 8 to 16 bits.
    hidden_rotation : block size of the Walsh-Hadamard rotation applied to each expert's
        hidden vector before it is quantised to int8 (spreads outliers; 1: none;
        0: automatic, the largest power of two up to 64 that divides the hidden sizes and
        fits the hidden unit's lanes, see `rotation_block`).

    Parameters (hardware)
    ---------------------
    mac_rows, mac_cols : the R×C int8 MAC array.
    cache_slots, cache_policy, pinned_experts : on-chip expert cache.
    token_buffer_depth : largest batch the device holds.
    clock_mhz : clock target.

    Notes
    -----
    A config is valid only if the hardware generator can build every unit of it, so
    ``moeforge config`` and every later command agree. Beyond each field's own range:

    - ``d_model`` is a multiple of ``mac_rows`` and ``mac_cols`` (MAC array, router and
      combiner lanes); SwiGLU needs an even ``mac_rows`` (gate and up rows in pairs);
    - ``d_ff`` and ``shared_d_ff`` are multiples of ``mac_cols`` and of the hidden unit's
      lanes (``mac_rows / 2`` for SwiGLU, ``mac_rows`` for ReLU); those lanes and
      ``mac_cols`` divide one another, and so do the lanes and the rotation block;
    - sizes that keep elaboration bounded (each unit's Verilog in about a minute at most):
      ``top_k`` ≤ 64; one expert's weights (``3·d_model·d_ff`` bytes for SwiGLU, ``2·`` for
      ReLU; the shared expert too) ≤ 256 KiB, the MAC array's weight buffer holds them;
      ``n_experts`` experts' weights ≤ 1 MiB, the simulated device's backing memory;
      ``router_rows·d_model`` ≤ 2^17 router weights; ``token_buffer_depth`` times the
      widest of ``d_model``, ``d_ff``, ``shared_d_ff`` ≤ 2^16 (token, hidden, output and
      accumulator buffers); ``n_experts·token_buffer_depth`` ≤ 2^16 (the dispatch table).

    Raises
    ------
    ConfigError
        naming the first invalid field and its accepted range.
    """

    # model
    name: str = "moe"
    family: str = "custom"
    d_model: int = 64
    d_ff: int = 128
    n_experts: int = 8
    top_k: int = 2
    activation: str = "swiglu"
    shared_d_ff: int = 0
    shared_gate: str = "none"
    # routing
    routing: str = "softmax_topk"
    renormalize: bool = False
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    selection_bias: bool = False
    routed_scaling_factor: float = 1.0
    skip_threshold: float = 0.0
    # precision
    input_bits: int = 16
    input_smoothing: float = 0.5
    weight_bits: int = 8
    act_bits: int = 8
    router_bits: int = 16
    hidden_rotation: int = 0
    # hardware
    mac_rows: int = 8
    mac_cols: int = 8
    cache_slots: int = 2
    cache_policy: str = "lru"
    pinned_experts: tuple[int, ...] = field(default=())
    token_buffer_depth: int = 64
    clock_mhz: float = 50.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", f"must be a non-empty string, not {self.name!r}")
        _check_choice("family", self.family, FAMILIES)
        _check_int("d_model", self.d_model, 1, MAX_DIM)
        _check_int("d_ff", self.d_ff, 1, MAX_DIM)
        _check_int("n_experts", self.n_experts, 1, 1024)
        _check_int("top_k", self.top_k, 1, self.n_experts)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_int("shared_d_ff", self.shared_d_ff, 0, MAX_DIM)
        _check_choice("shared_gate", self.shared_gate, SHARED_GATES)
        if self.shared_gate != "none" and self.shared_d_ff == 0:
            raise ConfigError("shared_gate", f"needs a shared expert (shared_d_ff > 0); "
                              f"use 'none' when shared_d_ff is 0, not {self.shared_gate!r}")

        _check_choice("routing", self.routing, ROUTINGS)
        _check_bool("renormalize", self.renormalize)
        _check_int("n_group", self.n_group, 1, self.n_experts)
        if self.n_experts % self.n_group:
            raise ConfigError("n_group", f"must divide n_experts={self.n_experts}, not {self.n_group!r}")
        _check_int("topk_group", self.topk_group, 1, self.n_group)
        per_group = self.n_experts // self.n_group
        if self.top_k > self.topk_group * per_group:
            raise ConfigError("top_k", f"must be at most topk_group × experts per group = "
                              f"{self.topk_group * per_group}, not {self.top_k!r}")
        _check_choice("group_score", self.group_score, GROUP_SCORES)
        if self.group_score == "top2_sum" and self.n_group > 1 and per_group < 2:
            raise ConfigError("group_score", "top2_sum needs at least 2 experts per group")
        _check_bool("selection_bias", self.selection_bias)
        if self.selection_bias and self.routing != "sigmoid_topk":
            raise ConfigError("selection_bias", f"is only defined for routing='sigmoid_topk', "
                              f"not {self.routing!r}")
        rsf = self.routed_scaling_factor
        if isinstance(rsf, bool) or not isinstance(rsf, (int, float)) or not (0 < rsf <= RSF_FACTOR_MAX) \
                or not math.isfinite(rsf):
            raise ConfigError("routed_scaling_factor", f"must be a number in (0, {RSF_FACTOR_MAX}], not {rsf!r}")
        object.__setattr__(self, "routed_scaling_factor", float(rsf))
        tau = self.skip_threshold
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 <= tau < 1:
            raise ConfigError("skip_threshold", f"must be a number in [0, 1), not {tau!r}")
        if 0 < tau * GATE_ONE < 0.5:
            raise ConfigError("skip_threshold", f"{tau!r} rounds to 0 in Q1.15 (the gates' format): "
                              f"use 0 (off) or at least {1 / (2 * GATE_ONE):.2e}")
        if tau and self.top_k == 1:
            raise ConfigError("skip_threshold", "needs top_k >= 2: a token always keeps its first "
                              "expert, so with top_k = 1 nothing can be skipped")
        object.__setattr__(self, "skip_threshold", float(tau))

        if self.input_bits not in INPUT_BITS_CHOICES or isinstance(self.input_bits, bool):
            raise ConfigError("input_bits", f"must be one of {list(INPUT_BITS_CHOICES)}, not {self.input_bits!r}")
        alpha = self.input_smoothing
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError("input_smoothing", f"must be a number in [0, 1], not {alpha!r}")
        object.__setattr__(self, "input_smoothing", float(alpha))
        if self.weight_bits not in WEIGHT_BITS_CHOICES or isinstance(self.weight_bits, bool):
            raise ConfigError("weight_bits", f"must be one of {list(WEIGHT_BITS_CHOICES)}, not {self.weight_bits!r}")
        _check_int("act_bits", self.act_bits, X_BITS, X_BITS)
        _check_int("router_bits", self.router_bits, ROUTER_BITS_MIN, ROUTER_BITS_MAX)
        _check_int("hidden_rotation", self.hidden_rotation, 0, 64)
        r = self.hidden_rotation
        if r & (r - 1):
            raise ConfigError("hidden_rotation", f"must be 0 (automatic) or a power of two in [1, 64], not {r!r}")
        for name in ("d_ff", "shared_d_ff"):
            size = getattr(self, name)
            if r and size and size % r:
                raise ConfigError("hidden_rotation", f"must divide {name}={size}, not {r!r}")

        _check_int("mac_rows", self.mac_rows, 1, 64)
        _check_int("mac_cols", self.mac_cols, 1, 64)
        _check_int("cache_slots", self.cache_slots, 1, self.n_experts)
        _check_choice("cache_policy", self.cache_policy, CACHE_POLICIES)
        pinned = self.pinned_experts
        if isinstance(pinned, list):
            pinned = tuple(pinned)
        if not isinstance(pinned, tuple):
            raise ConfigError("pinned_experts", f"must be a list of expert indices, not {pinned!r}")
        for e in pinned:
            _check_int("pinned_experts", e, 0, self.n_experts - 1)
        if len(set(pinned)) != len(pinned):
            raise ConfigError("pinned_experts", f"must not repeat an expert, not {list(pinned)!r}")
        if len(pinned) > self.cache_slots - 1 and pinned:
            raise ConfigError("pinned_experts", f"may hold at most cache_slots - 1 = "
                              f"{self.cache_slots - 1} experts (one slot stays free for misses), "
                              f"not {len(pinned)}")
        if self.cache_policy == "pinned" and not pinned:
            raise ConfigError("pinned_experts", "must name at least one expert when cache_policy='pinned'")
        if self.cache_policy != "pinned" and pinned:
            raise ConfigError("pinned_experts", f"is only used with cache_policy='pinned', "
                              f"not {self.cache_policy!r}")
        object.__setattr__(self, "pinned_experts", pinned)
        _check_int("token_buffer_depth", self.token_buffer_depth, 1, 4096)
        clk = self.clock_mhz
        if isinstance(clk, bool) or not isinstance(clk, (int, float)) or not (1 <= clk <= 1000):
            raise ConfigError("clock_mhz", f"must be a number in [1, 1000], not {clk!r}")
        object.__setattr__(self, "clock_mhz", float(clk))
        self._check_buildable()

    def _check_buildable(self):
        """The rules of the hardware generator (`moeforge.rtl`) on top of each field's range."""
        R, C = self.mac_rows, self.mac_cols
        swiglu = self.activation == "swiglu"
        if swiglu and R % 2:
            raise ConfigError("mac_rows", f"must be even for SwiGLU (gate and up rows in pairs), "
                              f"not {R}")
        step = math.lcm(R, C)
        if self.d_model % step:
            raise ConfigError("d_model", f"must be a multiple of {step}, the least common multiple "
                              f"of mac_rows={R} and mac_cols={C}; not {self.d_model}")
        lanes = self.hidden_lanes
        if lanes % C and C % lanes:
            raise ConfigError("mac_cols", f"and the hidden unit's {lanes} lanes (mac_rows"
                              f"{' / 2' if swiglu else ''}) must divide one another; not {C}")
        step = math.lcm(lanes, C)
        for name in ("d_ff", "shared_d_ff"):
            size = getattr(self, name)
            if size % step:
                raise ConfigError(name, f"must be a multiple of {step}, the least common multiple "
                                  f"of mac_cols={C} and the hidden unit's {lanes} lanes; not {size}")
        block = self.rotation_block           # the automatic block always fits
        if block % lanes and lanes % block:
            raise ConfigError("hidden_rotation", f"the rotation block {block} and the hidden "
                              f"unit's {lanes} lanes must divide one another")

        _check_at_most("top_k", "top_k", self.top_k, TOP_K_MAX,
                       "the router's top-k logic grows with top_k × n_experts")
        per = 3 if swiglu else 2
        factor = f"{per} × d_model × "
        _check_at_most("d_ff", f"one expert's weights ({factor}d_ff bytes)",
                       per * self.d_model * self.d_ff, EXPERT_BYTES_MAX,
                       "the MAC array's weight buffer holds a whole expert")
        _check_at_most("shared_d_ff", f"the shared expert's weights ({factor}shared_d_ff bytes)",
                       per * self.d_model * self.shared_d_ff, EXPERT_BYTES_MAX,
                       "the MAC array's weight buffer holds a whole expert")
        _check_at_most("n_experts", f"every expert's weights (n_experts × {factor}d_ff bytes)",
                       self.n_experts * per * self.d_model * self.d_ff, LAYER_BYTES_MAX,
                       "the simulated device's backing memory holds them all")
        _check_at_most("n_experts", "the router's weights (router_rows × d_model)",
                       self.router_rows * self.d_model, ROUTER_WEIGHTS_MAX,
                       "one router weight memory")
        widest = max(self.d_model, self.d_ff, self.shared_d_ff)
        _check_at_most("token_buffer_depth", "token_buffer_depth × max(d_model, d_ff, shared_d_ff)",
                       self.token_buffer_depth * widest, BUFFER_ELEMENTS_MAX,
                       "the token, hidden and accumulator buffers hold a whole batch")
        _check_at_most("token_buffer_depth", "token_buffer_depth × n_experts",
                       self.token_buffer_depth * self.n_experts, DISPATCH_ENTRIES_MAX,
                       "the dispatch table has a row of tokens per expert")

    # --- derived values -------------------------------------------------
    @property
    def experts_per_group(self) -> int:
        return self.n_experts // self.n_group

    @property
    def hidden_lanes(self) -> int:
        """Channels per beat of the hidden unit: one per gate/up row pair of the MAC array
        (SwiGLU) or one per row (ReLU)."""
        return self.mac_rows // 2 if self.activation == "swiglu" else self.mac_rows

    @property
    def combiner_lanes(self) -> int:
        """Values per beat of the combiner (``L``): the smallest divisor of ``mac_rows`` that
        keeps up with the expert engines.

        An engine's down projection delivers ``R = mac_rows`` outputs of one token every
        ``d_ff / mac_cols`` cycles (one MAC-array op per slice of ``d_ff``, see
        `moeforge.rtl.expert.expert_ffn`): ``R·C/F`` values a cycle at most, the shared engine
        ``R·C/F_sh`` at the same time. The combiner takes ``L`` values a cycle, so it is not
        the bottleneck while ``L >= R·C/F`` (``+ R·C/F_sh`` with a shared expert; ``L = R`` if
        even that is too few). ``L`` divides ``R`` (and so ``d_model``): the layer core's
        gearboxes split and join whole ``R``-lane beats. Each lane costs the combiner its
        multipliers (``gate·o`` and the flush's ``acc·M_y``); the price of fewer lanes is the
        flush, ``T·d_model/L`` cycles after the last contribution.
        """
        R, C = self.mac_rows, self.mac_cols
        rate = Fraction(R * C, self.d_ff)
        if self.shared_d_ff:
            rate += Fraction(R * C, self.shared_d_ff)
        return next(L for L in range(1, R + 1) if R % L == 0 and (L >= rate or L == R))

    @property
    def rotation_block(self) -> int:
        """The Walsh-Hadamard block size actually used for expert hidden vectors.

        Automatic (``hidden_rotation = 0``): the largest power of two up to 64 that divides
        ``d_ff`` and ``shared_d_ff`` and that the hidden unit's lanes divide or are a multiple
        of (so the hidden unit can be built).
        """
        if self.hidden_rotation:
            return self.hidden_rotation
        g = math.gcd(self.d_ff, self.shared_d_ff)
        block = min(64, g & -g)
        lanes = self.hidden_lanes
        if block % lanes and lanes % block:
            block = min(block, lanes & -lanes)   # lanes not a power of two: its power-of-two part
        return block

    @property
    def router_rows(self) -> int:
        """Router GEMV rows: one per expert, plus Qwen2's shared-expert gate."""
        return self.n_experts + (1 if self.shared_gate == "sigmoid" else 0)

    def replace(self, **changes) -> "AccelConfig":
        return dataclasses.replace(self, **changes)

    # --- serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for section, names in SECTIONS.items():
            out[section] = {n: (list(v) if isinstance(v := getattr(self, n), tuple) else v)
                            for n in names}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "AccelConfig":
        if not isinstance(data, dict):
            raise ConfigError("config", f"must be a table of sections, not {type(data).__name__}")
        kwargs = {}
        for section, values in data.items():
            if section not in SECTIONS:
                raise ConfigError(section, f"is not a known section; expected one of {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(section, "must be a table ([section]), not a value")
            for key, value in values.items():
                if key not in SECTIONS[section]:
                    raise ConfigError(f"{section}.{key}", f"is not a known key; [{section}] accepts "
                                      f"{', '.join(SECTIONS[section])}")
                kwargs[key] = value
        return cls(**kwargs)

    def to_toml(self, path: str | Path | None = None) -> str:
        import tomli_w
        text = tomli_w.dumps(self.to_dict())
        if path is not None:
            from .outputs import atomic_write
            # never a half-written config, nor a temporary file left behind
            atomic_write(path, lambda tmp: tmp.write_text(text))
        return text

    @classmethod
    def from_toml(cls, path_or_text: str | Path) -> "AccelConfig":
        """Read a config from a TOML file (or TOML text if it holds a newline)."""
        if isinstance(path_or_text, str) and "\n" in path_or_text:
            text, where = path_or_text, "<text>"
        else:
            where = str(path_or_text)
            try:
                text = Path(path_or_text).read_text()
            except FileNotFoundError:
                raise ConfigError("config", f"file {where} does not exist") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError("config", f"cannot read {where}: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{where} is not valid TOML: {exc}") from None
        if not data.get("model"):
            # an empty file would otherwise be a silent all-defaults layer
            raise ConfigError("model", f"{where} has no [model] section (or it is empty); a "
                              f"config names at least its layer's shape, e.g. d_model, d_ff, "
                              f"n_experts, top_k")
        return cls.from_dict(data)

    def content_hash(self) -> str:
        """SHA-256 over the canonical JSON of every field: equal configs, equal hash."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.content_hash()[:12]

    @classmethod
    def from_hf(cls, hf_config, **hardware) -> "AccelConfig":
        """Model and routing from a `transformers` MoE config; hardware from defaults or kwargs."""
        from .hf_config import model_fields_from_hf
        fields_ = model_fields_from_hf(hf_config)
        unknown = set(hardware) - {f.name for f in fields(cls)}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(name, "is not an AccelConfig field")
        fields_.update(hardware)
        return cls(**fields_)
