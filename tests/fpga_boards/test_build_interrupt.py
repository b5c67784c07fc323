"""A SIGTERM (a time-out, a CI job that is ended) stops ``moeforge build`` as Ctrl-C does: the
tool it is running dies with it, and the command says so in one line and exits 130. A SIGKILL,
which nothing can catch, still takes the tool with it (the tool runs under
`moeforge.child_process`'s guard).

The toolchain is replaced by a stand-in that records its pid and sleeps, so the test needs no
minutes of synthesis; the config, the resource check and the command line are the real ones.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys
from pathlib import Path
from moeforge.fpga_boards import toolchain
toolchain.tool_path = lambda name: Path(sys.argv[1])
from moeforge.cli import main
sys.exit(main(["build", "--board", "ulx3s-85f", "--config", sys.argv[2], "-o", sys.argv[3]]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_build(tmp_path):
    """The build, started, and the pid of its (stand-in) tool once it runs."""
    pid_file = tmp_path / "tool.pid"
    tool = tmp_path / "fake-yosys"
    tool.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    tool.chmod(0o755)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tool),
                              str(ROOT / "configs" / "tiny.toml"), str(tmp_path / "out")],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not pid_file.exists() or not pid_file.read_text().strip():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"the build never started its tool: {child.communicate()}")
        time.sleep(0.2)
    return child, int(pid_file.read_text())


def _assert_gone(tool_pid: int) -> None:
    for _ in range(100):                     # the group was killed; give the kernel a moment
        if not _alive(tool_pid):
            return
        time.sleep(0.1)
    os.kill(tool_pid, signal.SIGKILL)        # not left behind by a failing run either
    raise AssertionError(f"the tool (pid {tool_pid}) outlived the build")


def test_sigterm_ends_the_build_and_its_tool(tmp_path):
    child, tool_pid = _start_build(tmp_path)
    try:
        assert _alive(tool_pid)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    _assert_gone(tool_pid)
    assert child.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "moeforge: interrupted", err
    assert not (tmp_path / "out" / "top.bit").exists()


def test_sigkill_of_the_build_takes_its_tool(tmp_path):
    child, tool_pid = _start_build(tmp_path)
    assert _alive(tool_pid)
    child.kill()
    child.communicate(timeout=60)
    _assert_gone(tool_pid)
