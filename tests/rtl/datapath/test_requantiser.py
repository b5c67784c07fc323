"""The Requantiser in Verilator under cocotb, bit-exact against the golden model.

The cocotb side is tests/rtl/datapath/cocotb_requantiser.py; this file exports the component, builds it
through the simulation cache and runs the cocotb module with its parameters in the environment.
"""

import json

import pytest

from moeforge.hls_models.fixed_point import MULT_BITS
from moeforge.rtl.export import to_verilog, verilog_ports
from moeforge.rtl.datapath.requantiser import Requantiser
from moeforge.sim.build import build_cached, run_cocotb
from moeforge.sim.toolchain import ToolchainError, fst_supported, verilator_lint

pytestmark = pytest.mark.verilator

COCOTB_MODULE = "cocotb_requantiser"
CONFIGS = {
    "acc32-int8-x4": dict(in_width=32, out_bits=8, lanes=4),
    "acc24-int16-x1": dict(in_width=24, out_bits=16, lanes=1),
}


def cocotb_params(dut, *, beats=300, in_stall=0.3, out_stall=0.3, perturb=None):
    """The cocotb module's parameters, all derived from the component itself."""
    ports = verilog_ports(dut)

    def prefix(stream):
        return ports[f"{stream}.valid"].name.removesuffix("__valid")

    return json.dumps({
        "in_width": dut.in_width, "out_bits": dut.out_bits, "lanes": dut.lanes,
        "mult_bits": dut.mult_bits, "latency": dut.latency,
        "in_layout": [dut.in_layout[f].offset for f in ("acc", "mult", "shift")],
        "i_stream": prefix("i_stream"), "o_stream": prefix("o_stream"),
        "beats": beats, "in_stall": in_stall, "out_stall": out_stall, "perturb": perturb,
    })



@pytest.mark.parametrize("config", CONFIGS)
def test_requantiser_matches_golden(sim_build, tmp_path, config):
    dut = Requantiser(**CONFIGS[config])
    assert dut.mult_bits == MULT_BITS
    handle = sim_build(dut, "requantiser")
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path,
                         extra_env={"MOEFORGE_TEST_PARAMS": cocotb_params(dut)})
    assert (results.tests, results.passed) == (2, 2), results.summary()


def test_scoreboard_failure_is_reported(sim_build, tmp_path):
    """One expected value off by one LSB must fail the run and name the token and element."""
    dut = Requantiser(**CONFIGS["acc32-int8-x4"])
    handle = sim_build(dut, "requantiser")
    token, element = 40, 2         # past the directed beats: a random token
    results = run_cocotb(
        handle, COCOTB_MODULE, test_dir=tmp_path, testcase="requantiser_random", check=False,
        extra_env={"MOEFORGE_TEST_PARAMS": cocotb_params(dut, perturb=[token, element])})
    assert not results.ok
    assert (results.tests, results.failed) == (1, 1), results.summary()
    message = results.failures[0].message
    assert f"requantiser: mismatch at token {token}, element {element} (cycle " in message
    # The scoreboard expected one more than the RTL gave.
    expected, actual = message.split("expected ", 1)[1].split(" (", 1)[0].split(", got ")
    assert int(expected) == int(actual) + 1, message


@pytest.mark.parametrize("config", [*CONFIGS.values(), dict(in_width=16, out_bits=32, lanes=1),
                                    dict(in_width=64, out_bits=64, lanes=2),
                                    dict(in_width=2, out_bits=2, lanes=1)])
def test_requantiser_verilog_lints_clean(config):
    result = verilator_lint(to_verilog(Requantiser(**config), "requantiser"), "requantiser")
    assert result.ok, result.output


def test_lint_waivers_keep_design_warnings():
    """The Amaranth waivers must not hide a real problem: a register nobody reads."""
    from amaranth.hdl import Module, Signal
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Careless(wiring.Component):
        a: In(8)
        y: Out(8)

        def elaborate(self, platform):
            m = Module()
            forgotten = Signal(8)
            m.d.sync += forgotten.eq(self.a)
            m.d.sync += self.y.eq(self.a + 1)
            return m

    result = verilator_lint(to_verilog(Careless(), "careless"), "careless")
    assert not result.ok
    assert any("UNUSEDSIGNAL" in w and "'forgotten'" in w for w in result.warnings), result.output


def test_waves_are_written(sim_build, tmp_path):
    """FST where the toolchain can (lz4 headers), VCD otherwise; into the folder asked for."""
    dut = Requantiser(in_width=32, out_bits=8, lanes=2)
    handle = sim_build(dut, "requantiser", waves=True)
    assert handle.wave_format == ("fst" if fst_supported() else "vcd")
    waves_dir = tmp_path / "waves"
    results = run_cocotb(handle, COCOTB_MODULE, test_dir=tmp_path / "run", waves_dir=waves_dir,
                         testcase="requantiser_throughput",
                         extra_env={"MOEFORGE_TEST_PARAMS": cocotb_params(dut, beats=10)})
    assert results.waves_path == waves_dir / f"requantiser.{handle.wave_format}"
    assert results.waves_path.stat().st_size > 0


def test_fst_without_lz4_is_a_clear_error():
    if fst_supported():
        pytest.skip("this machine has the lz4 development files: FST builds work")
    with pytest.raises(ToolchainError, match="FST tracing needs the lz4 development files"):
        build_cached(to_verilog(Requantiser(), "requantiser"), "requantiser", waves="fst")
