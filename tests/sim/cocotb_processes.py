"""cocotb tests run by tests/sim/test_processes.py: what a simulation sees, and one that hangs."""

import json
import os
import time
from pathlib import Path

import cocotb

# The variables test_processes.py sets both in the caller's environment and in the run's own.
WATCHED = ("MOEFORGE_BENCH", "MOEFORGE_TEST_PARAMS", "COCOTB_RANDOM_SEED", "PYTEST_CURRENT_TEST",
           "WAVES")


@cocotb.test()
async def reports_env(dut):
    """Writes the watched variables as the simulator sees them to ``seen_env.json``."""
    Path("seen_env.json").write_text(json.dumps({k: os.environ.get(k) for k in WATCHED}))


@cocotb.test()
async def hangs(dut):
    """Writes the simulator's pid to ``$MOEFORGE_PID_FILE``, then never ends (run by name)."""
    Path(os.environ["MOEFORGE_PID_FILE"]).write_text(str(os.getpid()))
    while True:
        time.sleep(1)
