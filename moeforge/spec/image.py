"""The device's weight image: the address maps and word layouts the write commands carry, and
the words a quantised layer becomes.

The router's memory (``WRITE_ROUTER``) is `RouterAddressMap`; each routed expert's image in the
backing memory (``WRITE_MEMORY``, expert ``e`` at word ``e · words``) and the shared expert's
(``WRITE_SHARED``) is `ExpertImageLayout`, whose first section holds the hidden unit's
parameters (`HiddenAddressMap`). ``READ_PARTIAL``'s values are `accumulator_width` bits. The
RTL (`Router`, `HiddenUnit`, `ExpertFFN`, `Combiner`, `MoEAccelerator`) addresses its memories by
these layouts, and the host runtime sizes its packets by them (`protocol.CommandLayout`).

The builders (`router_image`, `hidden_image`, `expert_image`) read a `QuantizedMoELayer`'s
integer tensors through ``tolist()`` and ``shape`` only, so this module needs neither torch nor
Amaranth.

Router memory (``r·S + s`` etc., ``S = d_model / lanes``; the table of `Router`'s docstring):

===========================  =================================================================
address                      word
===========================  =================================================================
``r·S + s``                  router weights ``W[r, s·lanes : (s+1)·lanes]``, lane ``i`` in bits
                             ``[i·rb, (i+1)·rb)`` as ``router_bits``-bit two's complement
``R·S``                      router multiplier ``M_r`` (unsigned, `MULT_BITS`)
``R·S + 1``                  router shift ``S_r`` (`SHIFT_MIN` .. `SHIFT_MAX`)
``R·S + 2 + e``              selection bias ``b_e`` (`BIAS_BITS`, two's complement), only with
                             ``selection_bias``
===========================  =================================================================

Expert image (``C = mac_cols`` bytes a word, ``R = mac_rows``; the table of `ExpertFFN`'s
docstring): hidden parameters (``(F + 1)·hpw`` words), down-projection parameters (``D·dpw``),
gate/up weights (``2F·D/C`` SwiGLU, ``F·D/C`` ReLU, in groups of ``R`` rows), down weights
(``D·F/C``). With ``weight_bits = 4`` the two weight sections are one stream of int4 values,
two buffer words to an image word (`ExpertImageLayout`): about half the words.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeforge.config import ACTIVATIONS, WEIGHT_BITS_CHOICES, AccelConfig

from moeforge.checks import check_int

from .arith import BIAS_BITS, GATE_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS, SHIFT_MAX, SHIFT_MIN, WEIGHT_BITS

__all__ = ["PARAM_BITS", "RouterAddressMap", "HiddenAddressMap", "ExpertImageLayout",
           "accumulator_width", "MAX_TERMS", "router_image", "hidden_image", "expert_image"]

PARAM_BITS = MULT_BITS + SHIFT_BITS     # one (M, S) pair: the multiplier, the shift above it
MAX_TERMS = 1024                        # most products a combiner accumulator sums


def _bits(n: int) -> int:
    """Bits of an index below n (at least 1)."""
    return max(1, (n - 1).bit_length())


def _mult_shift(what: str, mult, shift) -> tuple[int, int]:
    """A requantiser's (multiplier, shift) as ints, range-checked."""
    mult, shift = int(mult), int(shift)
    check_int(f"{what} multiplier", mult, 0, (1 << MULT_BITS) - 1)
    check_int(f"{what} shift", shift, SHIFT_MIN, SHIFT_MAX)
    return mult, shift


def _param_word(mult: int, shift: int) -> int:
    """One (M, S) pair as `PARAM_BITS` bits: ``M`` low, ``S`` above it."""
    return mult | shift << MULT_BITS


# ------------------------------------------------------------------------------- the router

