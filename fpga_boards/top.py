"""The board top: the SoC with its on-chip expert store, a PLL to the config's clock, the UART on
the board's USB-serial pins, a reset button and three status LEDs.

`SoCWithStore` is the synthesizable part every board shares (`MoESoC` on the UART phy, its
memory port on `OnChipExpertStore`); it is also what the resource check elaborates. `BoardTop`
adds what differs per board: the PLL (ECP5 EHXPLLL, iCE40 SB_PLL40_PAD) from the board's
oscillator, the reset (the button, or the PLL not locked yet, released synchronously), the pins
and the LEDs: alive (blinks at about 1 Hz while the clock runs), busy (lit while the device
works, held 50 ms so a short command shows), error (a UART framing error or overrun since reset).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.wiring import In, Out

from moeforge.config import AccelConfig
from moeforge.errors import MoeforgeError

from .boards import Board

__all__ = ["SoCWithStore", "BoardTop", "PLLPlan", "plan_pll", "pick_baud", "STANDARD_BAUDS",
           "store_budget",
           "NoOnChipStore", "BaudError"]

# Fastest first; the build takes the first the clock divides closely enough.
STANDARD_BAUDS = (3_000_000, 2_000_000, 1_500_000, 1_000_000, 921_600, 500_000, 460_800,
                  230_400, 115_200)
# How far the PLL's output may be from the config's clock (48 MHz makes no 50 MHz exactly).
PLL_TOLERANCE = 0.05
# The device side's share of the UART's error budget (the adapter has its own).
BAUD_TOLERANCE = 0.015


class NoOnChipStore(MoeforgeError):
    """The on-chip expert store is not available, so no board design can be built."""


class BaudError(MoeforgeError):
    """No standard baud rate that the board's bridge takes divides the clock closely enough."""


def _store_class():
    try:
        from moeforge.rtl.memory.onchip_store import OnChipExpertStore
    except ImportError as exc:
        raise NoOnChipStore(f"no on-chip store: moeforge.rtl.memory.onchip_store cannot be "
                            f"imported ({exc}); a board design needs one for the experts") from None
    return OnChipExpertStore


class SoCWithStore(wiring.Component):
    """`MoESoC` (UART phy) with its memory port on an `OnChipExpertStore`.

    Ports: ``rx`` (in, idles high), ``tx`` (out), ``busy``, ``error`` (the UART saw a framing
    error or an overrun since reset).

    Raises
    ------
    NoOnChipStore
        If the store is not available.
    """

    def __init__(self, cfg: AccelConfig, *, clock_hz: float, baud: float, budget_bits: int,
                 burst: int = 16):
        from moeforge.rtl.top.soc import MoESoC
        store_cls = _store_class()
        self.cfg = cfg
        # the store first: it refuses a config whose experts do not fit, before the SoC exists
        self.store = store_cls(cfg, burst=burst, budget_bits=budget_bits)
        self.soc = MoESoC(cfg, phy="uart", clock_hz=clock_hz, baud=baud, burst=burst)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1),
                          "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.soc = soc = self.soc
        m.submodules.store = store = self.store
        wiring.connect(m, soc.mem_req, store.mem_req)
        wiring.connect(m, store.mem_resp, soc.mem_resp)
        wiring.connect(m, soc.mem_wr, store.mem_wr)
        m.d.comb += [soc.rx.eq(self.rx), self.tx.eq(soc.tx), self.busy.eq(soc.busy)]
        urx = soc.uart_rx
        m.d.comb += self.error.eq((urx.frame_errors != 0) | (urx.overruns != 0))
        return m


@dataclass(frozen=True)
class PLLPlan:
    """A PLL setting: input and output frequencies (Hz), the VCO's, and the primitive's
    parameters."""

    family: str
    fin: float
    fout: float
    fvco: float
    params: dict


