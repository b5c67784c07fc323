"""`moeforge sim` says "bit-exact" only when its bench compared everything it sent.

The verdict comes from the bench's summary for this run (its nonce), and only if it counted
every expected token and element; benches that misbehave on purpose
(tests/sim/cocotb_verdict_bench.py) must end non-zero with a message naming what is missing.
Also here: sim's options checked while parsing, its temporary folders removed on every path,
a bench for every registered unit.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moeforge import AccelConfig
from moeforge.cli import main
from moeforge.rtl.units import UNITS
from moeforge.sim import layer_sim, unit_sim
from moeforge.sim.scoreboard import Scoreboard, verdict

TINY = "configs/tiny.toml"
NONCE = "feedc0dedeadbeef"


# ------------------------------------------------------------------------------ no simulator

def summary(tokens=4, elements=16, mismatches=0, nonce=NONCE, **extra):
    return dict(nonce=nonce, compared=dict(tokens=tokens, elements=elements), mismatches=mismatches,
                unexpected=0, **extra)


@pytest.mark.parametrize("s,ok,problem", [
    (summary(), True, None),
    (summary(), False, "the simulation failed: boom"),
    (None, True, "the bench wrote no summary: nothing was compared"),
    ("{not json", True, "not a JSON object"),
    (summary(nonce="0" * 16), True, "not this run's"),
    ({k: v for k, v in summary().items() if k != "nonce"}, True, "not this run's"),
    (summary(tokens=0, elements=0), True, "no output token was compared (4 expected)"),
    (summary(tokens=2, elements=8), True, "2 of 4 output tokens were compared"),
    (summary(tokens=5, elements=20), True, "5 of 4 output tokens were compared"),
    (summary(elements=12), True, "12 of 16 output elements were compared"),
    (summary(mismatches=3), True, "3 of 16 compared elements differ"),
    ({**summary(), "unexpected": 1}, True, "1 output tokens came that nobody expected"),
    ({**summary(), "mismatches": None}, True, "no valid counts"),
    ({**summary(), "compared": {"tokens": 4}}, True, "no valid counts"),
    ({**summary(), "mismatches": True}, True, "no valid counts"),
    ({**summary(), "compared": {"tokens": 4.0, "elements": 16}}, True, "no valid counts"),
])
def test_verdict_only_from_a_complete_comparison(s, ok, problem):
    v = verdict(s, nonce=NONCE, tokens=4, elements=16, sim_ok=ok, failure="boom\nmore")
    assert v.passed == (problem is None), v
    if problem is None:
        assert v.problems == () and v.complete and v.mismatches == 0
    else:
        assert problem in v.message, v.message


def test_verdict_needs_something_to_compare():
    v = verdict(summary(tokens=0, elements=0), nonce=NONCE, tokens=0, elements=0, sim_ok=True)
    assert not v.passed and "nothing to compare" in v.message


def test_counting_scoreboard_counts_every_element():
    sb = Scoreboard("unit", stop=False)
    sb.add_expected_many([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]])
    sb.add_received([1, 2, 3], cycle=1)
    sb.add_received([4, 0, 0], cycle=2)          # two elements differ
    sb.add_received([7, 8], cycle=3)             # wrong length: all three count as differing
    assert (sb.compared, sb.elements, sb.mismatches, sb.matched) == (3, 9, 5, 1)
    with pytest.raises(AssertionError) as info:
        sb.finish()                               # the fourth never arrived
    message = str(info.value)
    assert message.startswith("unit: mismatch at token 1, element 1 (cycle 2): expected 5, got 0")
    assert "in all: 5 of 9 elements differ in 3 of 4 tokens compared" in message


def test_counting_scoreboard_fails_on_unexpected_tokens():
    sb = Scoreboard("unit", stop=False)
    with pytest.raises(AssertionError, match="unexpected token 1"):
        sb.compare([[1]], [[1], [2]])
    assert (sb.compared, sb.unexpected, sb.mismatches) == (1, 1, 0)


def test_every_datapath_unit_has_a_bench():
    """`moeforge sim --unit` runs each unit the README lists as verified against the golden model
    (the tops run under `moeforge sim` without --unit, the link in its own tests)."""
    assert {"requantiser", "combiner", "router", "hidden", "expert_ffn"} <= set(unit_sim.BENCHES)
    assert set(unit_sim.BENCHES) <= set(UNITS)
    for name, bench in unit_sim.BENCHES.items():
        assert bench.unit == name


def _no_build(*args, **kwargs):
    raise AssertionError("a usage error must be reported before anything is built")


@pytest.mark.parametrize("argv,message", [
    (["--unit", "requantiser", "--stall", "1.0"], "argument --stall: must be in [0.0, 1.0), not 1.0"),
    (["--unit", "requantiser", "--stall", "-1"], "argument --stall: must be in [0.0, 1.0)"),
    (["--stall", "nan"], "argument --stall: must be in [0.0, 1.0)"),
    (["--stall", "often"], "argument --stall: must be a number"),
    (["--tokens", "0"], "argument --tokens: must be in [1, 262144], not 0"),
    (["--tokens", "100000000"], "argument --tokens: must be in [1, 262144]"),
    (["--tokens", "1.5"], "argument --tokens: must be an integer"),
    (["--seed", "-1"], "argument --seed: must be in [0, 4294967295], not -1"),
    (["--seed", str(2**32)], "argument --seed: must be in [0, 4294967295]"),
    (["--mem-latency", "0"], "argument --mem-latency: must be in [1, 1024], not 0"),
    (["--mem-latency", "1025"], "argument --mem-latency: must be in [1, 1024]"),
    (["--mem-bandwidth", "0"], "argument --mem-bandwidth: must be a positive number"),
    (["--mem-bandwidth=-1/2"], "argument --mem-bandwidth: must be a positive number"),
    (["--mem-bandwidth", "1/0"], "argument --mem-bandwidth: must be a positive number"),
    (["--mem-bandwidth", "fast"], "argument --mem-bandwidth: must be a positive number"),
])
def test_sim_options_are_usage_errors_before_anything_is_built(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("moeforge.sim.build.build_cached", _no_build)
    with pytest.raises(SystemExit) as info:
        main(["sim", "--config", TINY, *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_sim_bandwidth_accepts_fractions():
    from fractions import Fraction

    from moeforge.cli_sim import bytes_per_cycle
    assert bytes_per_cycle("1/2") == Fraction(1, 2) and bytes_per_cycle("4") == 4
    assert bytes_per_cycle("2.5") == Fraction(5, 2)


@pytest.mark.parametrize("make,message", [
    (lambda tmp: tmp, "is a folder, not a file"),
    (lambda tmp: tmp / "missing" / "t.json", "does not exist"),
])
def test_trace_path_is_checked_before_anything_is_built(make, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("moeforge.sim.build.build_cached", _no_build)
    assert main(["sim", "--config", TINY, "--tokens", "4", "--trace", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "--trace" in err and message in err and err.count("\n") == 1, err


def test_trace_in_an_unwritable_folder(shared_dir, unprivileged):
    """Refused before anything is built (as 'nobody' under root, where every folder is writable)."""
    ro = shared_dir / "ro"
    ro.mkdir(mode=0o555)
    cmd = unprivileged([sys.executable, "-m", "moeforge.cli", "sim", "--config", str(Path(TINY).resolve()),
                        "--trace", str(ro / "t.json")])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=shared_dir)
    assert r.returncode == 2, r.stderr
    assert "--trace" in r.stderr and "is not writable" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("kw,message", [
    (dict(stall=1.0), "stall: must be a probability in [0, 1), not 1.0"),
    (dict(stall=float("nan")), "stall: must be a probability in [0, 1), not nan"),
    (dict(seed=-1), "seed: must be an integer in [0, 2**32), not -1"),
    (dict(seed=2**32), "seed: must be an integer in [0, 2**32)"),
    (dict(tokens=0), "tokens: must be a positive number of tokens, not 0"),
    (dict(tokens=True), "tokens: must be a positive number of tokens, not True"),
])
def test_run_options_checked_by_the_api(kw, message, monkeypatch):
    import re

    from moeforge.errors import ConfigError
    monkeypatch.setattr("moeforge.sim.build.build_cached", _no_build)
    cfg = AccelConfig.from_toml(TINY)
    args = dict(tokens=4, seed=0, stall=0.3) | kw
    with pytest.raises(ConfigError, match=re.escape(message)):
        unit_sim.run_unit(cfg, "requantiser", **args)
    with pytest.raises(ConfigError, match=re.escape(message)):
        layer_sim.run_layer(cfg, **args)


# ------------------------------------------------------------------------------ Verilator

def _misbehaving(monkeypatch, mode, unit="requantiser"):
    """Make `unit`'s bench the misbehaving module, in `mode` (the tool's own stimulus)."""
    real = unit_sim.BENCHES[unit]

    def stimulus(*args, **kwargs):
        return {**real.stimulus(*args, **kwargs), "test_mode": mode}

    monkeypatch.setitem(unit_sim.BENCHES, unit, dataclasses.replace(
        real, module="cocotb_verdict_bench", stimulus=stimulus, testcase=None))


def _sim_unit(capsys, *extra):
    code = main(["sim", "--config", TINY, "--unit", "requantiser", "--tokens", "8", "--seed", "3",
                 *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.verilator
@pytest.mark.parametrize("mode,message", [
    ("silent", "the bench wrote no summary: nothing was compared"),
    ("half", "64 of 128 output tokens were compared"),
    ("stale_nonce", "the summary is not this run's (nonce '0123456789abcdef'"),
    ("nothing", "no output token was compared (128 expected)"),
])
def test_a_bench_that_did_not_compare_everything_is_never_bit_exact(mode, message, capsys, monkeypatch):
    _misbehaving(monkeypatch, mode)
    code, out, err = _sim_unit(capsys)
    assert code == 1
    assert "bit-exact" not in out and "NOT VERIFIED" in out, out
    assert f"moeforge: error: requantiser @ tiny: not verified: {message}" in err, err
    assert err.strip().splitlines()[-1].startswith("moeforge: error: "), err


@pytest.mark.verilator
def test_a_stale_summary_in_the_run_folder_is_not_this_runs(tmp_path, monkeypatch):
    """A summary left by an earlier run in the same folder (even one in the old format that
    says 0 mismatches) must not count for a bench that compares nothing."""
    _misbehaving(monkeypatch, "silent")
    (tmp_path / "bench.summary.json").write_text(json.dumps(
        dict(summary(tokens=128, elements=512), mismatches=0, cycles=100, tokens=128, wall_s=1.0)))
    r = unit_sim.run_unit(AccelConfig.from_toml(TINY), "requantiser", tokens=8, seed=3,
                          workdir=tmp_path)
    assert not r["passed"] and r["compared"] is None and r["mismatches"] is None
    assert r["problems"] == ["the bench wrote no summary: nothing was compared"]


@pytest.mark.verilator
def test_json_carries_what_was_compared(capsys):
    code, out, err = _sim_unit(capsys, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["passed"] and r["mismatches"] == 0
    assert r["compared"] == r["expected"] == {"tokens": 128, "elements": 512}   # 64 channels × 2 beats × 4 lanes
    assert "problems" not in r and "workdir" not in r


@pytest.mark.verilator
def test_json_of_an_unverified_run_says_why(capsys, monkeypatch):
    _misbehaving(monkeypatch, "half")
    code, out, err = _sim_unit(capsys, "--json")
    r = json.loads(out)
    assert code == 1 and not r["passed"]
    assert r["compared"] == {"tokens": 64, "elements": 256} and r["mismatches"] == 0
    assert r["problems"] == ["64 of 128 output tokens were compared"]
    assert "not verified: 64 of 128 output tokens were compared" in err


@pytest.mark.verilator
def test_a_real_mismatch_is_counted_element_by_element(tmp_path, monkeypatch):
    """Three expected values off by one in two outputs: 3 mismatches, everything compared."""
    cfg = AccelConfig.from_toml(TINY)
    real = unit_sim.BENCHES["requantiser"]

    def stimulus(*args, **kwargs):
        stim = real.stimulus(*args, **kwargs)
        stim["expected"][5][0] += 1
        stim["expected"][5][3] += 1
        stim["expected"][77][2] -= 1
        return stim

    monkeypatch.setitem(unit_sim.BENCHES, "requantiser", dataclasses.replace(real, stimulus=stimulus))
    r = unit_sim.run_unit(cfg, "requantiser", tokens=8, seed=3, workdir=tmp_path)
    assert not r["passed"] and r["mismatches"] == 3
    assert r["compared"] == r["expected"] == {"tokens": 128, "elements": 512}
    assert r["problems"][0] == "3 of 512 compared elements differ"
    assert r["problems"][1].startswith("the simulation failed: requantiser: mismatch at token 5, element 0")
    assert "requantiser: mismatch at token 5, element 0" in r["failure"]
    assert "in all: 3 of 512 elements differ in 128 of 128 tokens compared" in r["failure"]


def _sim_folders(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("moeforge-sim-"))


@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch):
    """Temporary folders of the run go to a folder of the test's own."""
    import tempfile
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", None)      # re-read TMPDIR
    return root


