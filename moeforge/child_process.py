"""Child processes that never outlive the process that started them.

Linux's ``PR_SET_PDEATHSIG`` (a signal the kernel sends a child when its parent dies) follows
the *thread* that forked the child, not the process: a child forked from a worker thread gets
the signal when that thread ends, while the process goes on. So every child of the project is
forked by one helper thread that lives as long as the process (`spawn`), and the signal then
means what it should: the process is gone.

Two kinds of children use it:

- a long-lived server that sets ``PR_SET_PDEATHSIG`` itself (the simulated device's
  ``--die-with-parent``), started with `spawn`;
- a command run to its end (a Verilator build, a cocotb simulation), started with `run`: it
  runs in a process group of its own under a small Python guard (`GUARD`), which kills the
  whole group (the command and everything it started: make, the compiler, the simulator) with
  SIGKILL when this process dies, by any signal, SIGKILL included. `run` itself kills the group
  on a timeout and on any exception, KeyboardInterrupt included.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

__all__ = ["GUARD", "kill_group", "run", "spawn"]

# The guard: ``python -c GUARD <parent pid> <argv...>``, started as the leader of its own process
# group. The kernel sends it SIGTERM when the parent (the spawning thread, which lives as long
# as the process) dies; it then kills its group. It exits as its command did (the same code,
# or killed by the same signal), 127 if the command cannot be started.
GUARD = r"""
import ctypes, os, signal, subprocess, sys
if os.getpgid(0) != os.getpid():
    sys.exit("moeforge guard: not the leader of its own process group")
def kill_group(*_):
    os.killpg(0, signal.SIGKILL)
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, kill_group)
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit("moeforge guard: prctl(PR_SET_PDEATHSIG) failed")
if os.getppid() != int(sys.argv[1]):          # the parent died before the prctl
    kill_group()
try:
    child = subprocess.Popen(sys.argv[2:])
except OSError as exc:
    print(f"cannot run {sys.argv[2]}: {exc}", file=sys.stderr, flush=True)
    sys.exit(127)
rc = child.wait()
if rc < 0:
    if -rc != signal.SIGKILL:
        signal.signal(-rc, signal.SIG_DFL)
    os.kill(os.getpid(), -rc)
sys.exit(rc)
"""


class _Spawner:
    """The helper thread that forks every child (see the module docstring)."""

    def __init__(self):
        self.pid = os.getpid()
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="moeforge-spawner", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            argv, kwargs, future = self.requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(argv, **kwargs))
            except BaseException as exc:       # noqa: BLE001 - handed to the caller
                future.set_exception(exc)


_lock = threading.Lock()
_spawner: _Spawner | None = None


def _forget_spawner() -> None:
    """In a forked copy of this process: it has no helper thread, and the lock may be held."""
    global _lock, _spawner
    _lock = threading.Lock()
    _spawner = None


os.register_at_fork(after_in_child=_forget_spawner)


def _the_spawner() -> _Spawner:
    global _spawner
    with _lock:
        if _spawner is None or _spawner.pid != os.getpid() or not _spawner.thread.is_alive():
            _spawner = _Spawner()
        return _spawner


def _kill_if_started(future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        proc = future.result()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def spawn(argv: Sequence[str | os.PathLike], **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen_kwargs)``, forked by the process's helper thread.

    A child that sets ``PR_SET_PDEATHSIG`` then gets its signal when this process ends, not
    when the calling thread does. The child must set it itself (the Python children of `run`
    and the device server do); `spawn` alone does not stop a child from outliving its parent.

    Raises
    ------
    OSError
        As `subprocess.Popen` (e.g. the executable does not exist).
    """
    argv = [os.fspath(a) for a in argv]
    if sys.is_finalizing():         # no new thread can start: fork from this one
        return subprocess.Popen(argv, **popen_kwargs)
    future: concurrent.futures.Future = concurrent.futures.Future()
    _the_spawner().requests.put((argv, popen_kwargs, future))
    try:
        return future.result()
    except BaseException:
        # Interrupted while the helper forks (Ctrl-C): the child must not be left running.
        if not future.cancel():
            future.add_done_callback(_kill_if_started)
        raise


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (a `run` child) and reap `proc`. Idempotent.

    Only while `proc` is not yet reaped: its pid, the group's id, cannot be reused until then.
    """
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(argv: Sequence[str | os.PathLike], *, timeout: float | None = None,
        capture_output: bool = False, input: str | bytes | None = None,
        **popen_kwargs) -> subprocess.CompletedProcess:
    """Run `argv` to its end under the guard, in a process group of its own.

    Like `subprocess.run` (``capture_output``, ``input``, ``text``, ``stdout``, ``stderr``,
    ``cwd``, ``env`` ...; standard input is ``/dev/null`` unless given), except that nothing
    it starts outlives this process: if this process dies the guard kills the group, and on a
    timeout or any exception (KeyboardInterrupt included) `run` kills the group before it
    raises. The group is not the terminal's, so Ctrl-C reaches this process only, which then
    stops the command.

    Returns
    -------
    subprocess.CompletedProcess
        With the command's return code (``-N`` if killed by signal N; 127 if it could not be
        started, with the reason on its stderr) and output.

    Raises
    ------
    subprocess.TimeoutExpired
        After `timeout` seconds (the group is killed first).
    """
    if capture_output:
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL if input is None else subprocess.PIPE)
    args = [os.fspath(a) for a in argv]
    proc = spawn([sys.executable, "-c", GUARD, str(os.getpid()), *args], process_group=0,
                 **popen_kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        kill_group(proc)
        raise
    finally:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