def plan_pll(family: str, fin: float, target: float) -> PLLPlan:
    """The PLL setting whose output is closest to `target` Hz from `fin` Hz.

    ECP5 (EHXPLLL, feedback from CLKOP): the search ``ecppll`` makes — PFD 3.125–400 MHz, VCO
    400–800 MHz, ties to the VCO nearest 600 MHz. iCE40 (SB_PLL40, simple feedback): ``icepll``'s
    — PFD 10–133 MHz, VCO 533–1066 MHz.

    Raises
    ------
    MoeforgeError
        If no setting comes within `PLL_TOLERANCE` of `target` (the build then runs at the
        PLL's actual output, which the report states).
    """
    best = None
    fin_m, tgt = fin / 1e6, target / 1e6
    if family == "ecp5":
        for idiv in range(1, 129):
            fpfd = fin_m / idiv
            if not 3.125 <= fpfd <= 400:
                continue
            for fbdiv in range(1, 81):
                for odiv in range(1, 129):
                    fvco = fpfd * fbdiv * odiv
                    if fvco > 800:
                        break
                    if fvco < 400:
                        continue
                    fout = fvco / odiv
                    key = (abs(fout - tgt), abs(fvco - 600))
                    if best is None or key < best[0]:
                        best = (key, fout, fvco, {"CLKI_DIV": idiv, "CLKFB_DIV": fbdiv,
                                                  "CLKOP_DIV": odiv, "CLKOP_CPHASE": odiv // 2 - 1})
    elif family == "ice40":
        for divr in range(16):
            fpfd = fin_m / (divr + 1)
            if not 10 <= fpfd <= 133:
                continue
            for divf in range(128):
                fvco = fpfd * (divf + 1)
                if not 533 <= fvco <= 1066:
                    continue
                for divq in range(1, 7):
                    fout = fvco / (1 << divq)
                    key = (abs(fout - tgt), 0)
                    if best is None or key < best[0]:
                        rng = next(i for i, hi in enumerate((17, 26, 44, 66, 101, 1e9), 1) if fpfd < hi)
                        best = (key, fout, fvco, {"DIVR": divr, "DIVF": divf, "DIVQ": divq,
                                                  "FILTER_RANGE": rng})
    else:
        raise MoeforgeError(f"no PLL for FPGA family {family!r}")
    if best is None or best[0][0] > PLL_TOLERANCE * tgt:
        got = f"{best[1]:.3f} MHz at best" if best else "nothing"
        raise MoeforgeError(f"the PLL cannot make {tgt:g} MHz from {fin_m:g} MHz ({got})")
    _, fout, fvco, params = best
    return PLLPlan(family, fin, fout * 1e6, fvco * 1e6, params)


def pick_baud(clock_hz: float, max_baud: int) -> int:
    """The fastest of `STANDARD_BAUDS` up to `max_baud` whose bit time in whole cycles of
    `clock_hz` is within `BAUD_TOLERANCE` of it (and at least the UART's minimum)."""
    from moeforge.rtl.link.uart import MIN_DIVISOR
    for baud in STANDARD_BAUDS:
        if baud > max_baud:
            continue
        div = round(clock_hz / baud)
        if div >= MIN_DIVISOR and abs(clock_hz / div - baud) / baud <= BAUD_TOLERANCE:
            return baud
    raise BaudError(f"no standard baud rate up to {max_baud} fits a {clock_hz / 1e6:g} MHz clock "
                    f"within {BAUD_TOLERANCE * 100:g}%")


def store_budget(board: Board) -> int:
    """The store's budget on a board: unlimited, since the resource check judges the fit of
    the whole design (store, caches, buffers) against the board's block RAM, and names every
    resource that is short, where the store alone could only speak of its own bits."""
    return 1 << 40


class BoardTop(Elaboratable):
    """The whole design for `board`: see the module docstring.

    Parameters
    ----------
    board : Board
    cfg : AccelConfig
        Its ``clock_mhz`` is the PLL's target; the UART runs at the PLL's actual output.
    baud : int, optional
        Default: `pick_baud` of the clock and the board's bridge.
    design : SoCWithStore, optional
        Built for this clock and baud already (the resource check elaborates it first);
        default: a new one.
    pll : PLLPlan, optional
        Default: `plan_pll` to ``cfg.clock_mhz``.
    """

    def __init__(self, board: Board, cfg: AccelConfig, *, baud: int | None = None,
                 design: SoCWithStore | None = None, pll: PLLPlan | None = None):
        self.board, self.cfg = board, cfg
        self.pll = plan_pll(board.fpga.family, board.clock_hz, cfg.clock_mhz * 1e6) if pll is None else pll
        self.baud = pick_baud(self.pll.fout, board.max_baud) if baud is None else baud
        if design is None:
            design = SoCWithStore(cfg, clock_hz=self.pll.fout, baud=self.baud,
                                  budget_bits=store_budget(board))
        self.design = design

    def _pll(self, m: Module, clk_in, clk_out, lock) -> None:
        p = self.pll.params
        if self.pll.family == "ecp5":
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{self.pll.fin / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{self.pll.fout / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
                p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=p["CLKFB_DIV"],
                i_RST=0, i_STDBY=0, i_CLKI=clk_in, o_CLKOP=clk_out, i_CLKFB=clk_out,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=lock)
        else:           # the iCE40 PLL takes its reference straight from the clock pin's pad
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"],
                p_DIVQ=p["DIVQ"], p_FILTER_RANGE=p["FILTER_RANGE"],
                i_PACKAGEPIN=clk_in, o_PLLOUTGLOBAL=clk_out, i_RESETB=1, i_BYPASS=0,
                o_LOCK=lock)

    def _pin(self, m, platform, spec, requested, direction):
        """A buffer of direction ``"i"`` or ``"o"`` on the pin `spec` names: ``(resource,
        number)``, or ``(resource, number, subsignal)``."""
        key = (spec[0], spec[1])
        if key not in requested:                    # an RGB LED's colours are one resource
            requested[key] = platform.request(*key, dir="-")
        port = requested[key]
        for name in spec[2:]:
            port = getattr(port, name)
        buf = io.Buffer(direction, port)
        m.submodules["pin_" + "_".join(map(str, spec))] = buf
        return buf

    def elaborate(self, platform):
        m = Module()
        board = self.board
        clk_pin = platform.request(platform.default_clk, dir="-")
        clk, lock = Signal(name="pll_clk"), Signal(name="pll_lock")
        if self.pll.family == "ecp5":
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_pin)
            self._pll(m, clk_buf.i, clk, lock)
        else:
            self._pll(m, clk_pin.io, clk, lock)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        platform.add_clock_constraint(clk, self.pll.fout)
        requested = {}
        button = self._pin(m, platform, board.reset, requested, "i")
        if self.pll.family == "ecp5":
            # The reset reaches most of the design's flip-flops: on ECP5 it leaves its
            # synchroniser through a clock buffer (DCCA) onto a global line, as the clock does,
            # rather than through thousands of arcs of general routing.
            m.domains.reset_src = ClockDomain("reset_src", local=True)
            m.d.comb += ClockSignal("reset_src").eq(clk)
            m.submodules.reset_sync = ResetSynchronizer(~lock | button.i, domain="reset_src")
            rst = Signal(name="reset_global")
            m.submodules.reset_buf = Instance("DCCA", i_CLKI=ResetSignal("reset_src"), i_CE=1,
                                              o_CLKO=rst)
            m.d.comb += ResetSignal("sync").eq(rst)
        else:
            m.submodules.reset_sync = ResetSynchronizer(~lock | button.i, domain="sync")

        m.submodules.design = design = self.design
        rx = self._pin(m, platform, (*board.uart, "rx"), requested, "i")
        tx = self._pin(m, platform, (*board.uart, "tx"), requested, "o")
        m.d.comb += [design.rx.eq(rx.i), tx.o.eq(design.tx)]

        fclk = int(self.pll.fout)
        alive = Signal(range(fclk // 2 + 1))
        blink = Signal()
        with m.If(alive == 0):
            m.d.sync += [alive.eq(fclk // 2), blink.eq(~blink)]
        with m.Else():
            m.d.sync += alive.eq(alive - 1)
        hold = Signal(range(fclk // 20 + 1))
        with m.If(design.busy):
            m.d.sync += hold.eq(fclk // 20)
        with m.Elif(hold != 0):
            m.d.sync += hold.eq(hold - 1)
        leds = {name: self._pin(m, platform, spec, requested, "o") for name, spec in board.leds.items()}
        m.d.comb += [leds["alive"].o.eq(blink), leds["busy"].o.eq(design.busy | (hold != 0)),
                     leds["error"].o.eq(design.error)]
        return m
