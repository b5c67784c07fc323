"""A SIGTERM (a time-out, a CI job that is ended) stops ``moeforge build`` as Ctrl-C does: the
tool it is running dies with it, and the command says so in one line and exits 130.

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


def test_sigterm_ends_the_build_and_its_tool(tmp_path):
    pid_file = tmp_path / "tool.pid"
    tool = tmp_path / "fake-yosys"
    tool.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    tool.chmod(0o755)
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tool),
                              str(ROOT / "configs" / "tiny.toml"), str(out)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not pid_file.exists() or not pid_file.read_text().strip():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the build never started its tool"
            time.sleep(0.2)
        tool_pid = int(pid_file.read_text())
        assert _alive(tool_pid)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "moeforge: interrupted", err
    for _ in range(50):                      # the group was killed; give the kernel a moment
        if not _alive(tool_pid):
            break
        time.sleep(0.1)
    survived = _alive(tool_pid)
    if survived:
        os.kill(tool_pid, signal.SIGKILL)    # not left behind by a failing run either
    assert not survived, f"the tool (pid {tool_pid}) outlived the build"
    assert not (out / "top.bit").exists()
