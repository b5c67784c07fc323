"""`run_tool` on stand-in tools: a tool that aborts names its error from its own log."""

import io

import pytest

from moeforge.fpga_boards import toolchain
from moeforge.fpga_boards.toolchain import ToolError, run_tool


def _tool(tmp_path, monkeypatch, script: str):
    exe = tmp_path / "fake-tool"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setattr(toolchain, "tool_path", lambda name: exe)


def test_an_error_only_in_the_tools_own_log_is_the_message_and_the_log(tmp_path, monkeypatch):
    """As Yosys aborting in ABC: its pipe ends before the ERROR line, its ``-l`` log has it."""
    _tool(tmp_path, monkeypatch,
          'echo "Running ABC command"\n'
          'printf "Running ABC command\\nERROR: Assert failed in rtlil.cc\\n" > own.log\n'
          "exit 1\n")
    log = tmp_path / "synthesis.log"
    with pytest.raises(ToolError) as exc:
        run_tool("yosys", [], cwd=tmp_path, log=log, step="synthesis (yosys)", timeout=60,
                 out=io.StringIO(), own_log="own.log")
    assert "ERROR: Assert failed in rtlil.cc" in str(exc.value)
    assert "exit status 1" in str(exc.value)
    assert "ERROR: Assert failed" in log.read_text()


def test_without_an_own_log_the_pipe_is_the_log(tmp_path, monkeypatch):
    _tool(tmp_path, monkeypatch, 'echo "phase one"\necho "ERROR: no such cell"\nexit 3\n')
    log = tmp_path / "tool.log"
    with pytest.raises(ToolError, match="exit status 3.*ERROR: no such cell"):
        run_tool("yosys", [], cwd=tmp_path, log=log, step="synthesis (yosys)", timeout=60,
                 out=io.StringIO())
    assert log.read_text().splitlines() == ["phase one", "ERROR: no such cell"]


def test_a_tool_that_succeeds_returns_its_time(tmp_path, monkeypatch):
    _tool(tmp_path, monkeypatch, 'echo "done" > own.log\necho "working"\n')
    log = tmp_path / "tool.log"
    took = run_tool("yosys", [], cwd=tmp_path, log=log, step="synthesis (yosys)", timeout=60,
                    out=io.StringIO(), own_log="own.log")
    assert took >= 0 and log.read_text() == "done\n"
