"""No child outlives its parent, and a run simulates what its caller asked for.

Builds and cocotb runs go through `moeforge.child_process`: a parent killed by any signal
(SIGKILL included) takes the Verilator build (make, the compiler) or the simulator with it;
variables left in the caller's environment do not override a run's own.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from counter_design import Counter

from moeforge.rtl.export import to_verilog
from moeforge import child_process
from moeforge.sim.build import run_cocotb

pytestmark = pytest.mark.verilator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def descendants(pid: int) -> dict[int, str]:
    """pid → command name of every living descendant of `pid` (from /proc/*/stat)."""
    parent, name = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, rest = stat.rsplit(")", 1)
        fields = rest.split()
        if fields[0] == "Z":
            continue
        parent[int(entry.name)] = int(fields[1])
        name[int(entry.name)] = head.split("(", 1)[1]
    found, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for child, pp in parent.items():
            if pp == p and child not in found:
                found[child] = name[child]
                todo.append(child)
    return found


def wait_until(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def assert_all_gone(pids, timeout: float = 10.0):
    wait_until(lambda: all(gone(p) for p in pids), timeout)
    left = {p: n for p, n in pids.items() if not gone(p)}
    assert not left, f"still running {timeout} s after their parent died: {left}"


def kill_leftovers(pids):
    for p in pids:
        if not gone(p):
            os.kill(p, signal.SIGKILL)


@pytest.fixture(scope="module")
def counter(sim_build):
    return sim_build(Counter(), "counter")


# --- the child processes of child_process ----------------------------------------------------

def test_run_returns_like_subprocess_run_and_kills_its_group_on_timeout():
    r = child_process.run(["sh", "-c", "echo out; echo err >&2; exit 3"], capture_output=True,
                          text=True)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = child_process.run(["sh", "-c", "kill -TERM $$"])
    assert r.returncode == -signal.SIGTERM
    r = child_process.run(["no-such-program-moeforge"], capture_output=True, text=True)
    assert r.returncode == 127 and "cannot run no-such-program-moeforge" in r.stderr

    # A grandchild (sleep, started by sh) dies with the group on the timeout.
    before = set(descendants(os.getpid()))
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        child_process.run(["sh", "-c", "sleep 300 & sleep 300"], timeout=1.0)
    assert time.monotonic() - t0 < 5
    assert_all_gone({p: n for p, n in descendants(os.getpid()).items() if p not in before})


def test_spawned_child_outlives_the_thread_that_spawned_it():
    """PR_SET_PDEATHSIG follows the forking thread: children are forked by the helper thread."""
    code = ("import ctypes, signal, sys, time; "
            "ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0); print('ready', flush=True); "
            "time.sleep(60)")
    box = []
    worker = threading.Thread(target=lambda: box.append(child_process.spawn(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)))
    worker.start()
    worker.join()
    proc = box[0]
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.5)                     # the worker thread is long gone
        assert proc.poll() is None, f"the child died with its thread: {proc.returncode}"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# --- a killed parent takes its simulation and its build with it ------------------------------

SIM_PARENT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    a = json.loads(sys.argv[1])
    sys.path.insert(0, a["tests"])
    from moeforge.sim.build import BuildHandle, run_cocotb
    handle = BuildHandle(key=a["key"], path=Path(a["path"]), top=a["top"], wave_format=None,
                         cached=True, seconds=0.0)
    run_cocotb(handle, "cocotb_processes", test_dir=a["dir"], testcase="hangs",
               extra_env={"MOEFORGE_PID_FILE": a["pid_file"]})
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_killed_parent_takes_its_simulation_with_it(counter, tmp_path, sig):
    pid_file = tmp_path / "sim.pid"
    args = dict(tests=str(HERE), key=counter.key, path=str(counter.path), top=counter.top,
                dir=str(tmp_path / "run"), pid_file=str(pid_file))
    parent = subprocess.Popen([sys.executable, "-c", SIM_PARENT, json.dumps(args)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    family = {}
    try:
        assert wait_until(pid_file.exists, 120), parent.stderr.read() if parent.poll() else ""
        wait_until(lambda: pid_file.read_text().strip() != "", 5)
        simulator = int(pid_file.read_text())
        family = descendants(parent.pid)
        assert simulator in family and not gone(simulator)
        parent.send_signal(sig)
        parent.wait(20)
        assert_all_gone(family)
    finally:
        parent.kill()
        parent.wait()
        parent.stderr.close()
        kill_leftovers(family)


BUILD_PARENT = textwrap.dedent("""
    import sys
    from moeforge.sim.build import build_cached
    build_cached(open(sys.argv[1]).read(), "counter", cache_dir=sys.argv[2])
""")


def test_killed_parent_takes_its_build_with_it(tmp_path):
    """SIGKILL while the compiler runs: Verilator's make and compiler processes go too."""
    source = tmp_path / "counter.v"
    source.write_text(to_verilog(Counter(), "counter") + f"// {os.urandom(8).hex()}\n")
    parent = subprocess.Popen([sys.executable, "-c", BUILD_PARENT, str(source),
                               str(tmp_path / "cache")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    family = {}
    compiling = {"make", "cc1plus", "g++", "c++", "gcc", "ccache"}
    try:
        def started():
            family.update(descendants(parent.pid))
            return bool(compiling & set(family.values()))
        assert wait_until(started, 180, step=0.1), f"no compiler seen among {family}"
        parent.kill()
        parent.wait(10)
        assert_all_gone(family)
    finally:
        parent.kill()
        parent.wait()
        kill_leftovers(family)


# --- the caller's environment does not change what a run simulates -------------------------

def test_callers_environment_does_not_override_the_run(counter, tmp_path, monkeypatch):
    mine = {"MOEFORGE_BENCH": str(tmp_path / "bench.json"),
            "MOEFORGE_TEST_PARAMS": str(tmp_path / "params.json")}
    monkeypatch.setenv("MOEFORGE_BENCH", "/nonexistent/user-bench.json")
    monkeypatch.setenv("MOEFORGE_TEST_PARAMS", "/nonexistent/user-params.json")
    monkeypatch.setenv("COCOTB_TEST_FILTER", "no_such_test")
    monkeypatch.setenv("COCOTB_RANDOM_SEED", "99")
    monkeypatch.setenv("WAVES", "0")
    results = run_cocotb(counter, "cocotb_processes", test_dir=tmp_path / "run",
                         testcase="reports_env", seed=5, extra_env=mine)
    assert (results.tests, results.passed, results.seed) == (1, 1, 5)
    seen = json.loads((tmp_path / "run" / "seen_env.json").read_text())
    assert seen == {**mine, "COCOTB_RANDOM_SEED": "5", "PYTEST_CURRENT_TEST": None, "WAVES": "0"}


def test_unit_run_ignores_a_stale_bench_in_the_environment(tmp_path, monkeypatch):
    """`moeforge sim --unit` with MOEFORGE_BENCH/MOEFORGE_TEST_PARAMS left in the environment
    compares its own stimulus, not the file they name."""
    from moeforge.config import AccelConfig
    from moeforge.sim.unit_sim import run_unit

    stale = tmp_path / "no-such-bench.json"
    monkeypatch.setenv("MOEFORGE_BENCH", str(stale))
    monkeypatch.setenv("MOEFORGE_TEST_PARAMS", str(stale))
    cfg = AccelConfig.from_toml(ROOT / "configs" / "tiny.toml")
    out = run_unit(cfg, "requantiser", tokens=4, seed=1, workdir=tmp_path / "run")
    assert out["passed"] and out["mismatches"] == 0, out
