"""Fixtures every test folder may use."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.register_assert_rewrite("testkit")         # tests/testkit.py, imported by the test files


@pytest.fixture
def shared_dir():
    """A folder another user can reach (pytest's own temporary folders are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="moeforge-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def unprivileged():
    """``unprivileged(cmd) -> cmd`` run as user 'nobody' when the tests run as root, where every
    file is writable and a permission check could never fail."""
    def wrap(cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: every file is writable to root")
        return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return wrap


@pytest.fixture(scope="session")
def sim_build():
    """``sim_build(component, name, *, waves=False) -> BuildHandle``.

    Exports `component` to Verilog and builds it through the on-disk cache
    (``$MOEFORGE_CACHE/sim`` or ``~/.cache/moeforge/sim``), so each design compiles once
    across runs and pytest-xdist workers; within a session the handle is memoised too.
    """
    from moeforge.rtl.export import to_verilog
    from moeforge.sim.build import build_cached

    handles = {}

    def build(component, name, *, waves=False, flags=()):
        verilog = to_verilog(component, name)
        key = (verilog, name, waves, tuple(flags))
        if key not in handles:
            handles[key] = build_cached(verilog, name, waves=waves, flags=flags)
        return handles[key]

    return build
