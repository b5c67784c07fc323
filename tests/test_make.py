"""`make test` and the CI entry point fail when no test ran, and say so.

pytest exits 5 when a marker expression or a path selects nothing; nothing between it and the
caller may turn that into success. Each run here is narrowed to one small test file
(TEST_PATHS), on the venv as it is (NO_INSTALL), with this interpreter (PY).
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = "tests/hls_models/test_fixed_point.py::test_round_shift_is_round_half_up"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _run(argv, **env):
    """Run `argv` in the checkout with `env` added; kill its whole process group on a timeout."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MAKE", "MFLAGS", "TEST_"))}
    base |= {"JOBS": "0", "NO_INSTALL": "1", "MAKEFLAGS": f"PY={sys.executable}", **env}
    p = subprocess.Popen(argv, cwd=ROOT, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return p.returncode, out, err


def test_make_test_runs_the_tests_it_is_narrowed_to():
    rc, out, err = _run(["make", "test"], TEST_PATHS=SMALL)
    assert rc == 0, err[-2000:]
    assert " passed" in out and "deselected" not in out


@pytest.mark.parametrize("argv", [["make", "test"], [".ci/run"]])
def test_no_test_selected_fails_loudly(argv):
    rc, out, err = _run(argv, TEST_PATHS=SMALL, TEST_MARKERS="slow and synthesis")
    assert rc != 0, out[-2000:]
    assert 'no test ran: -m "slow and synthesis" selects nothing in ' + SMALL in err