@dataclass(frozen=True)
class RouterAddressMap:
    """Addresses of the router's write port (see the module docstring).

    Attributes
    ----------
    rows, slices, lanes, router_bits, n_bias :
        ``R``, ``S = d_model / lanes``, lanes per word, weight bits, bias words (``E`` or 0).
    """

    rows: int
    slices: int
    lanes: int
    router_bits: int
    n_bias: int

    @property
    def weight_words(self) -> int:
        return self.rows * self.slices

    @property
    def mult(self) -> int:
        return self.weight_words

    @property
    def shift(self) -> int:
        return self.weight_words + 1

    @property
    def bias(self) -> int:
        return self.weight_words + 2

    @property
    def words(self) -> int:
        """Addresses in use: ``R·S + 2 (+ E)``."""
        return self.bias + self.n_bias

    @property
    def addr_bits(self) -> int:
        return _bits(self.words)

    @property
    def data_bits(self) -> int:
        return max(self.lanes * self.router_bits, BIAS_BITS if self.n_bias else MULT_BITS)

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, lanes: int) -> "RouterAddressMap":
        """The map of a router of `cfg` with `lanes` lanes.

        Raises
        ------
        ValueError
            If `lanes` does not divide ``cfg.d_model``.
        """
        check_int("lanes", lanes, 1, cfg.d_model)
        if cfg.d_model % lanes:
            raise ValueError(f"lanes must divide d_model={cfg.d_model}, not {lanes!r}")
        return cls(rows=cfg.router_rows, slices=cfg.d_model // lanes, lanes=lanes,
                   router_bits=cfg.router_bits, n_bias=cfg.n_experts if cfg.selection_bias else 0)

    def weight_addr(self, row: int, slice_: int) -> int:
        return row * self.slices + slice_

    def weight_word(self, values) -> int:
        """Pack ``lanes`` signed weights into one word (lane 0 in the low bits), range-checked."""
        values = [int(v) for v in values]
        if len(values) != self.lanes:
            raise ValueError(f"a weight word holds {self.lanes} values, not {len(values)}")
        rb = self.router_bits
        word = 0
        for i, v in enumerate(values):
            if not -(1 << (rb - 1)) <= v < (1 << (rb - 1)):
                raise ValueError(f"router weight {v} does not fit in {rb} signed bits")
            word |= (v & ((1 << rb) - 1)) << (i * rb)
        return word


def router_image(q, *, lanes: int) -> list[tuple[int, int]]:
    """The ``(addr, data)`` writes that load a `QuantizedMoELayer`'s router into the device.

    Weights row by row (each row ``d_model / lanes`` words), then ``M_r``, ``S_r`` and, with
    ``selection_bias``, the ``E`` biases as `BIAS_BITS`-bit two's complement words.

    Raises
    ------
    ValueError
        If `lanes` does not divide ``d_model``, the weights do not fit ``router_bits``, or the
        layer's tensors do not have the config's shapes.
    """
    cfg = q.cfg
    amap = RouterAddressMap.from_config(cfg, lanes=lanes)
    w = q.router_weight.to("cpu").tolist()
    if len(w) != cfg.router_rows or any(len(row) != cfg.d_model for row in w):
        raise ValueError(f"router weights must be [{cfg.router_rows}, {cfg.d_model}], "
                         f"not [{len(w)}, {len(w[0]) if w else 0}]")
    writes = []
    for r, row in enumerate(w):
        for s in range(amap.slices):
            writes.append((amap.weight_addr(r, s),
                           amap.weight_word(row[s * lanes:(s + 1) * lanes])))
    mult, shift = int(q.router_mult), int(q.router_shift)
    check_int("router_mult", mult, 0, (1 << MULT_BITS) - 1)
    check_int("router_shift", shift, SHIFT_MIN, SHIFT_MAX)
    writes += [(amap.mult, mult), (amap.shift, shift)]
    if cfg.selection_bias:
        bias = [int(b) for b in q.selection_bias.tolist()]
        if len(bias) != cfg.n_experts:
            raise ValueError(f"selection bias must have {cfg.n_experts} values, not {len(bias)}")
        lo = -(1 << (BIAS_BITS - 1))
        for e, b in enumerate(bias):
            check_int("selection bias", b, lo, -lo - 1)
            writes.append((amap.bias + e, b & ((1 << BIAS_BITS) - 1)))
    return writes


# ------------------------------------------------------------------------ the hidden unit

@dataclass(frozen=True)
class HiddenAddressMap:
    """Addresses of the hidden unit's write port: ``M_h``/``S_h`` at `HID`, then one parameter
    word per channel (``up_mult``, ``up_shift`` and, for SwiGLU, ``gate_mult``, ``gate_shift``
    above them, LSB first).

    Attributes
    ----------
    d_ff : int
        Channels the unit holds parameters for.
    activation : str
        ``relu`` or ``swiglu`` (decides the channel word's fields).
    """

    d_ff: int
    activation: str

    HID = 0                          # M_h, S_h

    def __post_init__(self):
        check_int("d_ff", self.d_ff, 1, 1 << 20)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, "
                             f"not {self.activation!r}")

    def channel(self, c: int) -> int:
        """Address of channel ``c``'s parameter word."""
        check_int("channel", c, 0, self.d_ff - 1)
        return 1 + c

    @property
    def words(self) -> int:
        """Addresses in use: ``1 + d_ff``."""
        return 1 + self.d_ff

    @property
    def addr_bits(self) -> int:
        return _bits(self.words)

    @property
    def data_bits(self) -> int:
        """A channel word: one (M, S) pair, two for SwiGLU."""
        return (2 if self.activation == "swiglu" else 1) * PARAM_BITS

    def channel_word(self, *, up_mult, up_shift, gate_mult=None, gate_shift=None) -> int:
        """Pack one channel's parameters (range-checked); gate fields for SwiGLU only."""
        word = _param_word(*_mult_shift("up", up_mult, up_shift))
        if self.activation == "swiglu":
            if gate_mult is None or gate_shift is None:
                raise ValueError("a SwiGLU channel word needs gate_mult and gate_shift")
            word |= _param_word(*_mult_shift("gate", gate_mult, gate_shift)) << PARAM_BITS
        elif gate_mult is not None or gate_shift is not None:
            raise ValueError("a ReLU channel word has no gate parameters")
        return word

    def hid_word(self, mult, shift) -> int:
        """Pack the hidden requantiser's multiplier and shift (range-checked)."""
        return _param_word(*_mult_shift("hidden", mult, shift))


