"""The host runtime needs neither Amaranth nor the RTL: in a Python where importing `amaranth`
raises, ``import moeforge.host_runtime`` works and a whole session on a served simulated device
(``moeforge serve-sim`` in another process, reached through ``socket://``) loads a layer, runs
tokens bit-exact against the golden model and reads statistics, without importing anything of
`moeforge.rtl` or `moeforge.sim`. The device specification (`moeforge.spec`) imports neither
torch, numpy nor Amaranth, nor anything of the project but the config and the leaves below it (the errors, the checks).
"""

import json
import re
import selectors
import signal
import subprocess
import sys
import time

import pytest

TINY = "configs/tiny.toml"

# Installed first on sys.meta_path of the child: every import of a package in BLOCKED raises.
BLOCK = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} may not be imported here")
        return None

sys.meta_path.insert(0, Blocked())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        sys.exit(f"the block of {name} does not work")
"""


def _blocking(*names: str) -> str:
    """Code that makes importing any of `names` raise, then checks that it does."""
    return f"BLOCKED = {names!r}\n" + BLOCK


SESSION = """
import json
import torch
import moeforge.host_runtime
from moeforge import AccelConfig
from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
from moeforge.host_runtime import open_device

cfg = AccelConfig.from_toml(sys.argv[2])
q = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=3), cfg, calib=make_hf_input(cfg, 256, seed=4))
n = 2 * cfg.token_buffer_depth + 3
top = 1 << (cfg.input_bits - 1)
x = torch.randint(-top, top, (n, cfg.d_model), generator=torch.Generator().manual_seed(5),
                  dtype=torch.int16 if cfg.input_bits == 16 else torch.int8)
with open_device(sys.argv[1], cfg) as dev:
    dev.load(q)
    y = dev.run(x)
    stats = dev.stats()
forbidden = sorted(m for m in sys.modules if m.split(".")[0] == "amaranth"
                   or m.startswith(("moeforge.rtl", "moeforge.sim")))
print(json.dumps(dict(exact=torch.equal(y, q.forward_int(x)), n=n, tokens=stats["tokens"],
                      batches=stats["batches"], cycles=stats["cycles"],
                      routed=stats["totals"]["tokens_routed"], forbidden=forbidden)))
"""

SPEC = """
import json
import moeforge.spec.arith, moeforge.spec.image, moeforge.spec.protocol
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("moeforge", "torch", "numpy"))))
"""


def _serve(deadline: float):
    """``moeforge serve-sim`` of the tiny config: (process, host, port) once it listens."""
    server = subprocess.Popen([sys.executable, "-m", "moeforge.cli", "serve-sim", "--config", TINY,
                               "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    sel = selectors.DefaultSelector()
    sel.register(server.stdout, selectors.EVENT_READ)
    try:
        while not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise AssertionError("moeforge serve-sim did not start listening in time")
        line = server.stdout.readline()
        m = re.search(r"listening on ([\d.]+):(\d+)", line)
        assert m, f"moeforge serve-sim said {line!r}"
        return server, m[1], int(m[2])
    except BaseException:
        server.kill()
        server.wait()
        server.stdout.close()
        raise
    finally:
        sel.close()


@pytest.mark.verilator
def test_a_device_session_in_a_python_without_amaranth():
    server, host, port = _serve(time.monotonic() + 900)    # a first build takes minutes
    try:
        child = subprocess.run(
            [sys.executable, "-c", _blocking("amaranth") + SESSION,
             f"socket://{host}:{port}", TINY],
            capture_output=True, text=True, timeout=600)
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=30)
        server.stdout.close()
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.splitlines()[-1])
    assert result["forbidden"] == []
    assert result["exact"] is True
    assert result["tokens"] == result["n"] and result["batches"] == 3
    assert result["cycles"] > 0 and result["routed"] == result["n"]
    assert code == 0


def test_the_specification_imports_only_the_config():
    child = subprocess.run(
        [sys.executable, "-c", _blocking("amaranth", "torch", "numpy") + SPEC],
        capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    modules = json.loads(child.stdout.splitlines()[-1])
    assert modules == ["moeforge", "moeforge.checks", "moeforge.config", "moeforge.errors", "moeforge.spec",
                       "moeforge.spec.arith", "moeforge.spec.image", "moeforge.spec.protocol"]


# Names of the spec still declared elsewhere (none today). An entry must become an import of the
# spec and leave this list: the test fails on an entry that is no longer declared, as on a new one.
STILL_DECLARED = {
    "protocol": set(),
    "image": set(),
}


@pytest.mark.parametrize("module", sorted(STILL_DECLARED))
def test_no_specified_name_declared_twice(module):
    """No module of the package but the spec's own assigns or defines a name of
    `moeforge.spec.protocol` or `moeforge.spec.image` (``HEADER_BYTES = {...}`` in the RTL,
    ``MAGIC = 0xA5`` in the host runtime, a second ``RouterAddressMap``): the RTL and the host
    runtime import the one definition."""
    import ast
    import importlib
    from pathlib import Path

    spec = importlib.import_module(f"moeforge.spec.{module}")
    root = Path(__file__).resolve().parents[2]
    names = set(spec.__all__)
    found = set()
    for folder in ("moeforge", "hls_models", "rtl", "sim", "host_runtime", "fpga_boards"):
        for path in sorted((root / folder).rglob("*.py")):
            if path == Path(spec.__file__).resolve():
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    declared = [node.name]
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    declared = [t.id for t in targets if isinstance(t, ast.Name)]
                else:
                    continue
                found |= {(str(path.relative_to(root)), n) for n in declared if n in names}
    assert not found - STILL_DECLARED[module], f"declared again: {sorted(found - STILL_DECLARED[module])}"
    assert not STILL_DECLARED[module] - found, \
        f"no longer declared (take them off STILL_DECLARED): {sorted(STILL_DECLARED[module] - found)}"
