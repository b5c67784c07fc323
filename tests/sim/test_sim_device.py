"""The simulated device: the C++ socket harness around a Verilated design, and its process.

Most tests run a stand-in design with the SoC's ports (`CountingEcho`); one runs the real
device of configs/tiny.toml (`SimulatedSoC`: `MoESoC` with the backing-memory model on its
memory port) and asks it HELLO.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from moeforge.rtl.export import to_verilog
from moeforge.sim.build import SimBuildError
from moeforge.sim.sim_device import (DEVICE_PORTS, SimDeviceError, SimDeviceProcess,
                                     build_device_executable, check_device_ports)
from moeforge.spec.protocol import BUSY_LINE

pytestmark = pytest.mark.verilator

ROOT = Path(__file__).resolve().parents[2]


class CountingEcho(wiring.Component):
    """Stand-in for MoESoC(phy="stream"): answers byte number i (from reset) with
    ``(byte + i) % 256`` after `delay` cycles, then stays busy for `linger` cycles (as a link
    layer's receive timeout does). The count makes the device's state visible across
    connections."""

    def __init__(self, *, delay: int = 3, linger: int = 3000):
        self.delay, self.linger = delay, linger
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                          "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        data = Signal(8)
        index = Signal(8)
        count = Signal(range(max(self.delay, self.linger) + 1))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += [data.eq(self.rx.payload + index), index.eq(index + 1),
                                 count.eq(self.delay)]
                    m.next = "WAIT"
                with m.Elif(count != 0):
                    m.d.sync += count.eq(count - 1)
                    m.d.comb += self.busy.eq(1)
            with m.State("WAIT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.busy.eq(1), self.tx.valid.eq(1), self.tx.payload.eq(data)]
                with m.If(self.tx.ready):
                    m.d.sync += count.eq(self.linger)
                    m.next = "IDLE"
        return m


def expected(data: bytes, first: int = 0) -> bytes:
    return bytes((b + i) % 256 for i, b in enumerate(data, start=first))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise AssertionError(f"connection closed after {len(got)} of {n} bytes")
        got += chunk
    return bytes(got)


def gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(scope="session")
def echo_exe():
    dut = CountingEcho()
    check_device_ports(dut)
    return build_device_executable(to_verilog(dut, "counting_echo"), "counting_echo")


def test_ports_and_verilog_checks():
    assert set(DEVICE_PORTS) == {"rx__valid", "rx__ready", "rx__payload", "tx__valid",
                                 "tx__ready", "tx__payload", "busy"}

    class NoBusy(wiring.Component):
        rx: In(stream.Signature(8))
        tx: Out(stream.Signature(8))

        def elaborate(self, platform):
            m = Module()
            m.d.sync += Signal().eq(1)
            return m

    dut = NoBusy()
    with pytest.raises(ValueError, match=r"missing \['busy'\]"):
        check_device_ports(dut)
    verilog = to_verilog(dut, "no_busy")        # (also marks `dut` used)
    with pytest.raises(ValueError, match=r"lacks the simulated device's ports \['busy'\]"):
        build_device_executable(verilog, "no_busy")
    with pytest.raises(ValueError, match="no module named 'other'"):
        build_device_executable(verilog, "other")
    with pytest.raises(ValueError, match="must not define the harness's module"):
        build_device_executable(to_verilog(CountingEcho(), "moeforge_device_top"),
                                "moeforge_device_top")


def test_round_trip_in_pieces(echo_exe):
    data = os.urandom(100_000)
    with SimDeviceProcess.from_executable(echo_exe, stats=True) as dev:
        assert dev.alive() and dev.port > 0
        with dev.connect() as sock:
            sock.sendall(data[:1])
            assert recv_exactly(sock, 1) == expected(data[:1])
            sock.sendall(data[1:10])
            sock.sendall(data[10:300])
            assert recv_exactly(sock, 299) == expected(data[1:300], 1)
            sock.sendall(data[300:])            # 99.7 kB: several socket reads and writes
            assert recv_exactly(sock, len(data) - 300) == expected(data[300:], 300)
        assert dev.wait(10) == 0                 # --once: exits when the connection closes
        stats = dev.stats()
    assert stats["connections"] == 1
    # 6 cycles a byte, plus a linger after each piece and the polls' latency: the design was
    # clocked only while busy
    assert 6 * len(data) <= stats["cycles"] < 6 * len(data) + 3 * 3000 + 10 * 1024
    assert stats["cycles_per_s"] > 100_000


def test_half_close_still_answers(echo_exe):
    data = os.urandom(5000)
    with SimDeviceProcess.from_executable(echo_exe) as dev, dev.connect() as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)            # no more requests, answers still wanted
        got = bytearray()
        while chunk := sock.recv(65536):
            got += chunk
        assert bytes(got) == expected(data)
        assert dev.wait(10) == 0


def test_idle_device_is_not_clocked(echo_exe):
    with SimDeviceProcess.from_executable(echo_exe, stats=True) as dev:
        with dev.connect() as sock:
            sock.sendall(b"\x01")
            assert recv_exactly(sock, 1) == b"\x01"
            time.sleep(0.5)                      # the server sleeps in poll() meanwhile
        dev.wait(10)
        stats = dev.stats()
    assert stats["cycles"] < 3000 + 6 + 2 * 1024, stats


def test_second_connection_keeps_state(echo_exe):
    with SimDeviceProcess.from_executable(echo_exe, once=False) as dev:
        with dev.connect() as sock:
            sock.sendall(b"\x00" * 10)
            assert recv_exactly(sock, 10) == bytes(range(10))
        assert dev.alive()
        with dev.connect() as sock:              # the device was not reset: it counts on
            sock.sendall(b"\x00" * 3)
            assert recv_exactly(sock, 3) == bytes([10, 11, 12])
        # a client that leaves without reading its answers does not stop the server
        with dev.connect() as sock:
            sock.sendall(b"\x00" * 50_000)
        with dev.connect() as sock:
            sock.sendall(b"\x07")
            assert len(recv_exactly(sock, 1)) == 1
        assert dev.alive()


def test_close_is_prompt_and_idempotent(echo_exe):
    dev = SimDeviceProcess.from_executable(echo_exe, once=False)
    sock = dev.connect()
    sock.sendall(b"\x00" * 20_000)              # busy while it is stopped
    t0 = time.monotonic()
    dev.close()
    assert time.monotonic() - t0 < 2.0
    assert not dev.alive() and dev.returncode == 0       # SIGTERM handled: a clean exit
    assert "stopped by signal 15" in dev.describe_exit()
    dev.close()
    with dev:
        pass
    sock.close()
    assert gone(dev.pid)
    with pytest.raises(SimDeviceError, match="not running"):
        dev.connect()


def test_killed_child_is_reported(echo_exe):
    with SimDeviceProcess.from_executable(echo_exe) as dev:
        os.kill(dev.pid, signal.SIGKILL)
        dev.wait(5)
        assert not dev.alive()
        message = dev.describe_exit()
        assert "SIGKILL" in message, message


def test_child_dying_before_listening_is_reported(echo_exe):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SimDeviceError, match=rf"(?s)did not start: exited with code 1 .*"
                                                 rf"cannot listen on 127\.0\.0\.1:{port}"):
            SimDeviceProcess.from_executable(echo_exe, port=port)
    with pytest.raises(SimDeviceError, match="cannot resolve host"):
        SimDeviceProcess.from_executable(echo_exe, host="no-such-host.invalid")
    with pytest.raises(ValueError, match="port must be"):
        SimDeviceProcess.from_executable(echo_exe, port=70000)


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_does_not_outlive_its_parent(echo_exe, where):
    """SIGKILL of the parent stops the device, whichever thread started it; started from a
    worker thread, the device lives on after that thread ends."""
    parent_code = textwrap.dedent("""
        import sys, threading, time
        from moeforge.sim.sim_device import SimDeviceProcess
        box = []
        start = lambda: box.append(SimDeviceProcess.from_executable(sys.argv[1], once=False))
        if sys.argv[2] == "main thread":
            start()
        else:
            worker = threading.Thread(target=start)
            worker.start()
            worker.join()
        print(box[0].pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code, str(echo_exe), where],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.5)
        assert not gone(child), "the device died before its parent"
        parent.kill()                            # no chance to clean up
        parent.wait(5)
        deadline = time.monotonic() + 5
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(child)
    finally:
        parent.kill()
        parent.stdout.close()


