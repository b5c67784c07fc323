"""Shared fixtures of the simulation tests: build a component once per design, run cocotb."""

import pytest

from moeforge.rtl.export import to_verilog
from moeforge.sim.build import build_cached


@pytest.fixture(scope="session")
def sim_build():
    """``sim_build(component, name, *, waves=False) -> BuildHandle``.

    Exports `component` to Verilog and builds it through the on-disk cache
    (``$MOEFORGE_CACHE/sim`` or ``~/.cache/moeforge/sim``), so each design compiles once
    across runs and pytest-xdist workers; within a session the handle is memoised too.
    """
    handles = {}

    def build(component, name, *, waves=False, flags=()):
        verilog = to_verilog(component, name)
        key = (verilog, name, waves, tuple(flags))
        if key not in handles:
            handles[key] = build_cached(verilog, name, waves=waves, flags=flags)
        return handles[key]

    return build
