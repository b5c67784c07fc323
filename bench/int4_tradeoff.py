"""int4 expert weights' trade-off: image size and fetch cycles against the error versus the float
block, per example config, at ``weight_bits`` 8 and 4.

For every config prints two markdown rows (int8, int4): one routed expert's image in bytes (what
a cache miss fetches, `CommandLayout.image_words` × ``mac_cols``), the relative L2 error on the
raw float tokens and the routing agreement, each the median (worst) over `--seeds`
(`measure_accuracy`). With `--cycles N` it also runs the whole layer in Verilator (`moeforge
sim`'s `run_layer`: N tokens, seed 0, no stalls, the bit-exact check included) at the backing
memory's `--mem-bandwidth` (bytes per cycle; default one word a cycle) and prints its cycles,
the bytes fetched and the cycles' ratio to int8: one Verilator build per config and width.

    .venv/bin/python bench/int4_tradeoff.py [--seeds 4] [--tokens 4096] [--cycles 256]
        [--mem-bandwidth 2] [configs ...]
"""

import argparse
import glob
import sys
from fractions import Fraction

from layer_run import median_worst, verified_layer_run

from moeforge import AccelConfig
from moeforge.hls_models.accuracy import measure_accuracy
from moeforge.spec.protocol import CommandLayout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--cycles", type=int, default=0, metavar="N",
                    help="also run the whole layer in Verilator on N tokens per width")
    ap.add_argument("--mem-bandwidth", type=Fraction, default=None,
                    help="backing-memory bytes per cycle for --cycles (default one word)")
    ap.add_argument("configs", nargs="*", default=sorted(glob.glob("configs/*.toml")))
    args = ap.parse_args(argv)
    memory = f", {args.mem_bandwidth} B/cycle memory" if args.mem_bandwidth else ""
    print(f"{args.seeds} seeds × {args.tokens} tokens, float input; median (worst)"
          + (f"; cycles: whole layer in Verilator, {args.cycles} tokens{memory}" if args.cycles else "")
          + "\n")
    print("| config | weights | image bytes | rel. L2, float input | same experts |"
          + (" cycles | bytes fetched | vs int8 |" if args.cycles else ""))
    print("|---|---|---|---|---|" + ("---|---|---|" if args.cycles else ""))
    for path in args.configs:
        base = AccelConfig.from_toml(path)
        cycles8 = None
        for bits in (8, 4):
            cfg = base.replace(name=f"{base.name}-w{bits}", weight_bits=bits)
            image = CommandLayout.from_config(cfg).image_words * cfg.mac_cols
            rs = [measure_accuracy(cfg, seed=s, eval_tokens=args.tokens) for s in range(args.seeds)]
            row = (f"| `{path}` | int{bits} | {image:,} "
                   f"| {median_worst([r.rel_l2_float_input for r in rs], max)} "
                   f"| {median_worst([r.route_match_float_input for r in rs], min)} |")
            if args.cycles:
                run = verified_layer_run(cfg, args.cycles, bytes_per_cycle=args.mem_bandwidth)
                if run is None:
                    return 1
                cycles8 = cycles8 or run["cycles"]
                row += f" {run['cycles']:,} | {run['bytes_fetched']:,} | {run['cycles'] / cycles8:.3f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
