"""Verilator builds of cocotb simulations, cached by content, and cocotb runs against them.

`build_cached` verilates and compiles a design once per content hash (Verilog text, top name,
flags, tracing, tool versions) and keeps the result under the cache directory; every later call
with the same inputs, from any process, reuses it without recompiling. `run_cocotb` runs a
cocotb test module against a build in its own test directory and returns the parsed results.

Cache layout (``<cache>`` is ``$MOEFORGE_CACHE/sim``, else ``$XDG_CACHE_HOME/moeforge/sim``,
else ``~/.cache/moeforge/sim``)::

    <cache>/<key>/<top>.v          the design as built
    <cache>/<key>/waivers.vlt      Verilator control file passed before it (if any)
    <cache>/<key>/build.log        Verilator and compiler output
    <cache>/<key>/manifest.json    what the key was computed from, build time
    <cache>/<key>/obj/<top>        the simulation executable (plus Verilator's objects)
    <cache>/.locks/<key>.lock      fcntl lock serialising builds of one key

A build runs in ``<cache>/.tmp-<key>-<pid>-<random>`` and is renamed to ``<cache>/<key>`` only
when complete, under an exclusive ``flock`` on the key's lock file: parallel pytest-xdist
workers asking for the same design wait for one build instead of racing, a killed build never
leaves a half-built ``<key>`` directory, and different designs build in parallel. A failed
build is kept in ``<cache>/<key>.failed`` for inspection.

Both steps run cocotb's runner in a child Python process (``os.environ`` of this process is
never modified), started by `moeforge.child_process.run`: nothing they start (Verilator, make, the
compiler, the simulator) outlives this process, whether it ends normally, by an exception,
Ctrl-C, SIGTERM or SIGKILL. The build's environment comes from `sim.toolchain.verilator_env`;
a test run's is this process's environment with the run's own variables over it, so a variable
left in a user's environment (``MOEFORGE_BENCH``, ``COCOTB_TEST_FILTER`` ...) cannot change
what a run simulates or compares.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moeforge.errors import MoeforgeError

from moeforge import child_process
from .toolchain import (AMARANTH_LINT_WAIVERS, ToolchainError, check_build_tools, fst_supported,
                        verilator_env, verilator_version)

__all__ = [
    "BuildHandle", "SimBuildError", "SimFailure", "SimResults", "TestCaseResult",
    "build_cached", "build_once", "cache_root", "log_tail", "run_cocotb", "tool_versions",
]

# Bump when the cache directory layout or the build recipe changes.
_CACHE_SCHEMA = 1
_MANIFEST = "manifest.json"
_FALSY = ("", "0", "false", "no", "off")

# Runs in the child build process: cocotb's Verilator runner, with the toolchain environment.
_BUILD_CHILD = r"""
import json, sys
from cocotb_tools.runner import get_runner
a = json.loads(sys.argv[1])
runner = get_runner("verilator")
runner.build(sources=a["sources"], hdl_toplevel=a["top"], build_dir=a["build_dir"],
             build_args=a["flags"], waves=a["waves"], log_file=a["log"], always=True)
"""

# Runs in the child test process (its arguments as JSON on stdin): cocotb's runner with this
# process's sys.path, made absolute (the runner hands it to the simulator as PYTHONPATH; the
# child runs in the test folder); reports how the simulator ended on its last stdout line.
_TEST_MARK = "MOEFORGE_COCOTB_RUN "
_TEST_CHILD = r"""
import json, sys
a = json.load(sys.stdin)
sys.path[:] = a["sys_path"]
from cocotb_tools.runner import get_runner
error = None
try:
    get_runner("verilator").test(**a["test"])
except SystemExit as exc:
    if exc.code not in (0, None):
        error = f"exit status {exc.code}"
except RuntimeError as exc:           # the simulator process returned non-zero
    error = str(exc)
