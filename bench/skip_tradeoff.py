"""Expert skipping's trade-off: experts computed per token (and cycles) against the error versus
the float block, per example config, at each skip threshold.

For every config with ``top_k`` ≥ 2 (Switch, top-1, has nothing to skip) and every threshold of
`--thresholds` (0 is always measured first: no skipping), prints a markdown row: experts per
token (mean over tokens), relative L2 error on the raw float tokens and routing agreement, each
the median (worst) over `--seeds` (`measure_accuracy`). With `--cycles N` it also runs the whole
layer in Verilator (`moeforge sim`'s `run_layer`, N tokens, seed 0, bit-exact check included)
and prints its cycles and their ratio to the unskipped run: one Verilator build per config and
threshold, minutes each.

    .venv/bin/python bench/skip_tradeoff.py [--thresholds 0.1 0.2] [--seeds 4] [--tokens 4096]
        [--cycles 256] [configs ...]
"""

import argparse
import glob
import statistics
import sys

from layer_run import median_worst, verified_layer_run

from moeforge import AccelConfig
from moeforge.hls_models.accuracy import measure_accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--cycles", type=int, default=0, metavar="N",
                    help="also run the whole layer in Verilator on N tokens per threshold")
    ap.add_argument("configs", nargs="*", default=sorted(glob.glob("configs/*.toml")))
    args = ap.parse_args(argv)
    print(f"{args.seeds} seeds × {args.tokens} tokens, float input; median (worst)"
          + (f"; cycles: whole layer in Verilator, {args.cycles} tokens" if args.cycles else "") + "\n")
    print("| config | skip threshold | experts/token | rel. L2, float input | same experts |"
          + (" cycles | vs no skipping |" if args.cycles else ""))
    print("|---|---|---|---|---|" + ("---|---|" if args.cycles else ""))
    for path in args.configs:
        base = AccelConfig.from_toml(path)
        if base.top_k < 2:
            print(f"| `{path}` | — | {base.top_k} | top-1: nothing to skip | |"
                  + (" | |" if args.cycles else ""), flush=True)
            continue
        cycles0 = None
        for tau in [0.0, *args.thresholds]:
            cfg = base.replace(name=f"{base.name}-skip{tau:g}", skip_threshold=tau)
            rs = [measure_accuracy(cfg, seed=s, eval_tokens=args.tokens) for s in range(args.seeds)]
            row = (f"| `{path}` | {tau:g} | {statistics.median(r.experts_per_token for r in rs):.2f} "
                   f"| {median_worst([r.rel_l2_float_input for r in rs], max)} "
                   f"| {median_worst([r.route_match_float_input for r in rs], min)} |")
            if args.cycles:
                run = verified_layer_run(cfg, args.cycles)
                if run is None:
                    return 1
                cycles0 = cycles0 or run["cycles"]
                row += f" {run['cycles']:,} | {run['cycles'] / cycles0:.3f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
