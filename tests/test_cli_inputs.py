"""Bad inputs of the command line and the API: one line on stderr, exit 2, before any work,
nothing damaged and nothing left behind; and long steps that say what they are doing.

No Verilator here: every check of ``moeforge run`` happens before the device is opened, and
``open_device`` is replaced by a stub that fails the test if it is reached (or, where the
output writing itself is under test, by a fake device that runs the golden model).
"""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import moeforge.host_runtime
import moeforge.rtl.units
from moeforge import AccelConfig, ShapeError
from moeforge.cli import main
from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
from moeforge.host_runtime import open_device
from moeforge.host_runtime.errors import NoSuchDevice

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


class WorkStarted(AssertionError):
    """Raised by a stub of the expensive step: the command began its work before it refused."""


def _no_work(*args, **kwargs):
    raise WorkStarted("the command started its work before checking its arguments")


def cli(argv, capsys):
    """``(exit status, stdout, stderr)`` of ``moeforge argv``; argparse's exits included."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moeforge") and "error:" in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def tiny():
    return AccelConfig.from_toml(TINY)


@pytest.fixture(scope="module")
def layer(tiny):
    block = make_hf_block(tiny, seed=5)
    return QuantizedMoELayer.from_hf(block, tiny, calib=make_hf_input(tiny, 64, seed=6))


@pytest.fixture(scope="module")
def files(layer, tmp_path_factory):
    """A weight file and an input of 12 float tokens for ``moeforge run``."""
    d = tmp_path_factory.mktemp("run")
    layer.save(d / "layer.safetensors")
    np.save(d / "x.npy", make_hf_input(layer.cfg, 12, seed=7).numpy())
    return d


def _run_args(files, out, *extra):
    return ["run", "--config", TINY, "--model", str(files / "layer.safetensors"),
            "--input", str(files / "x.npy"), "-o", str(out), *extra]


@pytest.fixture
def no_device(monkeypatch):
    monkeypatch.setattr(moeforge.host_runtime, "open_device", _no_work)


# --- output paths ------------------------------------------------------------------------

def _output_commands(files):
    return {
        "quantize": lambda out: ["quantize", "--config", TINY, "--calib-tokens", "32", "-o", str(out)],
        "verilog": lambda out: ["verilog", "--config", TINY, "--unit", "requantiser", "-o", str(out)],
        "run": lambda out: _run_args(files, out),
    }


@pytest.fixture
def no_work(monkeypatch, no_device):
    """Every command's expensive step fails the test if it is reached."""
    import moeforge.hls_models
    monkeypatch.setattr(moeforge.hls_models, "make_hf_block", _no_work)
    monkeypatch.setattr(moeforge.rtl.units, "unit_verilog", _no_work)
    monkeypatch.setattr(moeforge.rtl.units, "all_verilog", _no_work)


@pytest.mark.parametrize("command", ["quantize", "verilog", "run"])
@pytest.mark.parametrize("where", ["folder", "missing folder"])
def test_output_path_refused_before_the_work(command, where, files, tmp_path, no_work, capsys,
                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    out = Path("out") if where == "folder" else Path("nodir") / "x.bin"
    code, _, err = cli(_output_commands(files)[command](out), capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"-o {out}" in line
    assert ("is a folder" if where == "folder" else "does not exist") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("command", ["quantize", "verilog"])
@pytest.mark.parametrize("what", ["folder", "file"])
def test_unwritable_output_refused(command, what, shared_dir, unprivileged):
    """As root every file is writable, so the command runs as user 'nobody' (setpriv)."""
    target = shared_dir / "ro"
    target.mkdir()
    out = target / "x.out"
    if what == "file":
        target.chmod(0o777)         # the folder is writable, the existing file is not
        out.write_text("keep me")
        out.chmod(0o444)
    else:
        target.chmod(0o555)
    argv = _output_commands(None)[command](out)
    cmd = unprivileged([sys.executable, "-m", "moeforge.cli", *argv])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=shared_dir)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r.stderr)
    assert ("is not writable" in line) and str(out) in line
    assert sorted(p.name for p in target.iterdir()) == ([] if what == "folder" else ["x.out"])
    if what == "file":
        assert out.read_text() == "keep me"