print(a["mark"] + json.dumps({"simulator_error": error}), flush=True)
"""
# Variables through which cocotb's runner would let the environment override run_cocotb's own
# arguments (it merges os.environ over them); the child's environment never has them.
_RUN_ARGUMENT_VARS = ("PYTEST_CURRENT_TEST", "COCOTB_TEST_FILTER", "COCOTB_TESTCASE",
                      "COCOTB_TEST_MODULES", "COCOTB_TOPLEVEL", "TOPLEVEL_LANG", "GUI",
                      "COCOTB_RESULTS_FILE")


class SimBuildError(MoeforgeError, RuntimeError):
    """Verilating or compiling a design failed; the message ends with the build log's tail."""


class SimFailure(MoeforgeError, AssertionError):
    """A cocotb run failed: a test failed or errored, or the simulator ended abnormally.

    An `AssertionError`, so pytest reports it as a test failure. ``results`` holds the parsed
    `SimResults` (``None`` if no results file was written).
    """

    def __init__(self, message: str, results: SimResults | None = None):
        super().__init__(message)
        self.results = results


@dataclass(frozen=True)
class BuildHandle:
    """A finished build in the cache.

    Attributes
    ----------
    key : str
        sha256 hex digest of the build inputs; the cache folder's name.
    path : Path
        The cache folder ``<cache>/<key>``.
    top : str
        Top-level module name (also the executable's name).
    wave_format : str or None
        ``"fst"`` or ``"vcd"`` if the model was built with tracing, else None.
    cached : bool
        True if this call found the build in the cache (no compilation happened).
    seconds : float
        Wall time of the `build_cached` call that returned this handle.
    """

    key: str
    path: Path
    top: str
    wave_format: str | None
    cached: bool
    seconds: float

    @property
    def waves(self) -> bool:
        """Whether the model was built with tracing."""
        return self.wave_format is not None

    @property
    def obj_dir(self) -> Path:
        """Verilator's ``-Mdir``: the runner's ``build_dir``."""
        return self.path / "obj"

    @property
    def executable(self) -> Path:
        return self.obj_dir / self.top

    @property
    def log_path(self) -> Path:
        return self.path / "build.log"


@dataclass(frozen=True)
class TestCaseResult:
    """One cocotb test of a run: ``status`` is passed, failed, error or skipped."""

    __test__ = False  # not a pytest test class

    name: str
    status: str
    message: str = ""
    details: str = ""
    sim_time_ns: float | None = None
    real_time_s: float | None = None   # wall time of the test itself (simulator start excluded)


@dataclass(frozen=True)
class SimResults:
    """The parsed results of one `run_cocotb` call.

    ``tests``/``failed``/``skipped`` count cocotb tests (errors count as failed); ``ok`` is
    true when the simulator ended normally, at least one test ran and none failed.
    """

    tests: int
    failed: int
    skipped: int
    cases: tuple[TestCaseResult, ...]
    results_xml: Path
    log_path: Path
    waves_path: Path | None
    seed: int | None
    seconds: float
    simulator_error: str | None = None

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.skipped

    @property
    def ok(self) -> bool:
        return self.simulator_error is None and self.tests > 0 and self.failed == 0

    @property
    def failures(self) -> tuple[TestCaseResult, ...]:
        return tuple(c for c in self.cases if c.status in ("failed", "error"))

    def summary(self) -> str:
        """Several lines: counts, each failing test with its message, seed and paths."""
        lines = [f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped "
                 f"of {self.tests} cocotb tests ({self.seconds:.1f} s)"]
        if self.simulator_error:
            lines.append(f"simulator: {self.simulator_error}")
        for case in self.failures:
            lines.append(f"{case.status.upper()} {case.name}: {case.message}")
        if self.seed is not None:
            lines.append(f"COCOTB_RANDOM_SEED={self.seed}")
        lines.append(f"log: {self.log_path}")
        if self.waves_path is not None:
            lines.append(f"waves: {self.waves_path}")
        return "\n".join(lines)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The simulation build cache folder (see the module docstring for the lookup order)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    if os.environ.get("MOEFORGE_CACHE"):
        return Path(os.environ["MOEFORGE_CACHE"]).expanduser().resolve() / "sim"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "moeforge" / "sim").resolve()


