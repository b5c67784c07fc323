"""`Device`: one accelerator behind the link — load a layer, run tokens, read statistics.

``open_device("sim", cfg)`` starts the simulated device (the Verilated `MoESoC` in a child
process, reached over a local socket); ``open_device("serial:///dev/ttyUSB1?baud=3000000")``
opens a board's UART; ``open_device("socket://host:port")`` reaches a simulated device that
``moeforge serve-sim`` serves elsewhere. The same command packets travel in the same frames on
all three.
"""

from __future__ import annotations

import struct
import sys
import time
from collections import deque
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch

from moeforge.config import AccelConfig
from moeforge.errors import ShapeError
from moeforge.spec.arith import X_WIDE_BITS
from moeforge.spec.protocol import (COUNTERS, HEADER_BYTES, IMAGE_CRC_FORMAT, LINK_VERSION,
                                    OPCODE_BYTES, PROTOCOL_VERSION, RESPONSE_BYTES, STATUS_BYTES,
                                    WRITE_HEADER_BYTES, CommandError, CommandLayout, Op,
                                    check_response, config_hash, encode, image_crc, layer_scale,
                                    layer_writes, parse_counters)

from .errors import ConfigMismatch, DeviceCommandError, DeviceCrashed, DeviceError, NoSuchDevice
from .link import Link
from .transports import FaultyTransport, SerialTransport, SocketTransport, Transport, socket_address

__all__ = ["Device", "open_device", "estimate_cycles"]

SIM_CYCLES_PER_SECOND = 100_000     # a floor for the simulated device's speed: run timeouts
MIN_FRAME = 64                      # the smallest frame budget the host shrinks to under faults
TOKENS_HEADER = OPCODE_BYTES + HEADER_BYTES[Op.WRITE_TOKENS]   # a WRITE_TOKENS packet's tokens after


