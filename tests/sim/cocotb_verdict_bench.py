"""A bench that misbehaves on purpose, run by tests/sim/test_verdicts.py (not by pytest itself).

It reads the tool's bench file (``MOEFORGE_BENCH``) like the real benches and does what its
``test_mode`` says, so each way a summary can lie is tried against the verdict:

``silent``
    drive nothing, write no summary, pass;
``half``
    run the real requantiser bench on the first half of the beats (a real comparison of half
    the outputs, with this run's nonce), pass;
``stale_nonce``
    run the real requantiser bench on everything, but write the summary with another nonce;
``nothing``
    write a summary of this run that compared nothing, pass;
``layer_first_batch``
    run the real whole-layer bench on the load and the first batch's steps only.
"""

import cocotb
from cocotb.triggers import Timer

from moeforge.sim.benches import layer, requantiser
from moeforge.sim.benches.common import load_bench, write_summary
from moeforge.sim.scoreboard import Scoreboard


@cocotb.test()
async def misbehave(dut):
    b = load_bench()
    mode = b["test_mode"]
    if mode == "silent":
        await Timer(100, unit="ns")
    elif mode == "half":
        n = len(b["expected"]) // 2
        await requantiser.run(dut, {**b, "beats": b["beats"][:n], "expected": b["expected"][:n]})
    elif mode == "stale_nonce":
        await requantiser.run(dut, {**b, "nonce": "0123456789abcdef"})
    elif mode == "nothing":
        write_summary(b, [Scoreboard("nothing", stop=False)], cycles=0, wall_s=0.0)
    elif mode == "layer_first_batch":
        first_outputs = next(i for i, st in enumerate(b["steps"]) if st.get("expected") is not None)
        await layer.run(dut, {**b, "steps": b["steps"][:first_outputs + 2]})
    else:
        raise AssertionError(f"unknown test_mode {mode!r}")