@pytest.mark.verilator
def test_failing_and_unverified_runs_leave_no_folder(own_tmpdir, capsys, monkeypatch):
    r = unit_sim.run_unit(AccelConfig.from_toml(TINY), "requantiser", tokens=4, seed=1, perturb=True)
    assert not r["passed"] and r["mismatches"] == 1 and "workdir" not in r
    assert _sim_folders(own_tmpdir) == []
    _misbehaving(monkeypatch, "silent")
    code, _, _ = _sim_unit(capsys)
    assert code == 1 and _sim_folders(own_tmpdir) == []


@pytest.mark.verilator
def test_an_interrupted_run_leaves_no_folder(own_tmpdir, monkeypatch):
    import moeforge.sim.build as build

    def interrupted(*args, **kwargs):
        assert _sim_folders(own_tmpdir), "the run folder exists while the simulation runs"
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "run_cocotb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unit_sim.run_unit(AccelConfig.from_toml(TINY), "requantiser", tokens=4, seed=1)
    assert _sim_folders(own_tmpdir) == []


@pytest.mark.verilator
def test_waves_keep_the_folder_and_say_where(own_tmpdir, capsys):
    code, out, err = _sim_unit(capsys, "--waves")
    assert code == 0, err
    kept = _sim_folders(own_tmpdir)
    assert len(kept) == 1 and kept[0].startswith("moeforge-sim-requantiser-")
    assert f"folder kept: {own_tmpdir / kept[0]}" in out and "waves: " in out, out


