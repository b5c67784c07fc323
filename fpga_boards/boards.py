"""The boards `moeforge build` and `moeforge program` know, by name.

Each board is a thin subclass of its `amaranth-boards` platform (pins, clock, toolchain
settings come from there) plus what a build needs to know about it: the FPGA's resources (for
the resource check, before any tool runs), the USB-serial UART, the reset button, the three
status LEDs (alive, busy, error) and how openFPGALoader reaches it. Adding a board is one
`Board` entry in `BOARDS` (and a platform subclass if the board lacks a resource).

The FPGA figures are nextpnr's own: the totals it reports for each device
(``tests/fpga_boards/data/*-utilisation.txt`` were captured from it), so the resource check and
the build report speak of the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.build import Attrs, Pins, Resource, Subsignal
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform, OrangeCrabR0_2_85FPlatform
from amaranth_boards.ulx3s import (ULX3S_12F_Platform, ULX3S_25F_Platform, ULX3S_45F_Platform,
                                   ULX3S_85F_Platform)

from moeforge.errors import MoeforgeError

__all__ = ["FPGA", "Board", "BOARDS", "FPGAS", "get_board", "UnknownBoard"]


class UnknownBoard(MoeforgeError, ValueError):
    """A board name that is not in `BOARDS`."""


@dataclass(frozen=True)
class FPGA:
    """One FPGA device: what it has, and how nextpnr names it.

    ``luts``, ``ffs``: LUT4s and flip-flops; ``multipliers``: 18×18 multipliers (ECP5
    MULT18X18D) or 16×16 DSPs (iCE40 SB_MAC16); ``bram_blocks`` of ``bram_block_bits`` bits
    each (ECP5 DP16KD: 18 Kbit, 16 Kbit of them without parity; iCE40 SB_RAM40_4K: 4 Kbit);
    ``large_ram_bits``: iCE40 UltraPlus single-port RAM (SB_SPRAM256KA), 0 elsewhere.
    """

    name: str
    family: str                 # "ecp5" or "ice40"
    luts: int
    ffs: int
    multipliers: int
    bram_blocks: int
    bram_block_bits: int
    nextpnr_device: str         # the nextpnr option that selects the device
    large_ram_bits: int = 0

    @property
    def bram_bits(self) -> int:
        return self.bram_blocks * self.bram_block_bits


FPGAS = {f.name: f for f in (
    # ECP5: LUT4 = TRELLIS_COMB, FF = TRELLIS_FF as nextpnr-ecp5 reports them.
    FPGA("LFE5U-12F", "ecp5", luts=24288, ffs=24288, multipliers=28, bram_blocks=56,
         bram_block_bits=18432, nextpnr_device="--12k"),
    FPGA("LFE5U-25F", "ecp5", luts=24288, ffs=24288, multipliers=28, bram_blocks=56,
         bram_block_bits=18432, nextpnr_device="--25k"),
    FPGA("LFE5U-45F", "ecp5", luts=43848, ffs=43848, multipliers=72, bram_blocks=108,
         bram_block_bits=18432, nextpnr_device="--45k"),
    FPGA("LFE5U-85F", "ecp5", luts=83640, ffs=83640, multipliers=156, bram_blocks=208,
         bram_block_bits=18432, nextpnr_device="--85k"),
    FPGA("iCE40UP5K", "ice40", luts=5280, ffs=5280, multipliers=8, bram_blocks=30,
         bram_block_bits=4096, nextpnr_device="--up5k", large_ram_bits=4 * 256 * 1024),
)}


class _OrangeCrabUART:
    """The OrangeCrab has no USB-serial bridge (its USB goes straight to the FPGA): the SoC's
    UART is on the Feather header's pins 0 (RX, from the adapter's TX) and 1 (TX), for a
    3.3 V USB-serial adapter."""

    uart = [Resource("uart", 0,
                     Subsignal("rx", Pins("0", dir="i", conn=("io", 0))),
                     Subsignal("tx", Pins("1", dir="o", conn=("io", 0))),
                     Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_resources(self.uart)


class OrangeCrab25FPlatform(_OrangeCrabUART, OrangeCrabR0_2_25FPlatform):
    """OrangeCrab r0.2, LFE5U-25F, with the UART on the Feather header."""


class OrangeCrab85FPlatform(_OrangeCrabUART, OrangeCrabR0_2_85FPlatform):
    """OrangeCrab r0.2, LFE5U-85F, with the UART on the Feather header."""


class ICEBreakerWithPmodPlatform(ICEBreakerPlatform):
    """iCEBreaker with its break-off LED/button Pmod attached (a third LED for busy)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_resources(self.break_off_pmod)


