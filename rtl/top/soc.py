"""`MoESoC`: the top a board runs — host link, accelerator, and a memory port for the experts.

One top level for both ends of the link's byte stream (``docs/protocol.md``): with
``phy="stream"`` the bytes are a stream with backpressure (the simulated device, where a C++
harness feeds a TCP socket into it); with ``phy="uart"`` they are the pins of an 8N1 UART (a
board). Everything behind the bytes is the same: `HostLink` → `MoEAccelerator`, whose expert
store is outside the SoC, behind its memory port: a board plugs in its memory there, the
simulated device the backing-memory model (`moeforge.sim.tops.SimulatedSoC`).

Ports
-----
``phy="stream"``: ``rx`` (in stream of bytes), ``tx`` (out stream of bytes), ``busy`` — in
Verilog ``rx__valid``, ``rx__ready``, ``rx__payload[7:0]``, ``tx__valid``, ``tx__ready``,
``tx__payload[7:0]``, ``busy``, plus ``clk`` and ``rst``.

``phy="uart"``: ``rx`` (in, the pin), ``tx`` (out, the pin, idles high), ``busy``.

Both phys: the memory port, the accelerator's own (see `MoEAccelerator`): ``mem_req`` (out
stream ``{addr, length}``: read ``length`` words from word ``addr``), ``mem_resp`` (in stream
``{data}``: the words of the requests, in order), ``mem_wr`` (out ``{addr, data, en}``: the
host's ``WRITE_MEMORY`` words, one a cycle).

``busy`` is high while the device has work of its own: the link mid-frame, executing or
sending, a byte between link and accelerator, the accelerator not idle, or (UART) a byte on
the wire. When it is low and no byte arrives, nothing changes: the simulated device stops
clocking then.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.config import AccelConfig

from .accelerator import MoEAccelerator
from ..datapath.skid import SkidBuffer
from ..link.link import DEFAULT_RX_TIMEOUT, HostLink
from ..link.uart import UARTRx, UARTTx, uart_divisor

__all__ = ["MoESoC", "PHYS", "DEFAULT_BAUD", "MEMORY_PORT"]

PHYS = ("stream", "uart")
# The members of the memory port, named as on `MoEAccelerator`.
MEMORY_PORT = ("mem_req", "mem_resp", "mem_wr")
DEFAULT_BAUD = 3_000_000


class MoESoC(wiring.Component):
    """The host link in front of the accelerator, its expert store behind the memory port (see
    the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
    phy : str
        ``"stream"`` (byte streams with backpressure: the simulated device) or ``"uart"``
        (8N1 pins: a board).
    max_payload, rx_timeout : int
        The `HostLink`'s: longest frame payload in bytes, cycles without a byte before a frame
        is abandoned (default: 4096 cycles on the stream phy; 2 ms of the clock on a UART,
        since USB-serial adapters pause mid-frame for far longer than 4096 cycles).
    burst : int
        Longest burst the expert cache requests on ``mem_req``, in words.
    clock_hz, baud : float
        UART only: the clock (default ``cfg.clock_mhz`` MHz) and the baud rate (default
        3 Mbaud); the bit time is ``round(clock_hz / baud)`` cycles.

    Raises
    ------
    TypeError, ValueError
        For an unknown phy, UART rates given to the stream phy, or a parameter out of range
        (the message names it).
    """

    def __init__(self, cfg: AccelConfig, *, phy: str = "stream", max_payload: int = 1024,
                 rx_timeout: int | None = None, burst: int = 16, clock_hz: float | None = None,
                 baud: float | None = None, src_loc_at: int = 0):
        if not isinstance(cfg, AccelConfig):
            raise TypeError(f"cfg must be an AccelConfig, not {cfg!r}")
        if phy not in PHYS:
            raise ValueError(f"phy must be one of {', '.join(map(repr, PHYS))}, not {phy!r}")
        if phy == "stream" and (clock_hz is not None or baud is not None):
            raise ValueError(f"clock_hz and baud set the UART's bit time; phy 'stream' has no "
                             f"UART (got clock_hz={clock_hz!r}, baud={baud!r})")
        self.cfg, self.phy = cfg, phy
        if rx_timeout is None:
            clock = cfg.clock_mhz * 1e6 if clock_hz is None else clock_hz
            rx_timeout = max(DEFAULT_RX_TIMEOUT, int(clock * 2e-3)) if phy == "uart" else DEFAULT_RX_TIMEOUT
        self.link = HostLink(max_payload=max_payload, rx_timeout=rx_timeout,
                             src_loc_at=1 + src_loc_at)
        self.accel = MoEAccelerator(cfg, burst=burst, src_loc_at=1 + src_loc_at)
        if phy == "uart":
            self.clock_hz = cfg.clock_mhz * 1e6 if clock_hz is None else clock_hz
            self.baud = DEFAULT_BAUD if baud is None else baud
            self.divisor = uart_divisor(self.clock_hz, self.baud)
            self.uart_rx = UARTRx(divisor=self.divisor, src_loc_at=1 + src_loc_at)
            self.uart_tx = UARTTx(divisor=self.divisor, src_loc_at=1 + src_loc_at)
            ports = {"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1)}
        else:
            ports = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                     "busy": Out(1)}
        accel_ports = self.accel.signature.members
        ports.update({name: accel_ports[name] for name in MEMORY_PORT})
        super().__init__(ports, src_loc_at=1 + src_loc_at)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.accel = accel = self.accel
        # A register slice each way between link and accelerator: without them the link's
        # receive buffer read ran through the command decode into the accelerator's status
        # (the ECP5 85F build's critical path, 16.45 ns), and the combiner's accumulator read
        # through READ_PARTIAL's byte select into the link's response buffer (14.62 ns).
        m.submodules.cmd_slice = cmd_slice = SkidBuffer(link.o_cmd.payload.shape())
        m.submodules.rsp_slice = rsp_slice = SkidBuffer(accel.o_rsp.payload.shape())
        wiring.connect(m, link.o_cmd, cmd_slice.i)
        wiring.connect(m, cmd_slice.o, accel.i_cmd)
        wiring.connect(m, accel.o_rsp, rsp_slice.i)
        wiring.connect(m, rsp_slice.o, link.i_rsp)
        wiring.connect(m, accel.mem_req, wiring.flipped(self.mem_req))
        wiring.connect(m, wiring.flipped(self.mem_resp), accel.mem_resp)
        wiring.connect(m, accel.mem_wr, wiring.flipped(self.mem_wr))

        busy = link.busy | accel.busy | cmd_slice.o.valid | rsp_slice.o.valid   # a byte in flight
        if self.phy == "uart":
            m.submodules.uart_rx = urx = self.uart_rx
            m.submodules.uart_tx = utx = self.uart_tx
            m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
            wiring.connect(m, urx.o_data, link.i_rx)
            wiring.connect(m, link.o_tx, utx.i_data)
            busy = busy | urx.busy | utx.busy
        else:
            wiring.connect(m, wiring.flipped(self.rx), link.i_rx)
            wiring.connect(m, link.o_tx, wiring.flipped(self.tx))
        m.d.comb += self.busy.eq(busy)
        return m