@functools.cache
def tool_versions() -> dict[str, str]:
    """The versions of everything a build depends on (part of every cache key)."""
    import cocotb_tools.config
    from importlib.metadata import version

    cxx = os.environ.get("CXX", "c++")
    try:
        cxx_version = subprocess.run([*cxx.split(), "--version"], capture_output=True,
                                     text=True, timeout=60, check=False).stdout.splitlines()[:1]
    except OSError:
        cxx_version = []
    return {
        "verilator": f"{version('verilator')} {verilator_version()}",
        "cocotb": version("cocotb"),
        # The executable links libcocotbvpi from this folder by rpath.
        "cocotb_libs": str(cocotb_tools.config.libs_dir),
        "cxx": " ".join(cxx_version),
        "cxxflags": os.environ.get("CXXFLAGS", ""),
    }


def _env_waves() -> bool:
    return os.environ.get("WAVES", "").strip().lower() not in _FALSY


def _sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def _wave_format(waves: bool | str) -> str | None:
    if waves in ("fst", "vcd"):
        if waves == "fst" and not fst_supported():
            raise ToolchainError(
                "FST tracing needs the lz4 development files (Debian/Ubuntu: liblz4-dev), which "
                "Verilator's FST writer includes and links; use waves='vcd'")
        return waves
    if isinstance(waves, bool):
        if not waves:
            return None
        return "fst" if fst_supported() else "vcd"
    raise ValueError(f"waves must be True, False, 'fst' or 'vcd', not {waves!r}")


def _build_key(verilog_text: str, top: str, flags: tuple[str, ...], waves: str | None,
               waivers: str | None) -> tuple[str, dict]:
    inputs = {
        "schema": _CACHE_SCHEMA,
        "verilog_sha256": _sha256(verilog_text),
        "waivers_sha256": _sha256(waivers),
        "top": top,
        "flags": list(flags),
        "waves": waves,
        **tool_versions(),
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), inputs


def _is_complete(path: Path, top: str) -> bool:
    exe = path / "obj" / top
    return (path / _MANIFEST).is_file() and exe.is_file() and os.access(exe, os.X_OK)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, for error messages ("(no log)" if unreadable)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _key_lock(root: Path, key: str):
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "a+") as fd:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def build_once(root: Path, key: str, inputs: dict, complete, build_into, on_build=None) -> bool:
    """Build ``root/key`` once, for every process: True if it was already there.

    ``build_into(tmp)`` fills a fresh temporary folder, which is renamed to ``root/key`` only
    when complete (with a ``manifest.json`` of `inputs`), under the key's lock; a failed build
    is kept as ``root/<key>.failed``. ``complete(path)`` says whether a folder is a finished build.
    ``on_build()``, if given, is called once when the build is not there yet, before waiting for
    the lock (so a caller can say that a long step starts).
    """
    final = root / key
    if complete(final):
        return True
    if on_build is not None:
        on_build()
    root.mkdir(parents=True, exist_ok=True)
    with _key_lock(root, key):
        if complete(final):                     # another process built it while we waited
            return True
        # Holding the lock, leftovers of this key are from dead builds.
        for stale in root.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():                       # incomplete (e.g. files deleted by hand)
            shutil.rmtree(final, ignore_errors=True)
        tmp = root / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        start = time.monotonic()
        try:
            build_into(tmp)
        except BaseException:
            failed = root / f"{key}.failed"
            shutil.rmtree(failed, ignore_errors=True)
            with contextlib.suppress(OSError):
                tmp.rename(failed)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = dict(inputs, build_seconds=round(time.monotonic() - start, 3),
                        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, final)
    return False


