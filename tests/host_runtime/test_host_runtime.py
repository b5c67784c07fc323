"""The host runtime on the simulated device: the Device API bit-exact against the golden model,
under injected link faults, with clear errors, and with experts spread over two devices."""

import os
import signal
import time

import numpy as np
import pytest
import torch

from moeforge import AccelConfig
from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
from moeforge.host_runtime import (ConfigMismatch, DeviceCrashed, DeviceNotAnswering,
                                   NoSuchDevice, open_device, open_device_group)
from testkit import device_tokens

pytestmark = pytest.mark.verilator
TINY = "configs/tiny.toml"


def _layer(cfg, seed=0):
    block = make_hf_block(cfg, seed=seed)
    return QuantizedMoELayer.from_hf(block, cfg, calib=make_hf_input(cfg, 256, seed=seed + 1))


@pytest.fixture(scope="module")
def tiny():
    cfg = AccelConfig.from_toml(TINY)
    return cfg, _layer(cfg)


def test_run_and_stream_are_bit_exact(tiny):
    cfg, q = tiny
    x = make_hf_input(cfg, 77, seed=9)
    x_int = q.quantize_input(x)
    with open_device("sim", cfg) as dev:
        dev.load(q)
        assert torch.equal(dev.run(x_int), q.forward_int(x_int))          # 32 + 32 + 13 tokens
        assert torch.equal(dev.run(x_int[:1]), q.forward_int(x_int[:1]))  # a decode step
        assert torch.equal(dev.run(x), q(x))                              # float in, float out
        y3 = dev.run(x.reshape(7, 11, cfg.d_model))
        assert y3.shape == (7, 11, cfg.d_model) and torch.equal(y3.reshape(77, -1), q(x))
        pieces = [x_int[:5], x_int[5], x_int[6:40], x_int[40:41], x_int[41:]]
        outs = list(dev.stream(pieces))
        assert [o.shape for o in outs] == [p.shape for p in pieces]
        assert torch.equal(torch.cat([o.reshape(-1, cfg.d_model) for o in outs]), q.forward_int(x_int))
        s = dev.stats()
    assert s["tokens"] == 77 + 1 + 77 + 77 + 77 and s["retries"] == 0
    assert s["cycles"] > 0 and s["hits"] + s["misses"] >= s["batches"]
    assert s["last_batch"]["tokens_routed"] > 0


@pytest.mark.parametrize("bits, alpha", [(16, 0.5), (8, 0.0)])
def test_each_input_width_is_bit_exact_through_the_simulated_device(bits, alpha):
    """The 16-bit input (int16 tokens on the wire, the router reading them whole, the experts
    the derived int8) with input smoothing, and the int8-only input: float in and device
    tokens in, under link faults too, each bit-exact with the golden model; tokens of the
    other width are refused by name."""
    from moeforge.errors import ShapeError
    cfg = AccelConfig.from_toml(TINY).replace(name=f"tiny-in{bits}", input_bits=bits,
                                              input_smoothing=alpha)
    q = _layer(cfg, seed=4)
    x = make_hf_input(cfg, 45, seed=9)
    x[:, 3] *= 40                                   # an outlier channel, as LLM hidden states have
    x_int = q.quantize_input(x)
    dtype, other = (torch.int16, torch.int8) if bits == 16 else (torch.int8, torch.int16)
    assert x_int.dtype == dtype and (q.x_shift >= 1) == (bits == 16)
    top = 1 << (bits - 1)
    extremes = torch.tensor([[top - 1] * cfg.d_model, [-top] * cfg.d_model, [0] * cfg.d_model],
                            dtype=dtype)
    for faults in (None, dict(flip=1e-3, drop=3e-4, dup=3e-4, seed=5)):
        with open_device("sim", cfg, faults=faults) as dev:
            dev.load(q)
            assert torch.equal(dev.run(x), q(x)), faults
            assert torch.equal(dev.run(extremes), q.forward_int(extremes)), faults
            name = str(dtype).removeprefix("torch.")
            with pytest.raises(ShapeError, match=rf"takes float or {name} tokens \(input_bits={bits}\)"):
                dev.run(x_int.to(other))


