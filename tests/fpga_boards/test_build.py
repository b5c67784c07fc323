"""`moeforge build`: bad inputs end in one line before any work; a real build of the probe
design (seconds) writes a bitstream and a report, and a timing miss fails unless allowed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moeforge import AccelConfig
from moeforge.errors import MoeforgeError
from moeforge.fpga_boards.boards import BOARDS
from moeforge.fpga_boards.build import TimingMissed, build
from moeforge.fpga_boards.resources import estimate_component
from moeforge.fpga_boards.top import BoardTop, pick_baud, plan_pll

from probe_design import ProbeDesign

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"


def _moeforge(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "moeforge.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_output_that_is_a_file_is_refused_before_anything(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    r = _moeforge("build", "--board", "ulx3s-85f", "--config", str(TINY), "-o", str(f))
    assert r.returncode == 2
    assert _one_error_line(r) == f"moeforge: error: -o {f}: is a file, not a folder"
    assert f.read_text() == "keep me"


def test_output_in_a_missing_folder_is_refused(tmp_path):
    r = _moeforge("build", "--board", "ulx3s-85f", "--config", str(TINY),
                  "-o", str(tmp_path / "no" / "such"))
    assert r.returncode == 2
    assert "does not exist" in _one_error_line(r)


@pytest.mark.parametrize("option, message", [
    (("--seed", "0"), "--seed: must be in [1, 2147483647], not 0"),
    (("--placer", "sa"), "--placer: invalid choice: 'sa'"),
])
def test_a_bad_build_option_is_a_usage_error(tmp_path, option, message):
    r = _moeforge("build", "--board", "ulx3s-85f", "--config", str(TINY), *option,
                  "-o", str(tmp_path / "o"))
    assert r.returncode == 2
    assert message in _one_error_line(r)
    assert not (tmp_path / "o").exists()


def test_a_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("mac_rows = 4", "mac_rows = 0"))
    r = _moeforge("build", "--board", "ulx3s-85f", "--config", str(bad), "-o", str(tmp_path / "o"))
    assert r.returncode == 2
    assert _one_error_line(r).startswith("moeforge: error: ")


def test_without_the_on_chip_store_the_build_says_so(tmp_path):
    """A board design needs the store: with its module hidden the build refuses, never fakes one."""
    code = ("import sys; sys.modules['moeforge.rtl.memory.onchip_store'] = None; "
            "from moeforge.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "build", "--board", "ulx3s-85f", "--config",
                        str(TINY), "-o", str(tmp_path / "o")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert _one_error_line(r).startswith("moeforge: error: no on-chip store: ")


def _probe_build(board_name, clock_mhz, out, **kw):
    board = BOARDS[board_name]
    cfg = AccelConfig.from_toml(TINY).replace(clock_mhz=clock_mhz)
    pll = plan_pll(board.fpga.family, board.clock_hz, cfg.clock_mhz * 1e6)
    design = ProbeDesign()
    est = estimate_component(design, board.fpga, name="design")
    top = BoardTop(board, cfg, baud=pick_baud(pll.fout, board.max_baud), design=design, pll=pll)
    return build(board, cfg, out, config_name="probe", prepared=(top, est, 0.0), **kw)


@pytest.mark.synthesis
def test_a_probe_build_writes_a_bitstream_and_a_report(tmp_path, capsys):
    r = _probe_build("ulx3s-85f", 50.0, tmp_path, progress_every=2)
    bit = tmp_path / "top.bit"
    assert r["bitstream"] == str(bit) and bit.stat().st_size > 100_000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert saved["timing"]["met"] and saved["resources"]["multipliers"]["used"] == 7
    assert set(saved["steps"]) == {"elaborate", "synthesis", "place_and_route", "bitstream"}
    assert saved["router"] == "router1" and saved["seed"] == 1 and saved["placer"] == "static"
    assert "Running Static placer" in (tmp_path / "logs" / "nextpnr.log").read_text()
    assert (tmp_path / "report.txt").read_text().startswith("moeforge build: probe on ulx3s-85f")
    for log in ("synthesis.log", "nextpnr.log"):
        assert (tmp_path / "logs" / log).stat().st_size > 0
    assert (tmp_path / "logs" / "ecppack.log").is_file()          # ecppack says nothing
    err = capsys.readouterr().err
    assert "synthesis (yosys): started" in err and "place and route (nextpnr-ecp5): done in" in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left"


@pytest.mark.parametrize("kw, message", [
    ({"router": "router3"}, "router 'router3': not one of router1, router2"),
    ({"placer": "sa"}, "placer 'sa': not one of static, heap"),
])
def test_an_unknown_router_or_placer_is_refused_before_anything(tmp_path, kw, message):
    cfg = AccelConfig.from_toml(TINY)
    with pytest.raises(MoeforgeError, match=message):
        build(BOARDS["ulx3s-85f"], cfg, tmp_path / "out", config_name="tiny", **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", [0, -3, 1.5, True])
def test_a_seed_that_is_not_a_positive_integer_is_refused_before_anything(tmp_path, seed):
    cfg = AccelConfig.from_toml(TINY)
    with pytest.raises(MoeforgeError, match=f"seed {seed!r}: must be a positive integer"):
        build(BOARDS["ulx3s-85f"], cfg, tmp_path / "out", config_name="tiny", seed=seed)
    assert not (tmp_path / "out").exists()


@pytest.mark.synthesis
def test_a_timing_miss_fails_and_keeps_the_earlier_bitstream_unless_allowed(tmp_path):
    earlier = tmp_path / "top.bit"
    earlier.write_bytes(b"an earlier build")
    with pytest.raises(TimingMissed) as e:
        _probe_build("ulx3s-85f", 200.0, tmp_path, progress_every=60)
    msg = str(e.value)
    assert msg.startswith("timing missed on ulx3s-85f: ") and "200.00 MHz wanted" in msg
    assert "critical path design.scrambler." in msg
    assert earlier.read_bytes() == b"an earlier build"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["timing"]["met"] is False and report["bitstream"] is None
    # The second build also takes the other placer: its report and nextpnr's log say so.
    r = _probe_build("ulx3s-85f", 200.0, tmp_path, allow_timing_fail=True, progress_every=60,
                     placer="heap")
    assert r["timing"]["met"] is False and earlier.stat().st_size > 100_000
    assert r["placer"] == "heap"
    assert "Running main analytical placer" in (tmp_path / "logs" / "nextpnr.log").read_text()
