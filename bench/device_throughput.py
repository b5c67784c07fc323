"""Tokens per second through the host runtime and the simulated device, end to end.

Loads a random-weight layer into ``open_device("sim", cfg)`` and streams tokens through it:
float tokens in, dequantised outputs out, every output checked bit-exact against the golden
model (a mismatch fails the benchmark). Reports the median of several timed runs, the link's
frames, and the same with injected faults (retries counted). The bytes on the wire per token
(both ways, framing included) give the rate a serial link of ``--baud`` allows at most (10
bits per byte): the cost of a wider token (``--input-bits 16``) shows there.

    .venv/bin/python bench/device_throughput.py [--config configs/tiny.toml] [--tokens 512]
        [--input-bits 8|16] [--baud 3000000]
"""

import argparse
import statistics
import sys
import time

import torch

from moeforge import AccelConfig
from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
from moeforge.host_runtime import open_device


def measure(cfg, q, x, *, repeats: int, faults=None, piece: int = 8):
    with open_device("sim", cfg, faults=faults) as dev:
        t0 = time.perf_counter()
        dev.load(q)
        load_s = time.perf_counter() - t0
        loaded = dev.stats()["link"]
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            y = torch.cat(list(dev.stream(x[i:i + piece] for i in range(0, x.shape[0], piece))))
            rates.append(x.shape[0] / (time.perf_counter() - t0))
            if not torch.equal(y, q(x)):
                raise SystemExit("device output differs from the golden model")
        s = dev.stats()
        wire = sum(s["link"][k] - loaded[k] for k in ("bytes_sent", "bytes_received"))
        return statistics.median(rates), load_s, s, wire / (repeats * x.shape[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.toml")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--input-bits", type=int, choices=(8, 16), help="override [precision] input_bits")
    ap.add_argument("--baud", type=int, default=3_000_000, help="serial rate for the wire-bound figure")
    args = ap.parse_args()
    cfg = AccelConfig.from_toml(args.config)
    if args.input_bits:
        cfg = cfg.replace(input_bits=args.input_bits)
    q = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=0), cfg, calib=make_hf_input(cfg, 512, seed=1))
    x = make_hf_input(cfg, args.tokens, seed=2)
    print(f"{cfg.name}, input_bits {cfg.input_bits}: {args.tokens} float tokens streamed in pieces "
          f"of 8, outputs checked bit-exact")
    print(f"{'link':34} {'tokens/s (median)':>18} {'load s':>7} {'frames':>7} {'retries':>8} "
          f"{'device cycles':>14} {'wire B/token':>13} {f'tokens/s @{args.baud} baud':>24}")
    for name, faults in (("clean", None), ("faults flip 1e-3, drop/dup 3e-4", dict(flip=1e-3, drop=3e-4, dup=3e-4, seed=1))):
        rate, load_s, s, per_token = measure(cfg, q, x, repeats=args.repeats, faults=faults)
        print(f"{name:34} {rate:18.0f} {load_s:7.2f} {s['link']['frames']:7d} {s['retries']:8d} "
              f"{s['cycles']:14d} {per_token:13.1f} {args.baud / 10 / per_token:24.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