@dataclass(frozen=True)
class Board:
    """One board: its platform, FPGA, and the resources the board top uses.

    Resources are ``(name, number)`` pairs of the platform; an LED may name a subsignal too
    (``("rgb_led", 0, "g")``). ``max_baud`` is the fastest rate
    its USB-serial bridge (or, without one, a common adapter) takes; the build picks the
    fastest standard rate up to it that the clock divides within the UART's tolerance.
    ``loader`` are openFPGALoader's arguments that select the board.
    """

    name: str
    platform: type
    fpga: FPGA
    uart: tuple[str, int]
    reset: tuple[str, int]
    leds: dict[str, tuple]                 # alive, busy, error
    max_baud: int
    loader: tuple[str, ...]
    bitstream_suffix: str
    note: str = ""

    def make_platform(self):
        """A new platform object (a platform is used for one build only)."""
        return self.platform()

    @property
    def clock_hz(self) -> float:
        """The board's oscillator, in Hz."""
        return float(self.make_platform().default_clk_frequency)


def _ulx3s(size: str, platform, fpga: str) -> Board:
    return Board(f"ulx3s-{size}", platform, FPGAS[fpga], uart=("uart", 0),
                 reset=("button_pwr", 0),
                 leds={"alive": ("led", 0), "busy": ("led", 1), "error": ("led", 7)},
                 max_baud=3_000_000, loader=("-b", "ulx3s"), bitstream_suffix=".bit",
                 note="UART on the FT231X USB-serial bridge (the US1 port); reset: PWR button")


def _orangecrab(size: str, platform, fpga: str) -> Board:
    return Board(f"orangecrab-{size}", platform, FPGAS[fpga], uart=("uart", 0),
                 reset=("button", 0),
                 leds={"alive": ("rgb_led", 0, "g"), "busy": ("rgb_led", 0, "b"),
                       "error": ("rgb_led", 0, "r")},
                 max_baud=1_000_000, loader=("-b", "orangeCrab"), bitstream_suffix=".bit",
                 note="no USB-serial bridge: UART on Feather pins 0 (RX) and 1 (TX) for a 3.3 V "
                      "adapter; programmed over USB DFU (hold the button while plugging in)")


BOARDS: dict[str, Board] = {b.name: b for b in (
    _ulx3s("12f", ULX3S_12F_Platform, "LFE5U-12F"),
    _ulx3s("25f", ULX3S_25F_Platform, "LFE5U-25F"),
    _ulx3s("45f", ULX3S_45F_Platform, "LFE5U-45F"),
    _ulx3s("85f", ULX3S_85F_Platform, "LFE5U-85F"),
    _orangecrab("25f", OrangeCrab25FPlatform, "LFE5U-25F"),
    _orangecrab("85f", OrangeCrab85FPlatform, "LFE5U-85F"),
    Board("icebreaker", ICEBreakerWithPmodPlatform, FPGAS["iCE40UP5K"], uart=("uart", 0),
          reset=("button", 0),
          leds={"alive": ("led_g", 0), "busy": ("led_g", 1), "error": ("led_r", 0)},
          max_baud=3_000_000, loader=("-b", "ice40_generic"), bitstream_suffix=".bin",
          note="UART on the FT2232H's second channel; busy LED on the break-off Pmod"),
)}


def get_board(name: str) -> Board:
    """The `Board` called `name`, else `UnknownBoard` listing the known ones."""
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise UnknownBoard(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None