def hidden_image(bank, e: int) -> list[tuple[int, int]]:
    """The ``(addr, data)`` writes that load expert `e` of an `ExpertBank` into a hidden unit.

    ``M_h``/``S_h`` first, then channels ``0 .. F-1`` (``F`` = the bank's ``d_ff``).

    Raises
    ------
    ValueError
        If `e` is not an expert of the bank, a multiplier does not fit `MULT_BITS` or a shift
        is outside ``[SHIFT_MIN, SHIFT_MAX]``, or the bank's tensors are inconsistent.
    """
    check_int("expert", e, 0, bank.n - 1)
    swiglu = bank.activation == "swiglu"
    F = int(bank.up_mult.shape[1])
    amap = HiddenAddressMap(d_ff=F, activation=bank.activation)
    up_m, up_s = bank.up_mult[e].tolist(), bank.up_shift[e].tolist()
    if swiglu:
        if bank.gate_mult is None or bank.gate_shift is None:
            raise ValueError("a SwiGLU bank needs gate_mult and gate_shift")
        gate_m, gate_s = bank.gate_mult[e].tolist(), bank.gate_shift[e].tolist()
    else:
        gate_m = gate_s = [None] * F
    if not len(up_s) == len(gate_m) == len(gate_s) == F:
        raise ValueError(f"expert {e}: per-channel parameters must have {F} values")
    writes = [(amap.HID, amap.hid_word(bank.hid_mult[e], bank.hid_shift[e]))]
    for c in range(F):
        writes.append((amap.channel(c), amap.channel_word(up_mult=up_m[c], up_shift=up_s[c],
                                                          gate_mult=gate_m[c],
                                                          gate_shift=gate_s[c])))
    return writes


# ------------------------------------------------------------------------- an expert's image

