"""A quantised layer as a `safetensors` file: the weight image the device is loaded with.

The file carries the integer tensors plus, in its metadata, the config (TOML), the
config's content hash, the host-side float scales, a format version and a SHA-256 digest
of all of that (`digest`), so that a file can never be loaded against a config it was not
made for, and a file whose bytes were altered or damaged is refused instead of running
with wrong weights. Files of format ``moeforge-layer/1`` (no digest) are refused with a
request to quantise the layer again: nothing in them shows that their weights are intact.

A layer of ``weight_bits = 4`` stores its expert matrices packed: ``uint8 [..., ceil(K/2)]``,
value ``2i`` of a row in the low nibble of byte ``i`` and ``2i + 1`` in the high one, two's
complement (`pack_int4`), so the file holds half the weight bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError, WeightsError
from moeforge.outputs import temporary_beside
from moeforge.spec.arith import WEIGHT_PACKED_BITS, X_SHIFT_MAX, X_SHIFT_MIN, X_WIDE_BITS

from .expert_bank import ExpertBank

__all__ = ["save_layer", "read_layer", "digest", "pack_int4", "unpack_int4", "FORMAT", "DIGEST_KEY"]

FORMAT = "moeforge-layer/3"
# Formats this version refuses, and why: the layer has to be quantised again.
OLD_FORMATS = {"moeforge-layer/1": "without a digest of its weight data",
               "moeforge-layer/2": "before the wide input token and input smoothing"}
DIGEST_KEY = "sha256"
MATRICES = ("w_up", "w_gate", "w_down")     # a bank's weight matrices: packed at int4
INT4_MIN, INT4_MAX = -(1 << (WEIGHT_PACKED_BITS - 1)), (1 << (WEIGHT_PACKED_BITS - 1)) - 1


def pack_int4(t: torch.Tensor) -> torch.Tensor:
    """int4 values (an integer tensor) → uint8 ``[..., ceil(K/2)]``, two to a byte (low nibble
    first; an odd last row element pairs with 0).

    Raises
    ------
    ValueError
        If a value is outside [-8, 7].
    """
    if t.numel() and (int(t.min()) < INT4_MIN or int(t.max()) > INT4_MAX):
        raise ValueError(f"an int4 matrix holds values in [{int(t.min())}, {int(t.max())}], "
                         f"outside [{INT4_MIN}, {INT4_MAX}]")
    v = t.to(torch.int64) & 0xF
    if v.shape[-1] % 2:
        v = torch.cat([v, torch.zeros(*v.shape[:-1], 1, dtype=v.dtype)], dim=-1)
    return (v[..., 0::2] | v[..., 1::2] << 4).to(torch.uint8)


def unpack_int4(b: torch.Tensor, k: int) -> torch.Tensor:
    """`pack_int4`'s bytes → int8 values ``[..., k]``."""
    v = b.to(torch.int64)
    nib = torch.stack([v & 0xF, v >> 4], dim=-1).reshape(*v.shape[:-1], -1)[..., :k]
    return (nib - ((nib & 0x8) << 1)).to(torch.int8)


def digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 (hex) of every tensor's name, dtype, shape and little-endian bytes, in name
    order, and of every metadata entry but the digest itself, in key order.

    Every field is length-prefixed, so no two different images hash the same bytes.
    """
    h = hashlib.sha256()

    def field(b) -> None:
        h.update(memoryview(b).nbytes.to_bytes(8, "little"))
        h.update(b)

    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        field(name.encode())
        field(str(t.dtype).removeprefix("torch.").encode())
        field(",".join(map(str, t.shape)).encode())
        a = t.reshape(-1).numpy()
        field(a.astype(a.dtype.newbyteorder("<"), copy=False))   # no copy on little-endian hosts
    for key in sorted(k for k in meta if k != DIGEST_KEY):
        field(key.encode())
        field(str(meta[key]).encode())
    return h.hexdigest()


def save_layer(layer, path: str | Path) -> None:
    """Write `layer` to `path` atomically (an existing file is replaced only when the new one
    is complete), with the user's umask, its digest in the metadata.

    Raises
    ------
    WeightsError
        If the file cannot be written (the message names it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    path = Path(path)
    meta = {"format": FORMAT, "config": layer.cfg.to_toml(), "config_hash": layer.cfg.content_hash(),
            "x_scale": repr(layer.x_scale), "y_scale": repr(layer.y_scale), "o_scale": repr(layer.o_scale)}
    tensors = {k: v.contiguous() for k, v in layer.tensors().items()}
    if layer.cfg.weight_bits == WEIGHT_PACKED_BITS:
        try:
            tensors.update({k: pack_int4(v) for k, v in tensors.items() if k.split(".")[-1] in MATRICES})
        except ValueError as exc:
            raise WeightsError(f"{path}: cannot write the weight image ({exc})") from None
    meta[DIGEST_KEY] = digest(tensors, meta)
    try:
        with temporary_beside(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except (OSError, SafetensorError) as exc:
        raise WeightsError(f"{path}: cannot write the weight image "
                           f"({getattr(exc, 'strerror', None) or exc})") from None


def _expect(tensors, name, shape, dtype, path):
    t = tensors.get(name)
    if t is None:
        raise WeightsError(f"{path}: tensor {name!r} is missing")
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise WeightsError(f"{path}: tensor {name!r} is {t.dtype} {list(t.shape)}, "
                           f"the config needs {dtype} {list(shape)}")
    return t


def _bank(tensors, prefix, n, F, D, activation, rotation, weight_bits, path):
    i8, i32 = torch.int8, torch.int32
    spec = {"w_up": ((n, F, D), i8), "up_mult": ((n, F), i32), "up_shift": ((n, F), i32),
            "hid_mult": ((n,), i32), "hid_shift": ((n,), i32),
            "w_down": ((n, D, F), i8), "down_mult": ((n, D), i32), "down_shift": ((n, D), i32)}
    if activation == "swiglu":
        spec.update({"w_gate": ((n, F, D), i8), "gate_mult": ((n, F), i32), "gate_shift": ((n, F), i32)})
    packed = weight_bits == WEIGHT_PACKED_BITS
    if packed:          # stored two to a byte: uint8 [.., ceil(K/2)]
        spec.update({f: ((*shape[:-1], -(-shape[-1] // 2)), torch.uint8)
                     for f, (shape, _) in spec.items() if f in MATRICES})
    fields = {f: _expect(tensors, f"{prefix}.{f}", *spec[f], path) for f in spec}
    if packed:
        k = {"w_up": D, "w_gate": D, "w_down": F}
        fields.update({f: unpack_int4(fields[f], k[f]) for f in MATRICES if f in fields})
    return ExpertBank(activation=activation, rotation=rotation, **fields), {f"{prefix}.{f}" for f in spec}


def read_layer(path: str | Path, cfg: AccelConfig | None = None) -> tuple[AccelConfig, dict]:
    """Read a weight image: the config it was made for and the layer's parts
    (`QuantizedMoELayer`'s keyword arguments after the config; ``QuantizedMoELayer.load``
    builds the layer from them).

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, damaged, of another format, or (with `cfg`) made
        for a different config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") in OLD_FORMATS:
        raise WeightsError(f"{path}: written by an older moeforge ({meta['format']}, "
                           f"{OLD_FORMATS[meta['format']]}): quantise the layer again (moeforge quantize)")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a moeforge layer image (format {meta.get('format')!r}, expected {FORMAT!r})")
    if DIGEST_KEY not in meta:
        raise WeightsError(f"{path}: no digest of its weight data in the metadata: the file was "
                           f"altered or damaged")
    if digest(tensors, meta) != meta[DIGEST_KEY]:
        raise WeightsError(f"{path}: weight data does not match its digest: the file was altered "
                           f"or damaged")
    try:
        file_cfg = AccelConfig.from_toml(meta["config"])
        scales = {k: float(meta[k]) for k in ("x_scale", "y_scale", "o_scale")}
    except (KeyError, ValueError, ConfigError) as exc:
        raise WeightsError(f"{path}: damaged metadata ({exc})") from None
    if cfg is not None and cfg.content_hash() != file_cfg.content_hash():
        raise WeightsError(f"{path}: layer quantised for config {file_cfg.name} ({file_cfg.short_hash}), "
                           f"not for {cfg.name} ({cfg.short_hash})")
    c = file_cfg
    used = {"router.weight", "router.mult", "router.shift", "combiner.mult", "combiner.shift",
            "input.shift", "input.smooth"}
    router = _expect(tensors, "router.weight", (c.router_rows, c.d_model), torch.int16, path)
    scalars = {k: int(_expect(tensors, k, (), torch.int32, path)) for k in
               ("router.mult", "router.shift", "combiner.mult", "combiner.shift", "input.shift")}
    wide = c.input_bits == X_WIDE_BITS
    x_shift = scalars["input.shift"]
    if not (X_SHIFT_MIN <= x_shift <= X_SHIFT_MAX if wide else x_shift == 0):
        raise WeightsError(f"{path}: input.shift {x_shift} is outside "
                           + (f"{X_SHIFT_MIN}..{X_SHIFT_MAX}" if wide else "0 (an int8-input layer)"))
    smooth = _expect(tensors, "input.smooth", (c.d_model,), torch.float32, path)
    if not (torch.isfinite(smooth).all() and (smooth > 0).all()):
        raise WeightsError(f"{path}: tensor 'input.smooth' must be finite and positive")
    bias = None
    if c.selection_bias:
        bias = _expect(tensors, "router.selection_bias", (c.n_experts,), torch.int32, path)
        used.add("router.selection_bias")
    experts, names = _bank(tensors, "experts", c.n_experts, c.d_ff, c.d_model, c.activation,
                           c.rotation_block, c.weight_bits, path)
    used |= names
    shared = None
    if c.shared_d_ff:
        shared, names = _bank(tensors, "shared", 1, c.shared_d_ff, c.d_model, c.activation,
                              c.rotation_block, c.weight_bits, path)
        used |= names
    extra = sorted(set(tensors) - used)
    if extra:
        raise WeightsError(f"{path}: unexpected tensor {extra[0]!r} for this config")
    return c, dict(router_weight=router, router_mult=scalars["router.mult"], router_shift=scalars["router.shift"],
                   selection_bias=bias, experts=experts, shared=shared, out_mult=scalars["combiner.mult"],
                   out_shift=scalars["combiner.shift"], x_shift=scalars["input.shift"], x_smooth=smooth,
                   **scales)