@pytest.mark.verilator
def test_hidden_unit_runs_under_sim(capsys):
    code = main(["sim", "--config", TINY, "--unit", "hidden", "--tokens", "6", "--seed", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    cfg = AccelConfig.from_toml(TINY)
    assert r["passed"] and r["compared"] == r["expected"] == {"tokens": 6, "elements": 6 * cfg.d_ff}


@pytest.mark.verilator
def test_hidden_unit_mismatch_is_reported(tmp_path):
    r = unit_sim.run_unit(AccelConfig.from_toml(TINY), "hidden", tokens=6, seed=2, perturb=True,
                          workdir=tmp_path)
    assert not r["passed"] and r["mismatches"] == 1 and "hidden: mismatch at token 3" in r["failure"]


# ------------------------------------------------------------------------------ whole layer

@pytest.mark.verilator
def test_a_preset_bench_variable_cannot_fake_a_verdict(tmp_path, capsys, monkeypatch):
    """The issue's case: MOEFORGE_BENCH already set to another bench file (one that compares
    nothing and passes). The run must either compare what it sent (the tool's variables win)
    or end with an error saying nothing of this run was compared: never a bare bit-exact."""
    cfg = AccelConfig.from_toml(TINY)
    foreign = tmp_path / "other" / "bench.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps(dict(i_cmd="i_cmd", o_rsp="o_rsp", steps=[],
                                       in_stall=0.0, out_stall=0.0, d_model=cfg.d_model,
                                       nonce="0" * 16, summary=str(foreign.with_suffix(".summary.json")))))
    for name in unit_sim.BENCH_VARIABLES:
        monkeypatch.setenv(name, str(foreign))
    code = main(["sim", "--config", TINY, "--tokens", "16", "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    r = json.loads(out)
    if r["passed"]:             # the tool's bench file won: a real comparison of all 16 tokens
        assert code == 0 and r["compared"] == r["expected"] == {"tokens": 16, "elements": 16 * cfg.d_model}
    else:
        assert code == 1 and r["compared"] is None
        assert "not verified: the bench wrote no summary: nothing was compared" in err, err


@pytest.mark.verilator
def test_a_layer_bench_that_stops_after_one_batch_is_not_verified(tmp_path, monkeypatch):
    """40 tokens are two batches (32 + 8); a bench that runs only the first compares 32."""
    monkeypatch.setattr(layer_sim, "LAYER_BENCH", "cocotb_verdict_bench")
    real = layer_sim._layer_build

    def build(*args, **kwargs):
        handle, bench = real(*args, **kwargs)
        return handle, {**bench, "test_mode": "layer_first_batch"}

    monkeypatch.setattr(layer_sim, "_layer_build", build)
    cfg = AccelConfig.from_toml(TINY)
    r = layer_sim.run_layer(cfg, tokens=40, seed=5, stall=0.2, workdir=tmp_path)
    assert not r["passed"] and r["mismatches"] == 0
    assert r["compared"] == {"tokens": 32, "elements": 32 * cfg.d_model}
    assert r["problems"] == ["32 of 40 output tokens were compared"]


@pytest.mark.verilator
def test_layer_mismatch_counts_elements_and_trace_failure_leaves_nothing(own_tmpdir, tmp_path, monkeypatch):
    """A perturbed expectation: one element of 4 × d_model differs. The trace's folder vanishes
    during the run: one clear error, no temporary file and no run folder left."""
    import moeforge.sim.build as build
    from moeforge.errors import MoeforgeError
    cfg = AccelConfig.from_toml(TINY)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = build.run_cocotb

    def run_then_remove(*args, **kwargs):
        results = real(*args, **kwargs)
        out_dir.rmdir()
        return results

    monkeypatch.setattr(build, "run_cocotb", run_then_remove)
    with pytest.raises(MoeforgeError, match="cannot write .*t.json"):
        layer_sim.run_layer(cfg, tokens=4, seed=2, stall=0.0, perturb=True, trace=out_dir / "t.json")
    assert _sim_folders(own_tmpdir) == [] and not out_dir.exists()
    monkeypatch.setattr(build, "run_cocotb", real)
    r = layer_sim.run_layer(cfg, tokens=4, seed=2, stall=0.0, perturb=True)
    assert not r["passed"] and r["mismatches"] == 1
    assert r["compared"] == r["expected"] == {"tokens": 4, "elements": 4 * cfg.d_model}
    assert r["problems"][0] == f"1 of {4 * cfg.d_model} compared elements differ"
    assert _sim_folders(own_tmpdir) == []


@pytest.mark.verilator
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signalled_sim_leaves_no_folder(sig, tmp_path):
    """Ctrl-C (SIGINT) or SIGTERM while the simulation runs: the command ends non-zero, and
    neither its run folder nor its simulator is left behind."""
    import signal
    import subprocess
    import sys
    import time
    root = tmp_path / "tmp"
    root.mkdir()
    env = {**os.environ, "TMPDIR": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "moeforge.cli", "sim", "--config", TINY,
                             "--unit", "requantiser", "--tokens", "32", "--stall", "0.9"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any((root / f / "bench.json").exists() for f in _sim_folders(root)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run folder never appeared"
            time.sleep(0.02)
        time.sleep(0.5)                 # the simulation is starting or running
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "bit-exact" not in out, (proc.returncode, out, err)
    assert "moeforge: interrupted" in err and "Traceback" not in err, err
    assert _sim_folders(root) == []
    deadline = time.monotonic() + 5
    while _processes_in(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_in(root) == [], "a process still works in the removed run folder"


def _processes_in(root):
    """Pids of the processes whose working folder is under `root` (the simulator runs in its
    run folder)."""
    from pathlib import Path
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "cwd").startswith(str(root)):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids
