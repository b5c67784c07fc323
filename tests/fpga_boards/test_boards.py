"""The boards: their FPGAs' figures are nextpnr's, their pins exist, PLL and baud plans hold."""

import json

import pytest

from moeforge.errors import MoeforgeError
from moeforge.fpga_boards.boards import BOARDS, UnknownBoard, get_board
from moeforge.fpga_boards.top import BaudError, pick_baud, plan_pll

# Saved from one real nextpnr run per device (the probe design; see data/README.md).
SAVED = {"ulx3s-85f": "probe-ulx3s-85f", "ulx3s-45f": "probe-ulx3s-45f",
         "ulx3s-25f": "probe-ulx3s-25f", "ulx3s-12f": "probe-ulx3s-12f",
         "orangecrab-25f": "probe-orangecrab-25f", "icebreaker": "probe-icebreaker"}


def test_the_registry_has_the_issue_s_boards():
    assert set(BOARDS) == {"ulx3s-12f", "ulx3s-25f", "ulx3s-45f", "ulx3s-85f", "orangecrab-25f",
                           "orangecrab-85f", "icebreaker"}
    assert get_board("ulx3s-85f") is BOARDS["ulx3s-85f"]
    with pytest.raises(UnknownBoard, match="unknown board 'de10'; known boards: ulx3s-12f, "):
        get_board("de10")


@pytest.mark.parametrize("board", sorted(SAVED))
def test_fpga_figures_are_what_nextpnr_reports(board, data_dir):
    util = json.loads((data_dir / f"{SAVED[board]}.nextpnr.json").read_text())["utilization"]
    f = BOARDS[board].fpga
    if f.family == "ecp5":
        avail = {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "multipliers": "MULT18X18D",
                 "bram_blocks": "DP16KD"}
    else:
        avail = {"luts": "ICESTORM_LC", "ffs": "ICESTORM_LC", "multipliers": "ICESTORM_DSP",
                 "bram_blocks": "ICESTORM_RAM"}
    for attr, bel in avail.items():
        assert getattr(f, attr) == util[bel]["available"], (attr, bel)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_each_board_has_the_resources_its_top_requests(name):
    board = BOARDS[name]
    platform = board.make_platform()
    for spec in (board.uart, board.reset, *board.leds.values()):
        res = platform.lookup(spec[0], spec[1])
        if len(spec) > 2:
            assert spec[2] in {s.name for s in res.ios}
    uart = platform.lookup(*board.uart)
    assert {"rx", "tx"} <= {s.name for s in uart.ios}
    assert set(board.leds) == {"alive", "busy", "error"}
    assert board.clock_hz > 0 and board.bitstream_suffix in (".bit", ".bin")


@pytest.mark.parametrize("family, fin, fout, params", [
    # the settings Project Trellis' ecppll prints for these (yowasp-ecppll -i 25 -o 50, -i 48 -o 100)
    ("ecp5", 25e6, 50e6, {"CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12, "CLKOP_CPHASE": 5}),
    ("ecp5", 48e6, 100e6, {"CLKI_DIV": 12, "CLKFB_DIV": 25, "CLKOP_DIV": 6, "CLKOP_CPHASE": 2}),
])
def test_the_ecp5_pll_matches_ecppll(family, fin, fout, params):
    p = plan_pll(family, fin, fout)
    assert p.params == params and p.fout == fout and 400e6 <= p.fvco <= 800e6


def test_the_pll_gets_as_close_as_it_can_and_refuses_what_it_cannot():
    p = plan_pll("ecp5", 48e6, 50e6)                 # no exact setting from 48 MHz
    assert abs(p.fout - 50e6) / 50e6 < 0.05 and p.fout != 50e6
    p = plan_pll("ice40", 12e6, 48e6)
    assert p.fout == 48e6 and 533e6 <= p.fvco <= 1066e6
    with pytest.raises(MoeforgeError, match="the PLL cannot make 1000 MHz from 25 MHz"):
        plan_pll("ecp5", 25e6, 1000e6)


def test_the_baud_is_the_fastest_standard_rate_the_clock_divides_closely():
    assert pick_baud(50e6, 3_000_000) == 2_000_000      # 3 Mbaud would be 2% off
    assert pick_baud(100e6, 3_000_000) == 3_000_000     # divisor 33: 1% off
    assert pick_baud(50e6, 1_000_000) == 1_000_000      # the bridge's limit
    with pytest.raises(BaudError):
        pick_baud(300e3, 3_000_000)
