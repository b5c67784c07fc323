"""`moeforge sim --unit` and sim.unit_sim: bit-exact summaries, failures that are reported, bad input."""

import json

import pytest
from testkit import usage_error

from moeforge import AccelConfig
from moeforge.cli import main
from moeforge.sim.unit_sim import run_unit

pytestmark = pytest.mark.verilator
TINY = "configs/tiny.toml"


UNITS = ["requantiser", "combiner", "router", "hidden", "expert_ffn"]


@pytest.mark.parametrize("unit", UNITS)
def test_cli_sim_json(unit, capsys):
    assert main(["sim", "--config", TINY, "--unit", unit, "--tokens", "8", "--seed", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["unit"] == unit and r["tokens"] == 8
    assert r["passed"] and r["mismatches"] == 0 and r["cycles"] > 0 and r["sim_cycles_per_s"] > 0
    assert r["compared"] == r["expected"] and r["compared"]["tokens"] >= 8, r
    if unit == "expert_ffn":      # the unit with MACs reports their utilisation
        assert 0 < r["mac_util"] <= 1


@pytest.mark.parametrize("unit", UNITS)
def test_perturbed_reference_fails(unit, tmp_path):
    r = run_unit(AccelConfig.from_toml(TINY), unit, tokens=8, seed=3, perturb=True, workdir=tmp_path)
    assert not r["passed"] and r["mismatches"] == 1      # one element off by one, all compared
    assert r["compared"] == r["expected"], r
    assert "mismatch at token" in r["failure"]


@pytest.mark.parametrize("argv,message", [
    (["--unit", "requantiser", "--tokens", "0"], "tokens"),
    (["--unit", "requantiser", "--tokens", "33"], "token_buffer_depth=32"),
    (["--unit", "nonesuch"], "unit"),
    (["--unit", "hidden", "--tokens", "33"], "token_buffer_depth=32"),
])
def test_cli_sim_bad_input_exit_2(argv, message, capsys):
    assert message in usage_error(["sim", "--config", TINY, *argv], capsys)


def test_bench_modules_import_outside_a_simulation(tmp_path):
    """Tests and bench scripts import the bench modules for their pytest-side helpers: a
    MOEFORGE_TEST_PARAMS left in the environment (here naming no file) must not break that."""
    import os
    import subprocess
    import sys

    modules = [f"moeforge.sim.benches.{m}" for m in ("gemm", "expert_ffn", "router", "combiner")]
    code = "import importlib\n" + "".join(
        f"assert importlib.import_module({m!r}).P == {{}}\n" for m in modules)
    env = {**os.environ, "MOEFORGE_TEST_PARAMS": str(tmp_path / "no-such-params.json")}
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