def estimate_cycles(cfg: AccelConfig, n_tokens: int, lay: CommandLayout | None = None) -> int:
    """A generous estimate of one batch's cycles (compute + fetch of every expert + routing):
    it only sets how long the host waits for RUN's answer before asking again."""
    per_expert = (3 if cfg.activation == "swiglu" else 2) * cfg.d_model
    macs = n_tokens * (cfg.top_k * cfg.d_ff + cfg.shared_d_ff) * per_expert
    lay = lay or CommandLayout.from_config(cfg)
    fetch = min(cfg.n_experts, n_tokens * cfg.top_k) * lay.image_words + lay.shared_image_words
    route = n_tokens * (cfg.n_experts + 1) * (cfg.d_model // cfg.mac_cols + 8)
    return macs // (cfg.mac_rows * cfg.mac_cols) + fetch + route + 4000


class Device:
    """One accelerator. Use `open_device`; close it (or use ``with``) to free the link and,
    for the simulated device, its process."""

    def __init__(self, transport: Transport, cfg: AccelConfig | None = None, *,
                 timeout: float = 0.5, attempts: int = 20, on_close=None):
        self.transport = transport
        self.cfg = cfg
        self._on_close = on_close
        self._closed = False
        self.link = Link(transport, timeout=timeout, attempts=attempts)
        self.hello = self.link.hello()
        if self.hello.link_version != LINK_VERSION:
            raise DeviceCommandError(f"{transport.name}: link protocol version "
                                     f"{self.hello.link_version}, this host speaks {LINK_VERSION}")
        if self.hello.accel_version != PROTOCOL_VERSION:
            raise DeviceCommandError(f"{transport.name}: the device's command set is version "
                                     f"{self.hello.accel_version}, this host speaks "
                                     f"{PROTOCOL_VERSION}: rebuild the device from this moeforge")
        if cfg is not None and self.hello.config_hash != config_hash(cfg):
            raise ConfigMismatch(f"{transport.name}: device built for config with hash "
                                 f"{self.hello.config_hash.hex()}, not {cfg.name} "
                                 f"(hash {config_hash(cfg).hex()})")
        self._budget = self.hello.max_payload
        self._clean = 0
        self._q = None
        self._masked = False
        self._layout_of = None              # (cfg, its CommandLayout), made once
        self._totals = dict.fromkeys(COUNTERS, 0)
        self._last = dict(self.hello.counters)
        self._batches = self._tokens = 0
        self._busy_seconds = 0.0

    # --- commands ------------------------------------------------------
    def _command(self, packet: bytes, *, extra_timeout: float = 0.0) -> bytes:
        retries = self.link.stats.retries
        rsp = self.link.command(packet, extra_timeout=extra_timeout)
        if self.link.stats.retries > retries:      # a noisy link: smaller frames fail less
            self._budget = max(MIN_FRAME, self._budget // 2)
            self._clean = 0
        else:
            self._clean += 1
            if self._clean >= 32 and self._budget < self.hello.max_payload:
                self._budget = min(self.hello.max_payload, self._budget * 2)
                self._clean = 0
        try:
            return check_response(packet[0], rsp)
        except CommandError as e:
            raise DeviceCommandError(f"{self.transport.name}: {e}") from None

    def _need_cfg(self) -> AccelConfig:
        if self.cfg is None:
            raise ValueError("the device's config is unknown: pass it to open_device or load a layer")
        return self.cfg

    @property
    def _layout(self) -> CommandLayout:
        cfg = self._need_cfg()
        if self._layout_of is None or self._layout_of[0] is not cfg:
            self._layout_of = (cfg, CommandLayout.from_config(cfg))
        return self._layout_of[1]

    # --- loading -------------------------------------------------------
    def load(self, q, *, progress: bool | None = None, experts=None, shared: bool = True) -> None:
        """Write `q` (a `QuantizedMoELayer`): router, expert images, shared expert, output scale.
        ``experts``/``shared`` restrict the images written (expert parallelism, see
        `open_device_group`); the rest of the device is masked off.

        The device's image CRC is read before and after: it must have advanced by exactly the
        CRC of the layer's words (``protocol.image_crc``, computed from the layer, not from the
        packets sent), so a load corrupted anywhere between the layer and the device's
        memories is an error, not a device that runs with wrong weights.

        Raises
        ------
        ConfigMismatch
            For a layer of another config than the device's.
        DeviceError
            If the device's image CRC after the load is not the one of the layer sent.
        """
        if config_hash(q.cfg) != self.hello.config_hash:
            built = (f"config {self.cfg.name}" if self.cfg is not None
                     else f"a config with hash {self.hello.config_hash.hex()}")
            raise ConfigMismatch(f"device built for {built}, layer quantised for config "
                                 f"{q.cfg.name} (hash {config_hash(q.cfg).hex()})")
        self.cfg = self.cfg or q.cfg
        runs = layer_writes(q, self.cfg, experts=experts, shared=shared)
        total = sum(r.size for r in runs)
        if progress is None:
            progress = total >= 1 << 20 and sys.stderr.isatty()
        bar = _progress(total, f"load {self.cfg.name}", progress)
        try:
            before = self.read_image_crc()
            for run in runs:
                sent = 0
                while sent < len(run.words):    # cut one packet at a time: the budget may change
                    packet = run.packet(sent, self._budget)
                    self._command(packet)
                    n = (len(packet) - WRITE_HEADER_BYTES) // run.nbytes
                    sent += n
                    bar.update(n * run.nbytes)
            scale = layer_scale(q)
            self._command(encode(Op.SET_SCALE, *scale))
            want, got = image_crc(runs, scale, before), self.read_image_crc()
            if got != want:
                raise DeviceError(f"{self.transport.name}: the device's image CRC 0x{got:08x} is "
                                  f"not the CRC 0x{want:08x} of the layer sent: the load was "
                                  f"corrupted")
            if experts is not None or not shared or self._masked:
                self.set_mask(experts, shared)
        finally:
            bar.close()
        self._q = q

    def read_image_crc(self) -> int:
        """The device's image CRC (``READ_IMAGE_CRC``): the CRC-32 of every weight byte it has
        taken since reset."""
        data = self._command(encode(Op.READ_IMAGE_CRC))
        want = RESPONSE_BYTES[Op.READ_IMAGE_CRC]
        if len(data) != want:
            raise DeviceCommandError(f"{self.transport.name}: image CRC answered with "
                                     f"{len(data)} bytes, expected {want}")
        return struct.unpack(IMAGE_CRC_FORMAT, data)[0]

    def set_mask(self, experts=None, shared: bool = True) -> None:
        """Enable only ``experts`` (None: all) and the shared expert if ``shared``."""
        lay = self._layout
        self._command(encode(Op.SET_EXPERT_MASK, lay.expert_mask(experts, shared), lay.mask_bytes))
        self._masked = experts is not None or not shared

    # --- running -------------------------------------------------------
    def tokens_in(self, x) -> tuple[torch.Tensor, bool, tuple]:
        """(integer rows, input was float, leading shape) of `run`'s input; `DeviceGroup` reads
        its tokens through it too."""
        cfg = self._need_cfg()
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"input must be a tensor or numpy array, not {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != cfg.d_model:
            raise ShapeError(f"input shape {list(x.shape)} does not end in d_model={cfg.d_model}")
        lead = tuple(x.shape[:-1])
        if torch.is_floating_point(x):
            if self._q is None:
                raise ValueError(f"float input needs the layer's scales: load(q) first, or pass "
                                 f"int{cfg.input_bits} tokens")
            # quantised before flattening: a NaN or Inf is named by the caller's own index
            return self._q.quantize_input(x.float()).reshape(-1, cfg.d_model), True, lead
        if x.dtype != self.input_dtype:
            raise ShapeError(f"input dtype {x.dtype}: the device takes float or "
                             f"int{cfg.input_bits} tokens (input_bits={cfg.input_bits})")
        return x.reshape(-1, cfg.d_model), False, lead

    def run(self, x):
        """Tokens ``[..., d_model]`` (float: quantised with the layer's input scales; the device's
        integer tokens — int16 with ``input_bits = 16``, else int8 — as they are) → outputs of
        the same shape (float dequantised, or int8)."""
        rows, is_float, lead = self.tokens_in(x)
        y = self.run_int(rows)
        if is_float:
            y = self._q.dequantize_output(y)
        return y.reshape(*lead, self.cfg.d_model)

    @property
    def input_dtype(self) -> torch.dtype:
        """The device's integer tokens: int16 with ``input_bits = 16``, else int8."""
        return torch.int16 if self._need_cfg().input_bits == X_WIDE_BITS else torch.int8

    def run_int(self, rows: torch.Tensor, *, partial: bool = False) -> torch.Tensor:
        """Integer token rows ``[n, d_model]`` (`input_dtype`) through the device, in batches of the token buffer's depth:
        int8 outputs, or with `partial` the sums before the output requantisation (what
        `DeviceGroup` adds up across devices)."""
        t_max = self.cfg.token_buffer_depth
        outs = [self._batch(rows[i:i + t_max], partial) for i in range(0, rows.shape[0], t_max)]
        if not outs:
            return torch.empty(0, self.cfg.d_model, dtype=torch.int64 if partial else torch.int8)
        return torch.cat(outs)

    def _batch(self, rows: torch.Tensor, partial: bool) -> torch.Tensor:
        cfg, d, lay = self.cfg, self.cfg.d_model, self._layout
        n = rows.shape[0]
        start = time.perf_counter()
        t = 0
        while t < n:
            k = min(n - t, max(1, (self._budget - TOKENS_HEADER) // (d * lay.value_bytes)))
            self._command(encode(Op.WRITE_TOKENS, t, rows[t:t + k].tolist(), lay.value_bytes))
            t += k
        cps = self.transport.cycles_per_second or SIM_CYCLES_PER_SECOND
        self._command(encode(Op.RUN, n), extra_timeout=4 * estimate_cycles(cfg, n, lay) / cps)
        width = lay.partial_bytes if partial else 1
        op = Op.READ_PARTIAL if partial else Op.READ_OUTPUT
        got, t = [], 0
        while t < n:
            k = min(n - t, max(1, (self._budget - STATUS_BYTES) // (d * width)))
            rsp = self._command(encode(op, t, k))
            if len(rsp) != k * d * width:
                raise DeviceCommandError(f"{self.transport.name}: {k} tokens answered with "
                                         f"{len(rsp)} bytes, expected {k * d * width}")
            got.append(rsp)
            t += k
        raw = b"".join(got)
        if partial:
            y = torch.tensor(lay.partials(raw), dtype=torch.int64)
        else:
            y = torch.frombuffer(bytearray(raw), dtype=torch.int8).reshape(n, d).clone()
        counters = self._command(encode(Op.READ_COUNTERS))
        try:
            self._last = parse_counters(counters)
        except ValueError as e:
            raise DeviceCommandError(f"{self.transport.name}: {e}") from None
        for key, v in self._last.items():
            self._totals[key] += v
        self._batches += 1
        self._tokens += n
        self._busy_seconds += time.perf_counter() - start
        return y

    def stream(self, items):
        """Run an iterable of token tensors (each ``[n, d_model]`` or ``[d_model]``), pooling
        their tokens into full device batches; yields each item's output in order."""
        cfg = self._need_cfg()
        pending: deque = deque()          # (n tokens, float?, leading shape)
        rows: list[torch.Tensor] = []
        done: list[torch.Tensor] = []
        queued = ready = 0

        def flush(all_of_it: bool):
            nonlocal queued, ready
            pool = torch.cat(rows) if rows else torch.empty(0, cfg.d_model, dtype=torch.int8)
            take = pool.shape[0] if all_of_it else pool.shape[0] // cfg.token_buffer_depth * cfg.token_buffer_depth
            if take:
                done.append(self.run_int(pool[:take]))
                ready += take
            rows[:] = [pool[take:]] if take < pool.shape[0] else []
            queued -= take

        def pop_ready():
            nonlocal ready
            out = torch.cat(done) if done else torch.empty(0, cfg.d_model, dtype=torch.int8)
            while pending and pending[0][0] <= ready:
                n, is_float, lead = pending.popleft()
                y, out = out[:n], out[n:]
                ready -= n
                yield (self._q.dequantize_output(y) if is_float else y).reshape(*lead, cfg.d_model)
            done[:] = [out]

        for x in items:
            r, is_float, lead = self.tokens_in(x)
            pending.append((r.shape[0], is_float, lead))
            rows.append(r)
            queued += r.shape[0]
            if queued >= cfg.token_buffer_depth:
                flush(False)
                yield from pop_ready()
        flush(True)
        yield from pop_ready()

    # --- statistics ----------------------------------------------------
    def stats(self) -> dict:
        """Cycles, cache counters and link figures: of the last batch and summed over all."""
        cols = self.cfg.mac_cols if self.cfg else 1
        t = self._totals
        out = {
            "device": self.transport.name,
            "config": self.cfg.name if self.cfg else None,
            "batches": self._batches, "tokens": self._tokens,
            "cycles": t["cycles"], "hits": t["hits"], "misses": t["misses"],
            "bytes_fetched": t["words_fetched"] * cols, "prefetch_hits": t["prefetch_hits"],
            "stall_cycles": t["stall_cycles"],
            "mac_util": t["mac_busy"] / t["mac_total"] if t["mac_total"] else 0.0,
            "totals": dict(t), "last_batch": dict(self._last),
            "retries": self.link.stats.retries, "link": self.link.stats.as_dict(),
            "frame_budget": self._budget,
            "tokens_per_second": self._tokens / self._busy_seconds if self._busy_seconds else 0.0,
        }
        if isinstance(self.transport, FaultyTransport):
            out["faults_injected"] = dict(self.transport.injected)
        return out

    # --- lifetime ------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.transport.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


class SimTransport(SocketTransport):
    """The socket to a simulated-device child process: a dead child is reported as such."""

    cycles_per_second = SIM_CYCLES_PER_SECOND

    def __init__(self, proc):
        self.proc = proc
        super().__init__(proc.host, proc.port, name="sim")

    def _crashed(self):
        return DeviceCrashed(f"the simulated device crashed: {self.proc.describe_exit()}")

    def write(self, data: bytes) -> None:
        try:
            super().write(data)
        except DeviceCrashed:
            if not self.proc.alive():
                raise self._crashed() from None
            raise

    def read(self, timeout: float) -> bytes:
        try:
            data = super().read(timeout)
        except DeviceCrashed:
            time.sleep(0.05)
            if not self.proc.alive():
                raise self._crashed() from None
            raise
        if not data and not self.proc.alive():
            raise self._crashed()
        return data


def open_device(spec: str, cfg: AccelConfig | None = None, *, faults: dict | None = None,
                timeout: float | None = None, attempts: int = 20, **sim_params) -> Device:
    """Open a device: ``"sim"`` (needs `cfg`), ``"serial:///dev/ttyUSB1?baud=3000000"`` or
    ``"socket://host:port"``. ``faults=dict(flip=, drop=, dup=, seed=)`` puts a fault injector
    on the link. ``sim_params`` go to the simulated `MoESoC` (e.g. ``latency``)."""
    if sim_params and spec != "sim":
        raise TypeError(f"unexpected arguments for {spec}: {', '.join(sim_params)}")
    on_close = None
    if spec == "sim":
        if cfg is None:
            raise NoSuchDevice("open_device('sim') needs the AccelConfig to simulate")
        from moeforge.sim.sim_device import SimDeviceProcess
        proc = SimDeviceProcess.start(cfg, **sim_params)
        try:
            transport: Transport = SimTransport(proc)
        except BaseException:
            proc.close()
            raise
        on_close = proc.close
        timeout = 0.05 if timeout is None else timeout
    elif spec.startswith("serial://"):
        url = urlparse(spec)
        path = url.path or url.netloc
        if not path:
            raise NoSuchDevice(f"{spec}: no serial port in the URL (serial:///dev/ttyUSB1?baud=3000000)")
        try:
            baud = int(parse_qs(url.query).get("baud", ["3000000"])[0])
        except ValueError:
            raise NoSuchDevice(f"{spec}: baud must be an integer") from None
        transport = SerialTransport(path, baud=baud, name=spec)
        transport.cycles_per_second = (cfg.clock_mhz * 1e6) if cfg else 25e6
    elif spec.startswith("socket://"):
        # our own socket, not pyserial's socket://: its open() discards what the device has
        # already said (a served device's busy notice arrives at once)
        transport = SocketTransport(*socket_address(spec), name=spec)
        transport.cycles_per_second = SIM_CYCLES_PER_SECOND
    else:
        raise NoSuchDevice(f"no such device {spec!r}: use 'sim', 'serial:///dev/ttyUSB1?baud=3000000' "
                           f"or 'socket://host:port'")
    try:
        if faults:
            try:
                transport = FaultyTransport(transport, **faults)
            except TypeError as e:          # an unknown fault name
                raise ValueError(f"faults: {e}") from None
        return Device(transport, cfg, timeout=1.0 if timeout is None else timeout,
                      attempts=attempts, on_close=on_close)
    except BaseException:
        transport.close()
        if on_close:
            on_close()
        raise