def test_expert_skipping_is_bit_exact_through_the_simulated_device():
    """Expert skipping end to end: float tokens in, bit-exact out (with link faults too), and a
    batch of one token that skips its second choice makes the device run one expert (its
    counters: one expert run, one fetch or hit, the MAC work of one token)."""
    cfg = AccelConfig.from_toml(TINY).replace(name="tiny-skip", skip_threshold=0.4)
    q = _layer(cfg, seed=4)
    x = make_hf_input(cfg, 45, seed=9)
    x_int = q.quantize_input(x)
    route = q.route_int(x_int)
    single = int(torch.nonzero(route.kept.sum(dim=1) == 1)[0])     # a token keeping one expert
    assert route.kept.sum(dim=1).max() == 2                         # and tokens keeping two
    for faults in (None, dict(flip=1e-3, drop=3e-4, dup=3e-4, seed=5)):
        with open_device("sim", cfg, faults=faults) as dev:
            dev.load(q)
            assert torch.equal(dev.run(x), q(x)), faults
            one = x_int[single:single + 1]
            assert torch.equal(dev.run(one), q.forward_int(one)), faults
            last = dev.stats()["last_batch"]
            assert last["experts_run"] == 1 and last["hits"] + last["misses"] == 1, last


def test_int4_experts_are_bit_exact_through_the_simulated_device():
    """int4 expert weights end to end: the packed images loaded over the link, float tokens in,
    bit-exact out, and each miss fetches the packed image (fewer than 0.6 of the int8 words)."""
    from moeforge.spec.protocol import CommandLayout
    cfg = AccelConfig.from_toml(TINY).replace(name="tiny-int4", weight_bits=4)
    q = _layer(cfg, seed=4)
    x = make_hf_input(cfg, 40, seed=9)
    with open_device("sim", cfg) as dev:
        dev.load(q)
        assert torch.equal(dev.run(x), q(x))
        stats = dev.stats()
    words = CommandLayout.from_config(cfg).image_words
    assert words < 0.6 * CommandLayout.from_config(cfg.replace(weight_bits=8)).image_words
    assert stats["misses"] > 0 and stats["bytes_fetched"] == stats["misses"] * words * cfg.mac_cols, stats


@pytest.mark.parametrize("frames", [2_500, pytest.param(10_000, marks=pytest.mark.slow)])
def test_faults_lose_nothing_over_many_frames(tiny, frames):
    """Flipped, dropped and duplicated bytes in both directions: every batch bit-exact, and the
    retries counted; at least `frames` frames acknowledged (10,000 under ``slow``)."""
    cfg, q = tiny
    rng = torch.Generator().manual_seed(4)
    faults = dict(flip=1e-3, drop=3e-4, dup=3e-4, seed=11)
    batches = 0
    with open_device("sim", cfg, faults=faults) as dev:
        dev.load(q)
        while dev.link.stats.frames < frames:
            n = int(torch.randint(1, 2 * cfg.token_buffer_depth, (1,), generator=rng))
            x = device_tokens(cfg, n, seed=batches)
            assert torch.equal(dev.run(x), q.forward_int(x)), f"batch {batches} differs"
            batches += 1
        s = dev.stats()
    injected = s["faults_injected"]
    assert min(injected.values()) > 0 and s["retries"] > 0
    assert s["link"]["frames"] >= frames
    print(f"\n{s['link']['frames']} frames, {batches} batches, {s['tokens']} tokens; "
          f"faults injected {injected}; link {s['link']}")


