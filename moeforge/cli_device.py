"""``moeforge run`` and ``moeforge serve-sim``: the host runtime from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import float_in, int_in
from .config import AccelConfig
from .errors import MoeforgeError, ShapeError
from .outputs import atomic_write, check_output

__all__ = ["add_device_commands"]

_RATE = float_in(0, 1, hi_open=True)
_FAULT_SEED = int_in(0, 2**32 - 1)


def _faults(text: str) -> dict | None:
    """argparse type of ``--faults``: ``flip=1e-3,drop=1e-3,dup=1e-3,seed=1`` → dict, each rate
    a number in [0, 1) and the seed an integer ≥ 0, checked while parsing (a usage error)."""
    out = {}
    for part in text.split(",") if text.strip() else ():
        key, _, value = (t.strip() for t in part.partition("="))
        if key not in ("flip", "drop", "dup", "seed") or not value:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not one of flip=RATE, drop=RATE, dup=RATE, seed=N")
        if key in out:
            raise argparse.ArgumentTypeError(f"{key} is given twice")
        try:
            out[key] = (_FAULT_SEED if key == "seed" else _RATE)(value)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{key} {e}") from None
    return out or None


def _input(path: str, cfg: AccelConfig):
    import numpy as np
    p = Path(path)
    if not p.is_file():
        raise MoeforgeError(f"--input {path}: no such file")
    try:
        x = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MoeforgeError(f"--input {path}: not a .npy array ({e})") from None
    tokens = np.dtype(f"int{cfg.input_bits}")        # the device's own tokens (input_bits)
    if x.dtype not in (np.float32, np.float64, np.float16, tokens):
        raise ShapeError(f"--input {path}: dtype {x.dtype}; the device takes float or {tokens} "
                         f"tokens (input_bits={cfg.input_bits} in config {cfg.name})")
    if x.ndim < 1 or x.shape[-1] != cfg.d_model:
        raise ShapeError(f"--input {path}: shape {list(x.shape)} does not end in d_model={cfg.d_model} "
                         f"of config {cfg.name}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        *lead, element = (int(i) for i in bad)
        token = "" if not lead else f"token {lead[0]}, " if len(lead) == 1 else f"token {lead}, "
        raise ShapeError(f"--input {path}: {token}element {element} is {x[tuple(bad)]}: "
                         f"the device takes finite numbers")
    return x


def cmd_run(args) -> int:
    """Stream a .npy of tokens through a device and write the outputs."""
    cfg = AccelConfig.from_toml(args.config)
    out = check_output(args.output, "-o")         # before minutes of device build and streaming
    if out.resolve() == Path(args.input).resolve():
        raise MoeforgeError("-o must not overwrite the input file")
    import numpy as np
    import torch

    from moeforge.hls_models import QuantizedMoELayer
    from moeforge.host_runtime import open_device
    if not Path(args.model).is_file():
        raise MoeforgeError(f"--model {args.model}: no such file")
    q = QuantizedMoELayer.load(args.model, cfg)
    x = _input(args.input, cfg)
    faults = args.faults
    rows = torch.from_numpy(np.ascontiguousarray(x.reshape(-1, cfg.d_model)))
    if rows.is_floating_point():
        rows = rows.float()
    chunk = cfg.token_buffer_depth
    show = not args.no_progress and sys.stderr.isatty()
    with open_device(args.device, cfg, faults=faults) as dev:
        dev.load(q, progress=show or None)
        from tqdm import tqdm
        bar = tqdm(total=rows.shape[0], unit="tok", desc=f"run {cfg.name}", disable=not show)
        ys = []
        for y in dev.stream(rows[i:i + chunk] for i in range(0, rows.shape[0], chunk)):
            ys.append(y)
            bar.update(y.shape[0])
        bar.close()
        stats = dev.stats()
    y = torch.cat(ys).reshape(x.shape) if ys else torch.empty(x.shape, dtype=torch.int8)
    y = y.numpy().astype(np.int8 if x.dtype.kind == "i" else np.float32)
    atomic_write(out, lambda tmp: np.save(tmp, y), suffix=".npy")   # np.save keeps a .npy name as it is
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(f"wrote {out}: {rows.shape[0]} tokens through {stats['device']} ({cfg.name}) — "
              f"{stats['cycles']} cycles, cache {stats['hits']} hits / {stats['misses']} misses, "
              f"{stats['retries']} link retries, {stats['tokens_per_second']:.0f} tokens/s")
    return 0


def cmd_serve_sim(args) -> int:
    """Serve the simulated device on a TCP port (reach it with socket://host:port)."""
    from moeforge.sim.sim_device import serve_sim
    cfg = AccelConfig.from_toml(args.config)
    return serve_sim(cfg, host=args.host, port=args.port, idle_timeout=args.idle_timeout)


def add_device_commands(sub) -> None:
    r = sub.add_parser("run", help="stream tokens (.npy) through a device and write its outputs (.npy)")
    r.add_argument("--device", default="sim", help="sim, serial:///dev/ttyUSB1?baud=3000000 or socket://host:port")
    r.add_argument("--config", required=True)
    r.add_argument("--model", required=True, help="the quantised layer (.safetensors, from `moeforge quantize`)")
    r.add_argument("--input", required=True, help=".npy of tokens [..., d_model], float or the device's "
                   "integer tokens (int16, or int8 with input_bits = 8)")
    r.add_argument("-o", "--output", required=True, help=".npy to write (float32, or int8 for integer input)")
    r.add_argument("--faults", type=_faults, help="inject link faults: flip=1e-3,drop=1e-3,dup=1e-3,seed=1 "
                   "(rates per byte in [0, 1), seed an integer >= 0)")
    r.add_argument("--json", action="store_true", help="print the device statistics as JSON")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "serve-sim", help="serve the simulated device on a TCP port (socket://host:port)",
        description="Serve the simulated device of a config on a TCP port, one client at a time: a "
                    "client that connects while another is served is told at once that the device is "
                    "busy (one line, then the connection closes). --idle-timeout drops a served client "
                    "that stays idle that long (default: never). A --host that is not a loopback "
                    "address makes the device reachable from the network with no authentication "
                    "(a warning says so).")
    s.add_argument("--config", required=True)
    s.add_argument("--port", type=int_in(0, 65535), default=5555, help="TCP port (0: any free port)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--idle-timeout", type=float_in(0.001, 1e6), default=None, metavar="S",
                   help="drop a client idle for S seconds (default: never)")
    s.set_defaults(func=cmd_serve_sim)


