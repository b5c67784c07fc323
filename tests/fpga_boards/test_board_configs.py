"""The configs shipped for boards (configs/boards/) are valid and pass the resource check of
every board they are for, before any tool runs; each file is listed here with its boards, so a
new one cannot be left unchecked. Their builds (bitstream, Fmax) are `make test-boards`'s."""

from pathlib import Path

import pytest

from moeforge import AccelConfig
from moeforge.fpga_boards.boards import BOARDS
from moeforge.fpga_boards.build import prepare_top

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "configs" / "boards"

# Each board config and the boards it is sized for.
BOARD_CONFIGS = {
    "ecp5-25f.toml": ("ulx3s-25f", "orangecrab-25f"),
    "ecp5-85f.toml": ("ulx3s-85f", "orangecrab-85f"),
}


def test_every_board_config_is_listed():
    assert sorted(p.name for p in FOLDER.glob("*.toml")) == sorted(BOARD_CONFIGS)


@pytest.mark.parametrize("name, board", [(n, b) for n, bs in BOARD_CONFIGS.items() for b in bs])
def test_board_config_fits_its_board(name, board):
    cfg = AccelConfig.from_toml(FOLDER / name)
    top, estimate, _ = prepare_top(BOARDS[board], cfg)   # ResourceShortfall if it does not fit
    fpga = BOARDS[board].fpga
    assert 0 < estimate.total.multipliers <= fpga.multipliers
    _mark_used(top, BOARDS[board])


def _mark_used(top, board) -> None:
    """The board top was built only to be checked: elaborate it on its platform (no
    unused-design warning)."""
    from amaranth.hdl import Fragment
    Fragment.get(top, board.make_platform())