def build_cached(verilog_text: str, top: str, *, flags: Iterable[str] = (),
                 waves: bool | str | None = None, waivers: str | None = AMARANTH_LINT_WAIVERS,
                 cache_dir: str | os.PathLike | None = None,
                 timeout: float | None = 3600.0) -> BuildHandle:
    """Return a Verilator + cocotb build of `verilog_text`, compiling it only if not cached.

    Parameters
    ----------
    verilog_text : str
        The whole design in one Verilog text (e.g. from `moeforge.rtl.export.to_verilog`).
    top : str
        Its top-level module.
    flags : iterable of str
        Extra Verilator arguments (part of the cache key).
    waves : bool or str, optional
        Build with tracing; runs of the build then write ``<top>.fst`` or ``<top>.vcd``.
        ``"fst"`` (``--trace-fst``, compact; needs the system's lz4 development files, see
        `sim.toolchain.fst_supported`), ``"vcd"``, True for FST where possible and VCD
        otherwise, False for none. Default: the ``WAVES`` environment variable, as cocotb does.
    waivers : str, optional
        Verilator control file text read before the design. Verilator stops a build on its
        default-on warnings (``WIDTHEXPAND`` ...), which Amaranth's Verilog raises as artefacts;
        the default, `sim.toolchain.AMARANTH_LINT_WAIVERS`, waives exactly those (the same
        waivers as the lint). ``None`` for none.
    cache_dir : path, optional
        Cache folder; default `cache_root()`.
    timeout : float, optional
        Seconds before a build is abandoned.

    Returns
    -------
    BuildHandle

    Raises
    ------
    ToolchainError
        If Verilator, make, perl or a C++ compiler is missing.
    SimBuildError
        If Verilator or the compiler fails, with the end of the build log.
    """
    start = time.monotonic()
    if not isinstance(verilog_text, str) or not verilog_text.strip():
        raise ValueError("verilog_text must be a non-empty string")
    if not isinstance(top, str) or not top.isidentifier():
        raise ValueError(f"top must be a Verilog module name, not {top!r}")
    if f"module {top}" not in verilog_text and f"module \\{top}" not in verilog_text:
        raise ValueError(f"the Verilog text has no module named {top!r}")
    flags = tuple(str(f) for f in flags)
    check_build_tools()
    wave_format = _wave_format(_env_waves() if waves is None else waves)
    key, inputs = _build_key(verilog_text, top, flags, wave_format, waivers)
    root = cache_root(cache_dir)
    final = root / key

    def handle(cached: bool) -> BuildHandle:
        return BuildHandle(key=key, path=final, top=top, wave_format=wave_format, cached=cached,
                           seconds=time.monotonic() - start)

    cached = build_once(root, key, inputs, lambda path: _is_complete(path, top),
                        lambda tmp: _build_into(tmp, verilog_text, top, flags, wave_format,
                                                waivers, timeout))
    return handle(cached)