def demo_stream(cfg: AccelConfig, *, seed: int, tokens: int, faults: dict | None = None) -> int:
    """`make demo`'s last step: a random-weight layer loaded into the simulated device, tokens
    streamed through it, outputs checked against the golden model and the float block."""
    import time

    import torch

    from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
    from moeforge.host_runtime import open_device
    block = make_hf_block(cfg, seed=seed)
    q = QuantizedMoELayer.from_hf(block, cfg, calib=make_hf_input(cfg, 512, seed=2 * seed))
    x = make_hf_input(cfg, tokens, seed=2 * seed + 1)
    x_int = q.quantize_input(x)
    t0 = time.perf_counter()
    with open_device("sim", cfg, faults=faults) as dev:
        t1 = time.perf_counter()
        dev.load(q)
        t2 = time.perf_counter()
        y_int = torch.cat(list(dev.stream(x_int[i:i + 8] for i in range(0, tokens, 8))))
        t3 = time.perf_counter()
        stats = dev.stats()
    exact = torch.equal(y_int, q.forward_int(x_int))
    with torch.no_grad():
        y_float = block(q.dequantize_input(x_int)[None]).reshape(x.shape)
    y = q.dequantize_output(y_int)
    err = (torch.linalg.vector_norm(y - y_float) / torch.linalg.vector_norm(y_float)).item()
    print(f"    device: simulated MoESoC (Verilator, in a child process, over a local socket); "
          f"open {t1 - t0:.1f} s, load {t2 - t1:.2f} s")
    print(f"    token 0, first 8 outputs: {[round(v, 3) for v in y[0, :8].tolist()]}")
    print(f"    float block:              {[round(v, 3) for v in y_float[0, :8].tolist()]}")
    print(f"    {tokens} tokens in {t3 - t2:.2f} s ({tokens / (t3 - t2):.0f} tokens/s end to end): "
          f"{'bit-exact with the golden model' if exact else 'MISMATCH with the golden model'}; "
          f"relative L2 error against the float block {err * 100:.2f}%")
    print(f"    device stats: {stats['batches']} batches, {stats['cycles']} cycles, MAC utilisation "
          f"{stats['mac_util'] * 100:.1f}%, cache {stats['hits']} hits / {stats['misses']} misses, "
          f"{stats['bytes_fetched']} bytes fetched, {stats['stall_cycles']} stall cycles, "
          f"{stats['link']['frames']} frames, {stats['retries']} link retries")
    return 0 if exact else 1
