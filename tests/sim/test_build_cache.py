"""The Verilator build cache and cocotb runner of moeforge.sim.build, on a small counter."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from counter_design import Counter

from moeforge.rtl.export import to_verilog
from moeforge.sim.build import SimBuildError, SimFailure, build_cached, run_cocotb

pytestmark = pytest.mark.verilator


def counter_verilog():
    return to_verilog(Counter(), "counter")


def test_cold_then_warm_and_concurrent_builds(tmp_path):
    """Two processes asking at once build once; a later call is a cache hit with no compile."""
    cache = tmp_path / "cache"
    verilog = counter_verilog()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(build_cached, verilog, "counter", cache_dir=cache)
                   for _ in range(2)]
        handles = [f.result() for f in futures]
    assert handles[0].key == handles[1].key
    assert sorted(h.cached for h in handles) == [False, True]
    warm = build_cached(verilog, "counter", cache_dir=cache)
    assert warm.cached and warm.seconds < 1.0
    assert warm.executable.is_file()
    # Only the finished build and the lock folder remain: no temporary build folders.
    assert sorted(p.name for p in cache.iterdir()) == [".locks", warm.key]


def test_every_input_is_in_the_key():
    from moeforge.sim.build import _build_key

    base = ("module counter; endmodule", "counter", (), None, None)
    keys = {_build_key(*base)[0],
            _build_key("module counter;  endmodule", *base[1:])[0],
            _build_key(base[0], base[1], ("-O3",), None, None)[0],
            _build_key(*base[:3], "vcd", None)[0],
            _build_key(*base[:4], "`verilator_config")[0]}
    assert len(keys) == 5


def test_run_results_and_failure(sim_build, tmp_path):
    handle = sim_build(Counter(), "counter")
    results = run_cocotb(handle, "cocotb_counter", test_dir=tmp_path / "ok",
                         testcase="counter_counts", seed=5)
    assert (results.tests, results.passed, results.failed) == (1, 1, 0)
    assert results.seed == 5 and results.results_xml.is_file() and results.log_path.is_file()

    with pytest.raises(SimFailure) as info:
        run_cocotb(handle, "cocotb_counter", test_dir=tmp_path / "bad",
                   testcase="counter_always_fails", seed=7)
    message = str(info.value)
    assert "FAILED counter_always_fails: deliberate failure 1234" in message
    assert "COCOTB_RANDOM_SEED=7" in message
    assert info.value.results.failed == 1


def test_simulator_crash_is_a_failure(sim_build, tmp_path):
    handle = sim_build(Counter(), "counter")
    with pytest.raises(SimFailure, match="simulator") as info:
        run_cocotb(handle, "cocotb_counter", test_dir=tmp_path, testcase="counter_crashes")
    assert info.value.results.simulator_error


def test_missing_test_module_is_clear(sim_build, tmp_path):
    handle = sim_build(Counter(), "counter")
    with pytest.raises(ValueError, match="'no_such_cocotb_module' is not importable"):
        run_cocotb(handle, "no_such_cocotb_module", test_dir=tmp_path)
    with pytest.raises(ValueError, match="the build has no tracing"):
        run_cocotb(handle, "cocotb_counter", test_dir=tmp_path, waves_dir=tmp_path / "w")


def test_build_error_shows_the_log(tmp_path):
    broken = counter_verilog().replace("endmodule", "wire oops = ;\nendmodule")
    with pytest.raises(SimBuildError, match="Verilator build of 'counter' failed") as info:
        build_cached(broken, "counter", cache_dir=tmp_path)
    assert "syntax error" in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".failed")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no module named 'other'"):
        build_cached(counter_verilog(), "other", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="waves must be True, False, 'fst' or 'vcd'"):
        build_cached(counter_verilog(), "counter", cache_dir=tmp_path, waves="gif")


def test_cache_location_from_environment(tmp_path, monkeypatch):
    from moeforge.sim.build import cache_root

    monkeypatch.setenv("MOEFORGE_CACHE", str(tmp_path))
    assert cache_root() == tmp_path.resolve() / "sim"
    monkeypatch.delenv("MOEFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == (tmp_path / "xdg").resolve() / "moeforge" / "sim"
    assert os.fspath(cache_root(tmp_path / "x")) == os.fspath((tmp_path / "x").resolve())


def test_build_once_announces_only_a_build_that_is_not_there(tmp_path):
    """`on_build` runs once when the build has to happen, never for a finished one."""
    from moeforge.sim.build import build_once

    calls = []

    def build_into(path):
        (path / "done").write_text("yes")

    def complete(path):
        return (path / "done").is_file()

    assert build_once(tmp_path, "k", {}, complete, build_into,
                      on_build=lambda: calls.append("cold")) is False
    assert build_once(tmp_path, "k", {}, complete, build_into,
                      on_build=lambda: calls.append("warm")) is True
    assert calls == ["cold"]