class ExpertImageLayout:
    """Sizes and offsets of one expert's weight image (see the module docstring).

    ``gu_words`` and ``dw_words`` count the MAC array's weight-buffer words (``C`` int8 lanes);
    the image holds them ``pack`` to a word: 1 at ``weight_bits = 8``, 2 at 4 (the weight region,
    gate/up then down, is one stream of int4 values, buffer word ``i`` in the low (even ``i``) or
    high (odd) ``4·C`` bits of image word ``gu_base + i // 2``, lane ``c`` in bits ``4c .. 4c+3``
    of that half). ``words`` is the image's size in words.

    Parameters
    ----------
    activation : str
    d_model, d_ff, rows, cols : int
    weight_bits : int
        8 or 4 (`WEIGHT_BITS_CHOICES`).
    """

    def __init__(self, *, activation: str, d_model: int, d_ff: int, rows: int, cols: int,
                 weight_bits: int = WEIGHT_BITS):
        if weight_bits not in WEIGHT_BITS_CHOICES:
            raise ValueError(f"weight_bits must be one of {list(WEIGHT_BITS_CHOICES)}, not {weight_bits!r}")
        self.activation = activation
        self.swiglu = activation == "swiglu"
        self.d_model, self.d_ff, self.rows, self.cols = d_model, d_ff, rows, cols
        self.weight_bits = weight_bits
        self.pack = WEIGHT_BITS // weight_bits
        word_bits = 8 * cols
        self.hp_bits = HiddenAddressMap(d_ff=d_ff, activation=activation).data_bits
        self.hpw = -(-self.hp_bits // word_bits)
        self.dpw = -(-PARAM_BITS // word_bits)
        self.s_d, self.s_f = d_model // cols, d_ff // cols
        self.gu_rows = (2 if self.swiglu else 1) * d_ff
        self.gu_groups = self.gu_rows // rows
        self.d_groups = d_model // rows
        self.hp_items, self.dp_items = d_ff + 1, d_model
        self.hp_words = self.hp_items * self.hpw
        self.dp_words = self.dp_items * self.dpw
        self.gu_words = self.gu_rows * self.s_d
        self.dw_words = d_model * self.s_f
        self.hp_base = 0
        self.dp_base = self.hp_words
        self.gu_base = self.dp_base + self.dp_words
        self.dw_base = self.gu_base + self.gu_words // self.pack   # (int4: the word holding DW's first)
        self.weight_words = -(-(self.gu_words + self.dw_words) // self.pack)
        self.words = self.gu_base + self.weight_words

    @classmethod
    def from_config(cls, cfg: AccelConfig, *, d_ff: int | None = None) -> "ExpertImageLayout":
        """The layout of `cfg`'s routed experts (or, with `d_ff`, of an expert that wide: the
        shared one)."""
        return cls(activation=cfg.activation, d_model=cfg.d_model, d_ff=cfg.d_ff if d_ff is None else d_ff,
                   rows=cfg.mac_rows, cols=cfg.mac_cols, weight_bits=cfg.weight_bits)

    def gu_row(self, j: int, r: int) -> tuple[str, int]:
        """(``"gate"`` or ``"up"``, channel) of row ``r`` of GU group ``j``."""
        if self.swiglu:
            half = self.rows // 2
            return ("gate", j * half + r) if r < half else ("up", j * half + r - half)
        return "up", j * self.rows + r

    def weight_words_of(self, rows) -> list[int]:
        """The image words of the weight region from its rows of int values (gate/up rows in
        group order, then the down rows), ``C`` values a buffer word, packed as the layout says.

        Raises
        ------
        ValueError
            If a value is outside the signed ``weight_bits`` range.
        """
        bits, mask = self.weight_bits, (1 << self.weight_bits) - 1
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        buf = []
        for row in rows:
            for s in range(0, len(row), self.cols):
                word = 0
                for c, v in enumerate(row[s:s + self.cols]):
                    v = int(v)
                    if not lo <= v <= hi:
                        raise ValueError(f"weight {v} is outside the int{bits} range [{lo}, {hi}]")
                    word |= (v & mask) << (bits * c)
                buf.append(word)
        half = bits * self.cols
        return [sum(w << (half * k) for k, w in enumerate(buf[i:i + self.pack]))
                for i in range(0, len(buf), self.pack)]


def _pack_value(value: int, bits: int, nwords: int, word_bits: int) -> list[int]:
    value &= (1 << bits) - 1
    mask = (1 << word_bits) - 1
    return [(value >> (word_bits * i)) & mask for i in range(nwords)]


def expert_image(bank, e: int, cfg: AccelConfig) -> list[int]:
    """The weight-port words of expert `e` of an `ExpertBank` for `cfg`'s array (the layout of
    `ExpertImageLayout`).

    Raises
    ------
    ValueError
        If the bank does not match `cfg` (activation, shapes), `e` is not one of its experts,
        or a multiplier or shift is out of range.
    """
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
    check_int("expert", e, 0, bank.n - 1)
    if bank.activation != cfg.activation:
        raise ValueError(f"the bank's activation {bank.activation!r} is not the config's "
                         f"{cfg.activation!r}")
    F, D = int(bank.w_up.shape[1]), int(bank.w_up.shape[2])
    if D != cfg.d_model:
        raise ValueError(f"the bank's d_model {D} is not the config's {cfg.d_model}")
    lay = ExpertImageLayout.from_config(cfg, d_ff=F)
    wb = 8 * cfg.mac_cols
    words = []
    for addr, value in hidden_image(bank, e):
        assert addr == len(words) // lay.hpw
        words += _pack_value(value, lay.hp_bits, lay.hpw, wb)
    for n in range(D):
        m, s = int(bank.down_mult[e, n]), int(bank.down_shift[e, n])
        check_int(f"down multiplier {n}", m, 0, (1 << MULT_BITS) - 1)
        check_int(f"down shift {n}", s, SHIFT_MIN, SHIFT_MAX)
        words += _pack_value(_param_word(m, s), PARAM_BITS, lay.dpw, wb)
    mats = {"up": bank.w_up[e].tolist()}
    if lay.swiglu:
        mats["gate"] = bank.w_gate[e].tolist()
    rows = [mats[which][c] for which, c in (lay.gu_row(j, r) for j in range(lay.gu_groups)
                                            for r in range(lay.rows))]
    words += lay.weight_words_of(rows + bank.w_down[e].tolist())
    assert len(words) == lay.words
    return words


# ---------------------------------------------------------------------------- the combiner

def accumulator_width(max_terms: int) -> int:
    """Signed bits holding any sum of `max_terms` products ``gate · o`` exactly: one product
    needs ``OUT_BITS + GATE_BITS`` (38) signed bits, a sum of ``n`` of them
    ``ceil(log2 n)`` more. The combiner's accumulators, and ``READ_PARTIAL``'s values.

    Raises
    ------
    TypeError, ValueError
        If `max_terms` is not an integer in ``[1, MAX_TERMS]``.
    """
    check_int("max_terms", max_terms, 1, MAX_TERMS)
    return OUT_BITS + GATE_BITS + (max_terms - 1).bit_length()