def test_quantize_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    """A write that fails half way leaves the existing output as it was and no temporary file."""
    out = tmp_path / "layer.safetensors"
    out.write_bytes(b"the previous image")

    def half_save(self, path):
        Path(path).write_bytes(b"half an ima")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(QuantizedMoELayer, "save", half_save)
    code, _, err = cli(["quantize", "--config", TINY, "--calib-tokens", "32", "-o", str(out)], capsys)
    assert code == 2
    assert "No space left on device" in one_error_line(err)
    assert out.read_bytes() == b"the previous image"
    assert [p.name for p in tmp_path.iterdir()] == ["layer.safetensors"]


def test_quantize_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "layer.safetensors"
    code, stdout, _ = cli(["quantize", "--config", TINY, "--calib-tokens", "32", "-o", str(out)], capsys)
    assert code == 0 and f"wrote {out}" in stdout
    assert QuantizedMoELayer.load(out, AccelConfig.from_toml(TINY)).cfg.name == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["layer.safetensors"]


def test_verilog_writes_the_file_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "rq.v"
    code, _, err = cli(["verilog", "--config", TINY, "--unit", "requantiser", "-o", str(out)], capsys)
    assert code == 0 and f"wrote {out}" in err
    assert "module" in out.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["rq.v"]


class _FakeDevice:
    """Stands in for a device so that ``moeforge run``'s own work (reading, streaming,
    writing) is tested without Verilator: outputs are the golden model's."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def load(self, q, progress=None):
        self.q = q

    def stream(self, batches):
        for x in batches:
            yield self.q.dequantize_output(self.q.forward_int(self.q.quantize_input(x)))

    def stats(self):
        return {"device": "fake", "cycles": 0, "hits": 0, "misses": 0, "retries": 0,
                "tokens_per_second": 1.0}


def test_run_failure_while_writing_keeps_the_old_output(files, tmp_path, monkeypatch, capsys, layer):
    out = tmp_path / "y.npy"
    out.write_bytes(b"the previous output")
    monkeypatch.setattr(moeforge.host_runtime, "open_device",
                        lambda spec, cfg, faults=None: _FakeDevice(cfg))
    real_save = np.save

    def half_save(path, arr, *a, **k):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", half_save)
    code, _, err = cli(_run_args(files, out, "--no-progress"), capsys)
    assert code == 2
    assert "No space left on device" in one_error_line(err)
    assert out.read_bytes() == b"the previous output"
    assert [p.name for p in tmp_path.iterdir()] == ["y.npy"]

    monkeypatch.setattr(np, "save", real_save)       # and when the write succeeds:
    code, stdout, _ = cli(_run_args(files, out, "--no-progress"), capsys)
    assert code == 0 and f"wrote {out}" in stdout
    x = torch.from_numpy(np.load(files / "x.npy"))
    assert torch.equal(torch.from_numpy(np.load(out)), layer(x))
    assert [p.name for p in tmp_path.iterdir()] == ["y.npy"]


# --- --faults ----------------------------------------------------------------------------

@pytest.mark.parametrize("faults, expect", [
    ("flip=2", "flip must be in [0, 1), not 2"),
    ("flip=-0.1", "flip must be in [0, 1), not -0.1"),
    ("flip=nan", "flip must be in [0, 1), not nan"),
    ("flip=inf", "flip must be in [0, 1), not inf"),
    ("drop=1", "drop must be in [0, 1), not 1"),
    ("dup=often", "dup must be a number in [0, 1), not 'often'"),
    ("seed=-1", "seed must be in [0, 4294967295], not -1"),
    ("seed=1.5", "seed must be an integer in [0, 4294967295], not '1.5'"),
    ("flip=0.1,flip=0.2", "flip is given twice"),
    ("flop=0.1", "'flop=0.1' is not one of flip=RATE"),
])
def test_faults_are_a_usage_error(faults, expect, files, tmp_path, no_device, capsys):
    code, _, err = cli(_run_args(files, tmp_path / "y.npy", "--faults", faults), capsys)
    assert code == 2
    assert expect in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


# --- numeric options ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, expect", [
    (["accuracy", TINY, "--tokens", "100000000"], "--tokens: must be in [1, 262144], not 100000000"),
    (["accuracy", TINY, "--tokens", "0"], "--tokens: must be in [1, 262144], not 0"),
    (["accuracy", TINY, "--seed", "-1"], "--seed: must be in [0, 4294967295], not -1"),
    (["accuracy", TINY, "--seed", str(2**32)], "--seed: must be in [0, 4294967295]"),
    (["demo", "--config", TINY, "--tokens", "100000000"], "--tokens: must be in [1, 262144]"),
    (["demo", "--config", TINY, "--sim-tokens", "100000000"], "--sim-tokens: must be in [1, 262144]"),
    (["demo", "--config", TINY, "--device-tokens", "100000000"], "--device-tokens: must be in [1, 262144]"),
    (["demo", "--config", TINY, "--device-tokens", "0"], "--device-tokens: must be in [1, 262144]"),
    (["demo", "--config", TINY, "--seed", "-3"], "--seed: must be in [0, 4294967295]"),
    (["quantize", "--config", TINY, "-o", "x.safetensors", "--calib-tokens", "100000000"],
     "--calib-tokens: must be in [1, 262144]"),
    (["quantize", "--config", TINY, "-o", "x.safetensors", "--seed", "-1"], "--seed: must be in [0, 4294967295]"),
    (["quantize", "--config", TINY, "-o", "x.safetensors", "--seed", "x"],
     "--seed: must be an integer in [0, 4294967295], not 'x'"),
    (["serve-sim", "--config", TINY, "--port", "99999"], "--port: must be in [0, 65535], not 99999"),
    (["serve-sim", "--config", TINY, "--port", "-1"], "--port: must be in [0, 65535], not -1"),
])
def test_numeric_options_are_checked_while_parsing(argv, expect, no_work, monkeypatch, tmp_path, capsys):
    import moeforge.hls_models.accuracy
    import moeforge.sim.sim_device
    monkeypatch.setattr(moeforge.hls_models.accuracy, "measure_accuracy", _no_work)
    monkeypatch.setattr(moeforge.sim.sim_device, "serve_sim", _no_work)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(argv, capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"moeforge {argv[0]}: error: argument ") and expect in line
    assert list(tmp_path.iterdir()) == []


# --- socket:// URLs ----------------------------------------------------------------------

BAD_URLS = [
    ("socket://127.0.0.1:99999", "port 99999 is not in [1, 65535]"),
    ("socket://127.0.0.1:0", "port 0 is not in [1, 65535]"),
    ("socket://localhost:abc", "port 'abc' is not a port number"),
    ("socket://:5555", "no host"),
    ("socket://host", "no port"),
    ("socket://host:", "no port"),
    ("socket://[::1]", "no port"),
    ("socket://[::1", "Invalid IPv6 URL"),
    ("socket://host:5555/path", "unexpected '/path' after host:port"),
    ("socket://host:5555?logging=loud", "bad option 'logging=loud'"),
    ("socket://host:5555?speed=1", "bad option 'speed=1'"),
]


@pytest.mark.parametrize("url, expect", BAD_URLS)
def test_open_device_names_the_bad_part_of_a_socket_url(url, expect):
    with pytest.raises(NoSuchDevice) as e:
        open_device(url)
    assert str(e.value) == f"{url}: {expect}" or str(e.value).startswith(f"{url}: {expect} (")
    if "?" not in url:        # pyserial's message named its logging option whatever was wrong
        assert "logging" not in str(e.value)


@pytest.mark.parametrize("url, expect", BAD_URLS[:5])
def test_run_exits_2_on_a_bad_socket_url(url, expect, files, tmp_path, capsys):
    code, _, err = cli(_run_args(files, tmp_path / "y.npy", "--device", url), capsys)
    assert code == 2
    assert f"{url}: {expect}" in one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_a_good_socket_url_reaches_the_connection():
    """The check passes a well-formed URL on to the connection: nothing listens on the port."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # free now, and nothing listening
    with pytest.raises(NoSuchDevice, match="cannot connect"):
        open_device(f"socket://127.0.0.1:{port}")


