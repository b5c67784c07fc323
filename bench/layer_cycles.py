"""Whole-layer cycles against the roofline, and how much fetch time the prefetch hides.

For each config, in Verilator (no stalls on the command streams, every output checked
bit-exact), batches of `--tokens` tokens (default: the token buffer depth) through
`AcceleratorWithMemory`; per batch:

* ``cycles`` (the device's own counter, RUN to done) and ``cycles_bound`` = max(compute, fetch)
  + router + combiner (`sim.layer_sim.BatchBound`): the target is cycles ≤ 1.15 × bound for
  batches of ≥ 32 tokens;
* the expert cache's hits and misses next to `ExpertCacheModel`'s for the same expert sequence;
* hidden fetch: ``1 - stall_cycles / fetch_cycles``, the share of the misses' fetch time
  (missed bytes / bandwidth) during which the engine did not wait for the cache; and the same
  without the batch's first fetch, ``1 - max(0, stall - first) / (fetch - first)`` with
  ``first`` one image's fetch time (when the first expert missed). The first expert is
  requested during routing, as soon as a token has chosen it (`LayerCore`), so its fetch
  overlaps the routing; before that change it was requested when routing ended, with nothing
  to overlap it, and this second figure showed what the prefetch hid of the others.

    .venv/bin/python bench/layer_cycles.py [--tokens 64] [--batches 2] [--bandwidth 8] [configs ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path

from moeforge import AccelConfig
from moeforge.sim.layer_sim import run_layer

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", default=sorted(str(p) for p in (ROOT / "configs").glob("*.toml")))
    ap.add_argument("--tokens", type=int, help="tokens per batch (default: token_buffer_depth)")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--latency", type=int, default=None)
    ap.add_argument("--bandwidth", default=None, help="backing memory bytes/cycle (default one word)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    rows, ok = [], True
    print(f"{'config':14} {'T':>4} {'cycles':>8} {'bound':>8} {'ratio':>6} {'compute':>8} {'fetch':>7} "
          f"{'router':>7} {'hit/miss RTL':>12} {'model':>7} {'stall':>6} {'hidden':>7} {'MAC util':>8} {'hidden after 1st':>7}")
    for path in args.configs:
        cfg = AccelConfig.from_toml(path)
        T = args.tokens or cfg.token_buffer_depth
        bw = None if args.bandwidth is None else Fraction(args.bandwidth)
        r = run_layer(cfg, tokens=T * args.batches, seed=args.seed, latency=args.latency,
                      bytes_per_cycle=bw, stall=0.0)
        ok &= r["passed"] and r["mismatches"] == 0 and r.get("cache_model_match", False)
        for b in r["per_batch"]:
            if "cycles" not in b:
                continue
            bound = b["bound"]
            fetch = bound["fetch"]
            hidden = 1 - b["stall_cycles"] / fetch if fetch else None
            first = fetch // b["misses"] if b["misses"] else 0
            later = fetch - first
            hidden_pf = 1 - max(0, b["stall_cycles"] - first) / later if later > 0 else None
            row = dict(config=cfg.name, tokens=b["tokens"], cycles=b["cycles"], bound=bound["total"],
                       ratio=b["ratio"], compute=bound["compute"], fetch=fetch, router=bound["router"],
                       hits=b["hits"], misses=b["misses"], model_hits=b["model_hits"],
                       model_misses=b["model_misses"], stall_cycles=b["stall_cycles"],
                       hidden=None if hidden is None else round(hidden, 3),
                       hidden_prefetched=None if hidden_pf is None else round(hidden_pf, 3),
                       mac_util=round(b["mac_busy"] / b["cycles"], 3), bit_exact=r["mismatches"] == 0)
            rows.append(row)
            print(f"{cfg.name:14} {b['tokens']:4} {b['cycles']:8} {bound['total']:8} {b['ratio']:6.3f} "
                  f"{bound['compute']:8} {fetch:7} {bound['router']:7} "
                  f"{b['hits']:5}/{b['misses']:<6} {b['model_hits']:3}/{b['model_misses']:<3} "
                  f"{b['stall_cycles']:6} {'' if hidden is None else f'{hidden * 100:6.1f}%':>7} "
                  f"{row['mac_util'] * 100:7.1f}% {'' if hidden_pf is None else f'{hidden_pf * 100:6.1f}%':>7}", flush=True)
        if not r["passed"]:
            print(f"  {cfg.name}: FAILED {r.get('failure', '')[:300]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