def _build_into(path: Path, verilog_text: str, top: str, flags: tuple[str, ...],
                wave_format: str | None, waivers: str | None, timeout: float | None) -> None:
    sources = []
    if waivers is not None:                   # control files apply to the files after them
        control = path / "waivers.vlt"
        control.write_text(waivers)
        sources.append(str(control))
    source = path / f"{top}.v"
    source.write_text(verilog_text)
    sources.append(str(source))
    log = path / "build.log"
    args = {
        "sources": sources, "top": top, "build_dir": str(path / "obj"),
        # The runner adds --trace (VCD) for waves=True; --trace-fst selects FST instead.
        "flags": [*flags, *(["--trace-fst"] if wave_format == "fst" else [])],
        "waves": wave_format is not None, "log": str(log),
    }
    env = verilator_env()
    env.pop("WAVES", None)        # the runner lets WAVES override `waves`; the key decides here
    try:
        proc = child_process.run([sys.executable, "-c", _BUILD_CHILD, json.dumps(args)],
                                 env=env, cwd=path, capture_output=True, text=True,
                                 timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SimBuildError(f"building {top!r} took longer than {timeout} s; log: {log}") from exc
    except OSError as exc:
        raise ToolchainError(f"cannot start the build process: {exc}") from exc
    if proc.returncode != 0:
        with open(log, "a") as f:
            f.write(proc.stdout)
            f.write(proc.stderr)
        raise SimBuildError(f"Verilator build of {top!r} failed (exit {proc.returncode}); "
                            f"log: {log}\n{log_tail(log)}")
    if not (path / "obj" / top).is_file():
        raise SimBuildError(f"Verilator build of {top!r} produced no executable; log: {log}\n"
                            f"{log_tail(log)}")


def _parse_results(xml_path: Path) -> tuple[list[TestCaseResult], int | None]:
    root = ET.parse(xml_path).getroot()
    cases = []
    seed = None
    for tc in root.iter("testcase"):
        status, message, details = "passed", "", ""
        for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            el = tc.find(tag)
            if el is not None:
                status, message, details = name, el.get("message", ""), el.text or ""
                break
        sim_time = None
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        with contextlib.suppress(TypeError, ValueError):
            if seed is None:
                seed = int(props.get("random_seed"))
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if props.get("sim_time_unit") == "ns":
                sim_time = float(props["sim_time_duration"])
        real_time = None
        with contextlib.suppress(TypeError, ValueError):
            real_time = float(tc.get("time"))
        cases.append(TestCaseResult(name=tc.get("name", "?"), status=status, message=message,
                                    details=details, sim_time_ns=sim_time, real_time_s=real_time))
    return cases, seed


def run_cocotb(handle: BuildHandle, test_module: str, *, test_dir: str | os.PathLike,
               extra_env: Mapping[str, str] | None = None, seed: int | None = None,
               waves_dir: str | os.PathLike | None = None, testcase: str | None = None,
               check: bool = True) -> SimResults:
    """Run the cocotb tests of `test_module` against a cached build.

    Parameters
    ----------
    handle : BuildHandle
        From `build_cached`.
    test_module : str
        Name of the cocotb test module. It must be importable from this process's
        ``sys.path``, which cocotb's runner hands to the simulator as ``PYTHONPATH`` (under
        pytest, the test file's folder is on it).
    test_dir : path
        The run's own folder (simulator working directory, ``results.xml``, ``sim.log``,
        waves); parallel runs must use different folders.
    extra_env : mapping, optional
        Environment variables for the simulation (e.g. test parameters). They win over
        variables of the same name in ``os.environ``; the other arguments (`seed`, `testcase`,
        the build's tracing) win over cocotb's variables for them (``COCOTB_RANDOM_SEED``,
        ``COCOTB_TEST_FILTER``, ``WAVES``), and ``PYTEST_CURRENT_TEST`` is not passed on.
        The simulation runs in a child process that does not outlive this one (see the module
        docstring).
    seed : int, optional
        ``COCOTB_RANDOM_SEED``; random by default (the seed is reported in the results).
    waves_dir : path, optional
        Where to write ``<top>.fst`` (or ``.vcd``); default `test_dir`. Needs a build with
        waves.
    testcase : str, optional
        Run only the named cocotb test(s) (comma-separated).
    check : bool
        Raise `SimFailure` unless the run is `SimResults.ok` (default); with False, return the
        results either way.

    Raises
    ------
    SimFailure
        If `check` and a test failed or the simulator ended abnormally.
    ValueError
        If `test_module` cannot be found, or waves are asked of a build without tracing.
    """
    start = time.monotonic()
    if not isinstance(handle, BuildHandle) or not handle.executable.is_file():
        raise ValueError(f"not a usable build: {handle!r}")
    if importlib.util.find_spec(test_module) is None:
        raise ValueError(f"cocotb test module {test_module!r} is not importable from sys.path")
    env_waves = os.environ.get("WAVES")
    if waves_dir is not None and not handle.waves:
        raise ValueError("waves_dir given, but the build has no tracing: "
                         "use build_cached(..., waves=True)")
    if env_waves is not None and env_waves.strip().lower() not in _FALSY and not handle.waves:
        raise ValueError("WAVES is set in the environment, but the build has no tracing: "
                         "use build_cached(..., waves=True) or unset WAVES")
    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    results_xml = test_dir / "results.xml"
    log_path = test_dir / "sim.log"
    test_args: list[str] = []
    waves_path = None
    if handle.waves:
        wdir = Path(waves_dir).resolve() if waves_dir is not None else test_dir
        wdir.mkdir(parents=True, exist_ok=True)
        waves_path = wdir / f"{handle.top}.{handle.wave_format}"
        test_args = ["--trace-file", str(waves_path)]

    run_env = {str(k): str(v) for k, v in (extra_env or {}).items()}
    # cocotb rewrites the asserts of every module imported in the simulator ("*.py") unless
    # told otherwise; rewriting all of torch makes its import take ~4 s instead of ~0.7 s.
    # Rewrite the test module only (unless the caller asks otherwise: it changes no verdict).
    if "COCOTB_REWRITE_ASSERTION_FILES" not in os.environ:
        run_env.setdefault("COCOTB_REWRITE_ASSERTION_FILES",
                           f"{test_module.rsplit('.', 1)[-1]}.py")
    run_env["WAVES"] = "1" if handle.waves else "0"     # the build decides, not the environment
    env = {**os.environ, **run_env}
    for name in _RUN_ARGUMENT_VARS:
        env.pop(name, None)
    if seed is not None:
        env.pop("COCOTB_RANDOM_SEED", None)
    with contextlib.suppress(OSError):
        results_xml.unlink()                  # a stale file must not pass for this run's results
    child_args = {
        "mark": _TEST_MARK, "sys_path": [os.path.abspath(p) for p in sys.path],
        "test": dict(test_module=test_module, hdl_toplevel=handle.top,
                     hdl_toplevel_lang="verilog", build_dir=str(handle.obj_dir),
                     test_dir=str(test_dir), results_xml=str(results_xml),
                     log_file=str(log_path), extra_env=run_env, seed=seed,
                     waves=handle.waves, test_args=test_args, testcase=testcase),
    }
    try:
        proc = child_process.run([sys.executable, "-c", _TEST_CHILD],
                                 input=json.dumps(child_args), env=env, cwd=test_dir,
                                 capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise ToolchainError(f"cannot start the cocotb runner process: {exc}") from exc
    simulator_error = None
    marks = [line for line in proc.stdout.splitlines() if line.startswith(_TEST_MARK)]
    if marks:
        simulator_error = json.loads(marks[-1][len(_TEST_MARK):])["simulator_error"]
    else:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        simulator_error = (f"the cocotb runner process ended without a report "
                           f"(exit {proc.returncode}){': ' + tail if tail else ''}")

    cases: list[TestCaseResult] = []
    run_seed = seed
    if results_xml.is_file():
        try:
            cases, xml_seed = _parse_results(results_xml)
            run_seed = xml_seed if xml_seed is not None else seed
        except ET.ParseError as exc:
            simulator_error = simulator_error or f"unreadable results file {results_xml}: {exc}"
    else:
        simulator_error = simulator_error or (
            f"no results file {results_xml} (the simulator ended abnormally)")
    if waves_path is not None and not waves_path.is_file():
        waves_path = None
    failed = sum(c.status in ("failed", "error") for c in cases)
    results = SimResults(
        tests=len(cases), failed=failed, skipped=sum(c.status == "skipped" for c in cases),
        cases=tuple(cases), results_xml=results_xml, log_path=log_path, waves_path=waves_path,
        seed=run_seed, seconds=time.monotonic() - start, simulator_error=simulator_error)
    if check and not results.ok:
        msg = f"cocotb run of {test_module} on {handle.top} failed:\n{results.summary()}"
        if simulator_error:
            msg += "\n" + log_tail(log_path, 30)
        raise SimFailure(msg, results)
    return results