# --- NaN / Inf tokens --------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_quantize_input_names_the_first_non_finite_token(layer, value):
    x = make_hf_input(layer.cfg, 20, seed=1)
    x[17, 3] = value
    x[18, 0] = float("nan")
    with pytest.raises(ShapeError) as e:
        layer.quantize_input(x)
    assert str(e.value) == f"token 17, element 3 is {value}: the device takes finite numbers"


def test_layer_call_names_the_token_in_the_callers_shape(layer):
    x = make_hf_input(layer.cfg, 12, seed=2).reshape(3, 4, -1)
    x[2, 1, 5] = float("inf")
    with pytest.raises(ShapeError, match=r"^token \[2, 1\], element 5 is inf"):
        layer(x)
    x[2, 1, 5] = 0.0
    assert layer(x).shape == x.shape              # finite tokens still run


def test_finite_tokens_quantize_as_before(layer):
    from moeforge.hls_models.fixed_point import quantize_symmetric
    x = make_hf_input(layer.cfg, 16, seed=3) * 4
    x[0, :2] = torch.tensor([1e30, -1e30])
    q = layer.quantize_input(x)
    bits = layer.cfg.input_bits
    top = 1 << (bits - 1)
    assert q[0, :2].tolist() == [top - 1, -top]               # saturated, as before
    assert torch.equal(q, quantize_symmetric(x / layer.x_smooth, layer.x_scale, bits)
                       .to(layer.input_dtype))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_run_refuses_non_finite_input_before_opening_the_device(value, files, tmp_path, no_device, capsys):
    x = np.load(files / "x.npy")
    x[9, 2] = value
    bad = tmp_path / "bad.npy"
    np.save(bad, x)
    argv = _run_args(files, tmp_path / "y.npy")
    argv[argv.index("--input") + 1] = str(bad)
    code, _, err = cli(argv, capsys)
    assert code == 2
    assert f"--input {bad}: token 9, element 2 is {value}: the device takes finite numbers" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