def test_device_started_in_a_thread_is_used_after_the_thread_ends(echo_exe):
    box = []
    worker = threading.Thread(
        target=lambda: box.append(SimDeviceProcess.from_executable(echo_exe, once=False)))
    worker.start()
    worker.join()
    with box[0] as dev:
        time.sleep(0.5)
        assert dev.alive(), dev.describe_exit()
        with dev.connect() as sock:
            sock.sendall(b"\x00" * 5)
            assert recv_exactly(sock, 5) == bytes(range(5))
        assert dev.alive()


def test_open_device_in_a_worker_thread_is_used_from_the_main_thread():
    """The Python API: a device opened (and loaded) in a thread that then ends still runs."""
    import torch

    from moeforge.config import AccelConfig
    from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
    from moeforge.host_runtime import open_device

    cfg = AccelConfig.from_toml(ROOT / "configs" / "tiny.toml")
    q = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=0), cfg,
                                  calib=make_hf_input(cfg, 256, seed=1))
    box, errors = [], []

    def open_and_load():
        try:
            dev = open_device("sim", cfg)
            box.append(dev)
            dev.load(q)
        except BaseException as exc:    # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=open_and_load)
    worker.start()
    worker.join()
    assert box and not errors, errors
    with box[0] as dev:
        time.sleep(0.5)
        x = q.quantize_input(make_hf_input(cfg, 9, seed=3))
        assert torch.equal(dev.run(x), q.forward_int(x))