def test_wrong_config_and_bad_input_are_clear_errors(tiny):
    cfg, q = tiny
    other = AccelConfig.from_toml("configs/switch.toml")
    with open_device("sim", cfg) as dev:
        with pytest.raises(ConfigMismatch, match=f"device built for config {cfg.name}, layer "
                                                 f"quantised for config {other.name}"):
            dev.load(_layer(other))
        with pytest.raises(ValueError, match="load"):
            dev.run(torch.zeros(2, cfg.d_model))          # float input before any layer
        dev.load(q)
        with pytest.raises(Exception, match="d_model=64"):
            dev.run(torch.zeros(3, 5, dtype=dev.input_dtype))
        with pytest.raises(Exception, match="dtype"):
            dev.run(torch.zeros(3, cfg.d_model, dtype=torch.int32))
        x = torch.ones(2, cfg.d_model, dtype=dev.input_dtype)
        assert torch.equal(dev.run(x), q.forward_int(x))  # still usable
    with pytest.raises(NoSuchDevice, match="no such device"):
        open_device("usb3", cfg)
    with pytest.raises(ValueError, match=r"^faults: drop rate 2 is not in \[0, 1\)"):
        open_device("sim", cfg, faults=dict(drop=2))
    with pytest.raises(ValueError, match="^faults: .*'jitter'"):
        open_device("sim", cfg, faults=dict(jitter=0.1))
    with pytest.raises(NoSuchDevice, match="cannot open"):
        open_device("serial:///dev/ttyNOPE0?baud=115200", cfg)