def test_run_refuses_tokens_of_the_other_width_before_opening_the_device(files, tmp_path, no_device,
                                                                         capsys, tiny):
    """tiny takes int16 tokens (input_bits = 16): an int8 .npy is named, with the width asked for."""
    assert tiny.input_bits == 16
    bad = tmp_path / "int8.npy"
    np.save(bad, np.zeros((3, tiny.d_model), dtype=np.int8))
    argv = _run_args(files, tmp_path / "y.npy")
    argv[argv.index("--input") + 1] = str(bad)
    code, _, err = cli(argv, capsys)
    assert code == 2
    assert (f"--input {bad}: dtype int8; the device takes float or int16 tokens (input_bits=16 in "
            f"config tiny)") in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.npy"]


# --- long steps say what they are doing --------------------------------------------------

class _Pipe:
    """stdout/stderr as a pipe would be: buffered, not a terminal. `flushed` is what a reader
    at the other end could see so far."""

    def __init__(self, tty=False):
        self.raw = io.BytesIO()
        self.stream = io.TextIOWrapper(self.raw, encoding="utf-8", write_through=False)
        self.stream.isatty = lambda: tty

    @property
    def flushed(self) -> str:
        return self.raw.getvalue().decode()


class _Report:
    def __init__(self, family):
        self.family, self.rel_l2, self.route_match = family, 0.01, 1.0
        self.rel_l2_float_input, self.route_match_float_input = 0.02, 0.99
        self.knobs, self.experts_per_token = "int8 input", 2.0

    def as_dict(self):
        return dict(vars(self))