def test_second_client_is_told_at_once_that_the_device_is_busy(echo_exe):
    with SimDeviceProcess.from_executable(echo_exe, once=False, stats=True) as dev:
        with dev.connect() as first:            # connected, and says nothing
            time.sleep(0.2)
            t0 = time.monotonic()
            with dev.connect(timeout=5) as second:
                second.sendall(b"\x00" * 3)     # e.g. a HELLO frame: not executed
                got = bytearray()
                while chunk := second.recv(4096):
                    got += chunk
            assert time.monotonic() - t0 < 3
            assert bytes(got) == BUSY_LINE
            first.sendall(b"\x00" * 4)          # the first client is served as before
            assert recv_exactly(first, 4) == bytes(range(4))
        with dev.connect() as third:            # the first has left: the next is served
            third.sendall(b"\x00")
            assert recv_exactly(third, 1) == b"\x04"
        assert dev.alive()
        dev.close()
        assert dev.stats()["turned_away"] == 1


def test_second_open_device_fails_at_once(echo_exe):
    """The host of a second client gets, in seconds, the device's own reason, not 'not answering
    HELLO' after its whole retry budget."""
    from moeforge.host_runtime import DeviceBusy, open_device

    with SimDeviceProcess.from_executable(echo_exe, once=False) as dev, dev.connect():
        t0 = time.monotonic()
        with pytest.raises(DeviceBusy, match="device busy: another client is connected"):
            open_device(f"socket://127.0.0.1:{dev.port}")
        assert time.monotonic() - t0 < 10