def test_crashed_child_is_reported_not_hung(tiny):
    cfg, q = tiny
    dev = open_device("sim", cfg)
    try:
        os.kill(dev.transport.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(DeviceCrashed, match="simulated device crashed"):
            dev.load(q)
        assert time.monotonic() - t0 < 30
    finally:
        dev.close()
    assert not dev.transport.proc.alive()
    dev.close()                                          # idempotent


def test_silent_device_names_the_last_acknowledged_frame(tiny):
    cfg, _ = tiny
    with open_device("sim", cfg, attempts=3) as dev:
        last = dev.link.last_acked
        os.kill(dev.transport.proc.pid, signal.SIGSTOP)  # alive but silent
        try:
            with pytest.raises(DeviceNotAnswering, match=f"last acknowledged: sequence number {last}"):
                dev.run(torch.zeros(1, cfg.d_model, dtype=dev.input_dtype))
        finally:
            os.kill(dev.transport.proc.pid, signal.SIGCONT)


def test_two_devices_share_the_experts_and_match_one(tiny):
    cfg, q = tiny
    x = make_hf_input(cfg, 50, seed=3)
    with open_device_group(["sim", "sim"], cfg, placement=[[0, 3], [1, 2]]) as group:
        group.load(q)
        assert torch.equal(group.run(x), q(x))
        s = group.stats()
    assert [p["experts"] for p in s["placement"]] == [[0, 3], [1, 2]]
    assert all(0 < p["tokens_sent"] <= 50 for p in s["placement"])


def test_run_command_line(tiny, tmp_path, capsys):
    from moeforge.cli import main
    cfg, q = tiny
    model, inp, out = tmp_path / "layer.safetensors", tmp_path / "x.npy", tmp_path / "y.npy"
    q.save(model)
    x = make_hf_input(cfg, 40, seed=5)
    np.save(inp, x.numpy())
    assert main(["run", "--config", TINY, "--model", str(model), "--input", str(inp),
                 "-o", str(out), "--no-progress"]) == 0
    assert np.array_equal(np.load(out), q(x).numpy())
    np.save(inp, x.numpy()[:, :10])
    out.write_bytes(b"keep")
    assert main(["run", "--config", TINY, "--model", str(model), "--input", str(inp),
                 "-o", str(out)]) == 2
    assert "d_model=64" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(["run", "--config", TINY, "--model", str(tmp_path / "none.safetensors"),
                 "--input", str(inp), "-o", str(out)]) == 2
    np.save(inp, x.numpy().astype(np.int32))
    assert main(["run", "--config", TINY, "--model", str(model), "--input", str(inp),
                 "-o", str(out)]) == 2
    assert "dtype int32" in capsys.readouterr().err


def test_serve_sim_reached_through_a_socket_url(tiny):
    """``moeforge serve-sim`` in another process, the host through ``socket://host:port``."""
    import re
    import subprocess
    import sys
    cfg, q = tiny
    server = subprocess.Popen([sys.executable, "-m", "moeforge.cli", "serve-sim", "--config", TINY,
                               "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        line = server.stdout.readline()
        m = re.search(r"listening on ([\d.]+):(\d+)", line)
        assert m, line
        x = device_tokens(cfg, 9, seed=0)
        with open_device(f"socket://{m[1]}:{m[2]}", cfg) as dev:
            dev.load(q)
            assert torch.equal(dev.run(x), q.forward_int(x))
        with open_device(f"socket://{m[1]}:{m[2]}") as dev:   # the device kept its layer
            assert dev.hello.loaded_flags & 1 and dev.hello.config_hash.hex() == cfg.content_hash()[:16]
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=20)
        server.stdout.close()
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(str(p) for p in __import__("pathlib").Path("configs").glob("*.toml")))
def test_every_example_config_bit_exact_with_and_without_faults(path):
    cfg = AccelConfig.from_toml(path)
    q = _layer(cfg, seed=2)
    n = 2 * cfg.token_buffer_depth + 5
    x = device_tokens(cfg, n, seed=1)
    for faults in (None, dict(flip=1e-3, drop=3e-4, dup=3e-4, seed=3)):
        with open_device("sim", cfg, faults=faults) as dev:
            dev.load(q)
            assert torch.equal(dev.run(x), q.forward_int(x)), (path, faults)
            s = dev.stats()
        print(f"\n{path} faults={bool(faults)}: {s['tokens']} tokens, {s['cycles']} cycles, "
              f"{s['link']['frames']} frames, {s['retries']} retries")


def _image_crc_of(q, cfg, before=0):
    from moeforge.spec.protocol import image_crc, layer_scale, layer_writes
    return image_crc(layer_writes(q, cfg), layer_scale(q), before)


def test_a_load_corrupted_after_the_frame_crc_is_caught(tiny, monkeypatch):
    """A weight byte flipped in a packet before it is framed (a host-side bug: the frame CRC
    covers the wrong byte) reaches the device intact as far as the link can tell; the image
    CRC read after the load says it is not the layer sent. The device stays usable: a clean
    load is accepted and runs bit-exact."""
    from moeforge.host_runtime import DeviceError
    from moeforge.spec.protocol import WRITE_HEADER_BYTES, Op, WriteRun
    cfg, q = tiny
    real = WriteRun.packet
    flipped = []

    def packet(self, start, max_payload):
        p = real(self, start, max_payload)
        if self.op == Op.WRITE_MEMORY and not flipped:
            flipped.append(start)
            p = p[:WRITE_HEADER_BYTES + 5] + bytes([p[WRITE_HEADER_BYTES + 5] ^ 0x10]) + \
                p[WRITE_HEADER_BYTES + 6:]
        return p

    x = device_tokens(cfg, 5, seed=8)
    with open_device("sim", cfg) as dev:
        assert dev.read_image_crc() == 0                       # nothing written since reset
        monkeypatch.setattr(WriteRun, "packet", packet)
        with pytest.raises(DeviceError, match=r"the device's image CRC 0x[0-9a-f]{8} is not the "
                                              r"CRC 0x[0-9a-f]{8} of the layer sent: the load "
                                              r"was corrupted"):
            dev.load(q)
        assert flipped
        monkeypatch.setattr(WriteRun, "packet", real)
        before = dev.read_image_crc()
        dev.load(q)
        assert dev.read_image_crc() == _image_crc_of(q, cfg, before)
        assert torch.equal(dev.run(x), q.forward_int(x))


def test_image_crc_holds_under_link_faults(tiny):
    """A load over a link that flips, drops and duplicates bytes: frames are retransmitted and
    duplicates answered from the stored response, never written twice, so the device's image
    CRC is exactly the layer's (the load checks it, and so does this test)."""
    cfg, q = tiny
    with open_device("sim", cfg, faults=dict(flip=1e-3, drop=3e-4, dup=3e-4, seed=21)) as dev:
        dev.load(q)
        assert dev.read_image_crc() == _image_crc_of(q, cfg)
        assert dev.stats()["retries"] > 0
        counters = dev.link.hello().link_counters
        x = device_tokens(cfg, 9, seed=2)
        assert torch.equal(dev.run(x), q.forward_int(x))
    assert counters["duplicates"] > 0 and counters["crc_errors"] > 0, counters