@pytest.fixture
def slow_measure(monkeypatch):
    """`measure_accuracy` replaced by a recorder of what stdout and stderr had shown (flushed)
    when each measurement began; the test's pipes go in `pipes`."""
    import moeforge.hls_models.accuracy
    seen, pipes = [], {}

    def measure(cfg, *, seed, eval_tokens):
        seen.append((cfg.name, *(pipes[k].flushed if pipes else "" for k in ("out", "err"))))
        return _Report(cfg.family)

    monkeypatch.setattr(moeforge.hls_models.accuracy, "measure_accuracy", measure)

    def attach(tty=False):
        pipes["out"], pipes["err"] = _Pipe(), _Pipe(tty)
        monkeypatch.setattr(sys, "stdout", pipes["out"].stream)
        monkeypatch.setattr(sys, "stderr", pipes["err"].stream)
        return pipes

    return seen, attach


def test_accuracy_prints_each_row_as_it_is_measured(slow_measure):
    seen, attach = slow_measure
    pipes = attach()
    small = str(ROOT / "configs" / "switch.toml")
    assert main(["accuracy", TINY, small, "--tokens", "16"]) == 0
    (_, out1, err1), (_, out2, err2) = seen
    assert "config" in out1 and "family" in out1 and TINY not in out1      # the header, first
    assert f"measuring {TINY} (1/2) ..." in err1
    assert TINY in out2 and "mixtral" in out2 and small not in out2        # row 1 before config 2
    assert "knobs" in out1 and "int8 input" in out2                        # the knobs in force
    assert f"measuring {small} (2/2) ..." in err2
    pipes["out"].stream.flush()
    assert small in pipes["out"].flushed.splitlines()[-1]


def test_accuracy_json_keeps_stdout_pure(slow_measure):
    seen, attach = slow_measure
    pipes = attach()
    assert main(["accuracy", TINY, TINY, "--json", "--tokens", "16"]) == 0
    assert seen[0][1] == "" and seen[1][1] == ""
    pipes["out"].stream.flush()
    doc = json.loads(pipes["out"].flushed)
    assert [d["config"] for d in doc] == [TINY, TINY]
    assert f"measuring {TINY} (2/2) ..." in seen[1][2]


def test_accuracy_progress_bar_on_a_terminal(slow_measure):
    seen, attach = slow_measure
    pipes = attach(tty=True)
    assert main(["accuracy", TINY, TINY, "--tokens", "16"]) == 0
    pipes["err"].stream.flush()
    assert f"measuring {TINY}" in pipes["err"].flushed and "2/2" in pipes["err"].flushed
    assert "(1/2) ..." not in pipes["err"].flushed                         # a bar, not log lines


def test_accuracy_refuses_a_custom_config_before_measuring(slow_measure, tmp_path):
    seen, attach = slow_measure
    custom = tmp_path / "custom.toml"
    custom.write_text(Path(TINY).read_text().replace('family = "mixtral"', 'family = "custom"'))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["accuracy", TINY, str(custom)]) == 2
    assert seen == [] and "family 'custom'" in err.getvalue()


def test_demo_flushes_each_step(slow_measure):
    seen, attach = slow_measure
    pipes = attach()
    assert main(["demo", "--config", TINY, "--tokens", "16", "--no-sim"]) == 0
    assert "[1] golden model" in seen[0][1]
    assert "targets" in pipes["out"].flushed                               # flushed, not left buffered


def test_accuracy_real_measurement(capsys):
    code, out, err = cli(["accuracy", TINY, "--tokens", "64", "--json"], capsys)
    assert code == 0
    (r,) = json.loads(out)
    assert r["config"] == TINY and r["tokens"] == 64 and 0 < r["rel_l2"] < 0.05
    assert err == f"measuring {TINY} (1/1) ...\n"