def test_idle_client_is_dropped_after_the_idle_timeout(echo_exe):
    with SimDeviceProcess.from_executable(echo_exe, once=False, idle_timeout=1.0) as dev:
        with dev.connect() as busy:             # keeps talking: not dropped
            for i in range(4):
                busy.sendall(b"\x00")
                assert recv_exactly(busy, 1) == bytes([i])
                time.sleep(0.4)
        with dev.connect(timeout=10) as idle:
            t0 = time.monotonic()
            assert idle.recv(1) == b""          # dropped: EOF
            assert 0.9 < time.monotonic() - t0 < 5
        with dev.connect() as sock:              # the next client is served
            sock.sendall(b"\x00")
            assert recv_exactly(sock, 1) == b"\x04"
        # the server's stderr is read by a thread: on a loaded machine its line comes later
        deadline = time.monotonic() + 10
        while ("dropped a client idle for 1 s" not in "\n".join(dev.stderr_tail())
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert "dropped a client idle for 1 s" in "\n".join(dev.stderr_tail())
    with pytest.raises(ValueError, match="idle_timeout"):
        SimDeviceProcess.from_executable(echo_exe, idle_timeout=-1)


def test_serve_sim_warns_when_reachable_from_the_network(echo_exe, monkeypatch, capsys):
    """A non-loopback address gets a warning before anything listens (192.0.2.1 is a
    documentation address this machine does not have: nothing is bound)."""
    from moeforge.config import AccelConfig
    from moeforge.sim import sim_device

    assert sim_device.is_loopback("127.0.0.1") and sim_device.is_loopback("localhost")
    assert not sim_device.is_loopback("0.0.0.0") and not sim_device.is_loopback("::")
    monkeypatch.setattr(sim_device, "build_sim_device", lambda cfg, **params: echo_exe)
    cfg = AccelConfig.from_toml(ROOT / "configs" / "tiny.toml")
    with pytest.raises(SimDeviceError, match="cannot listen on 192.0.2.1"):
        sim_device.serve_sim(cfg, host="192.0.2.1", port=0)
    err = capsys.readouterr().err
    assert "warning: the simulated device listens on 192.0.2.1" in err
    assert "no authentication" in err


def test_device_build_says_what_it_does_only_when_it_compiles(echo_exe, tmp_path, monkeypatch,
                                                              capsys):
    """The first build prints a line when it starts and one when it is done, on stderr
    (captured here, so not a terminal); a cached build prints nothing."""
    from moeforge.config import AccelConfig
    from moeforge.sim import sim_device

    verilog = to_verilog(CountingEcho(delay=4), "counting_echo")
    monkeypatch.setenv("MOEFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(sim_device, "soc_verilog", lambda cfg, **params: (verilog, "counting_echo"))
    cfg = AccelConfig.from_toml(ROOT / "configs" / "tiny.toml")
    exe = sim_device.build_sim_device(cfg)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0] == ("building the simulated device for config tiny (first time: a few "
                        "minutes) ...")
    assert re.fullmatch(r"\.\.\. built in \d+ s", lines[1]), lines[1]
    assert sim_device.build_sim_device(cfg) == exe
    assert capsys.readouterr() == ("", "")


def test_simulated_soc_is_the_soc_on_the_memory_model():
    """The device served is `MoESoC` with `BackingMemory` on its memory port: it has exactly
    the harness's ports, which the SoC alone (whose memory port a board connects) does not."""
    from amaranth.hdl import Fragment

    from moeforge.config import AccelConfig
    from moeforge.rtl.top.soc import MoESoC
    from moeforge.sim.backing_memory import BackingMemory
    from moeforge.sim.tops import SimulatedSoC
    cfg = AccelConfig.from_toml(ROOT / "configs" / "tiny.toml")
    device = SimulatedSoC(cfg, phy="stream", latency=5, bytes_per_cycle=2)
    check_device_ports(device)
    assert isinstance(device.soc, MoESoC) and isinstance(device.memory, BackingMemory)
    assert (device.memory.latency, device.memory.bytes_per_cycle) == (5, 2)
    assert device.memory.depth == device.soc.accel.mem_words
    with pytest.raises(ValueError, match=r"extra \['mem_req__payload'"):
        check_device_ports(device.soc)
    Fragment.get(device, None)                  # elaborates, and marks every part used


def test_build_failure_raises_with_log(tmp_path):
    bad = to_verilog(CountingEcho(), "counting_echo").replace("endmodule", "endmodule oops", 1)
    with pytest.raises(SimBuildError, match="failed"):
        build_device_executable(bad, "counting_echo", cache_dir=tmp_path)
    assert list((tmp_path / "device").glob("*.failed"))


def test_moe_soc_hello():
    """The real device for configs/tiny.toml answers HELLO with its config hash (rtl/top/soc.py
    is part of the project: if it cannot be imported, this fails rather than skips)."""
    from moeforge.config import AccelConfig
    from moeforge.host_runtime.framing import (FrameDecoder, FrameType, HelloReport,
                                               encode_frame)
    cfg = AccelConfig.from_toml(ROOT / "configs" / "tiny.toml")
    with SimDeviceProcess.start(cfg, stats=True) as dev:
        with dev.connect(timeout=60) as sock:
            sock.sendall(encode_frame(FrameType.HELLO, 0))
            decoder = FrameDecoder()
            frames = []
            while not frames:
                chunk = sock.recv(4096)
                assert chunk, f"connection closed; {dev.describe_exit()}"
                frames = decoder.feed(chunk)
        assert dev.wait(30) == 0
    (frame,) = frames
    assert (frame.type, frame.seq) == (FrameType.RSP, 0)
    report = HelloReport.parse(frame.payload)
    assert report.config_hash == bytes.fromhex(cfg.content_hash()[:16])
    assert report.link_version == 1


def test_serve_sim_until_ctrl_c(echo_exe):
    """`serve_sim` (``moeforge serve-sim``) in a child Python, its build replaced by the
    stand-in: serves connection after connection, Ctrl-C stops it and its device."""
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from moeforge.config import AccelConfig
        from moeforge.sim import sim_device
        sim_device.build_sim_device = lambda cfg, **params: Path(sys.argv[1])
        sys.exit(sim_device.serve_sim(AccelConfig.from_toml(sys.argv[2]), port=0))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(echo_exe),
                             str(ROOT / "configs" / "tiny.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.split("127.0.0.1:")[1].split(";")[0])
        for first in (0, 4):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"\x00" * 4)
                assert recv_exactly(sock, 4) == bytes(range(first, first + 4))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "stopped after" in err
        assert "warning" not in err             # loopback: reachable from this machine only
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        proc.kill()
        proc.communicate()
