"""Weight images (`save_layer` / `load_layer`): a digest of the weight data and the metadata is
stored at save and checked at load, so an altered or damaged file is refused, never run; files
follow the user's umask and no temporary file is left behind."""

import json
import os
import struct

import numpy as np
import pytest
import torch

from moeforge import AccelConfig, WeightsError
from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
from moeforge.hls_models.weight_image import DIGEST_KEY, FORMAT

TINY = "configs/tiny.toml"
DAMAGED = "weight data does not match its digest: the file was altered or damaged"


@pytest.fixture(scope="module")
def layer():
    cfg = AccelConfig.from_toml(TINY)
    return QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=1), cfg, calib=make_hf_input(cfg, 64, seed=1))


def _split(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_round_trip_is_exact(layer, tmp_path):
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    back = QuantizedMoELayer.load(p, layer.cfg)
    want, got = layer.tensors(), back.tensors()
    assert sorted(want) == sorted(got)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
    assert (back.x_scale, back.y_scale, back.o_scale) == (layer.x_scale, layer.y_scale, layer.o_scale)
    header, _ = _split(p)
    assert header["__metadata__"]["format"] == FORMAT
    assert len(header["__metadata__"][DIGEST_KEY]) == 64


def test_int4_layer_round_trips_packed(tmp_path):
    """A ``weight_bits = 4`` layer: its matrices stored as uint8, two values a byte, half the
    int8 bytes; loaded back, every tensor equal, int8-typed and within [-8, 7]; a flipped
    packed byte is refused by the digest."""
    cfg = AccelConfig.from_toml(TINY).replace(name="tiny-int4", weight_bits=4)
    layer = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=1), cfg, calib=make_hf_input(cfg, 64, seed=1))
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    header, data = _split(p)
    for name in ("experts.w_up", "experts.w_gate", "experts.w_down"):
        n, rows, k = layer.tensors()[name].shape
        assert header[name]["dtype"] == "U8" and header[name]["shape"] == [n, rows, (k + 1) // 2], name
    back = QuantizedMoELayer.load(p, cfg)
    for name, want in layer.tensors().items():
        got = back.tensors()[name]
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert -8 <= int(back.experts.w_down.min()) and int(back.experts.w_down.max()) <= 7
    lo, _ = header["experts.w_down"]["data_offsets"]
    data = bytearray(data)
    data[lo + 5] ^= 0x80
    _join(p, header, bytes(data))
    with pytest.raises(WeightsError, match=DAMAGED):
        QuantizedMoELayer.load(p, cfg)


def test_pack_int4_refuses_a_value_out_of_range():
    from moeforge.hls_models.weight_image import pack_int4, unpack_int4
    t = torch.tensor([[-8, 7, 0], [1, -1, 3]])
    assert torch.equal(unpack_int4(pack_int4(t), 3), t.to(torch.int8))
    assert pack_int4(t)[0].tolist() == [0x78, 0x00]
    with pytest.raises(ValueError, match=r"values in \[-9, 7\], outside \[-8, 7\]"):
        pack_int4(torch.tensor([-9, 7]))


@pytest.mark.parametrize("tensor", ["experts.w_up", "router.weight", "combiner.shift"])
def test_one_flipped_byte_in_the_tensor_data_is_refused(layer, tmp_path, tensor):
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    header, data = _split(p)
    lo, hi = header[tensor]["data_offsets"]
    data = bytearray(data)
    data[(lo + hi) // 2] ^= 0x01
    _join(p, header, bytes(data))
    damaged = p.read_bytes()
    with pytest.raises(WeightsError, match=f"^{p}: {DAMAGED}$"):
        QuantizedMoELayer.load(p, layer.cfg)
    with pytest.raises(WeightsError, match=DAMAGED):
        QuantizedMoELayer.load(p)
    assert p.read_bytes() == damaged          # a failed load never touches the file


@pytest.mark.parametrize("key,edit", [
    ("x_scale", lambda v: repr(float(v) * 2)),
    ("o_scale", lambda v: repr(float(v) * 1.0000001)),
    ("config", lambda v: v.replace("cache_slots = 2", "cache_slots = 3")),
    ("config_hash", lambda v: "0" * len(v)),
])
def test_edited_metadata_is_refused(layer, tmp_path, key, edit):
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    header, data = _split(p)
    before = header["__metadata__"][key]
    header["__metadata__"][key] = edit(before)
    assert header["__metadata__"][key] != before
    _join(p, header, data)
    with pytest.raises(WeightsError, match=DAMAGED):
        QuantizedMoELayer.load(p)


def test_a_changed_shape_or_dtype_is_refused(layer, tmp_path):
    """Two tensors of one shape and dtype swap their names: every byte is still a valid
    tensor, only the digest (over names and bytes) tells."""
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    header, data = _split(p)
    header["router.mult"], header["combiner.mult"] = header["combiner.mult"], header["router.mult"]
    _join(p, header, data)
    with pytest.raises(WeightsError, match=DAMAGED):
        QuantizedMoELayer.load(p)


def test_missing_digest_and_old_format(layer, tmp_path):
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    header, data = _split(p)
    del header["__metadata__"][DIGEST_KEY]
    _join(p, header, data)
    with pytest.raises(WeightsError, match="no digest of its weight data"):
        QuantizedMoELayer.load(p)
    header["__metadata__"]["format"] = "moeforge-layer/1"      # as written before digests
    _join(p, header, data)
    with pytest.raises(WeightsError, match=r"older moeforge \(moeforge-layer/1, .*quantise the layer again"):
        QuantizedMoELayer.load(p)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_file_follows_the_umask_and_no_temporary_is_left(layer, tmp_path, umask):
    p = tmp_path / "layer.safetensors"
    old = os.umask(umask)
    try:
        layer.save(p)
        layer.save(p)                         # replacing an existing file too
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [f.name for f in tmp_path.iterdir()] == [p.name]


def test_a_failed_save_leaves_nothing_and_keeps_the_old_file(layer, tmp_path):
    with pytest.raises(WeightsError, match="cannot write the weight image"):
        layer.save(tmp_path / "missing" / "layer.safetensors")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(WeightsError, match="cannot write the weight image"):
        layer.save(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert [f.name for f in tmp_path.iterdir()] == ["out"]


def test_run_refuses_an_altered_file_before_any_device(layer, tmp_path, capsys):
    """``moeforge run`` on a file with one altered weight byte: one line, exit 2 (it used to
    load and run with wrong weights, exit 0)."""
    from moeforge.cli import main
    p, inp, out = tmp_path / "layer.safetensors", tmp_path / "x.npy", tmp_path / "y.npy"
    layer.save(p)
    header, data = _split(p)
    lo, _ = header["experts.w_down"]["data_offsets"]
    data = bytearray(data)
    data[lo] ^= 0x80
    _join(p, header, bytes(data))
    np.save(inp, make_hf_input(layer.cfg, 4, seed=2).numpy())
    assert main(["run", "--config", TINY, "--model", str(p), "--input", str(inp), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert DAMAGED in err and "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()
