"""Golden model vs float transformers blocks for every example config, over several seeds.

Prints the README's accuracy table (markdown): median and worst over the seeds, for the
float block fed the device's input and fed the raw float tokens. `--input-bits` and
`--smoothing` override the configs' precision knobs (int8 without smoothing is the int8-only
input; 16 and 0.5 the float-faithful routing), `--weight-bits` the expert weights (8 or 4) and
`--skip-threshold` expert skipping; the knobs column shows what was in force. `--outliers N`
scales N channels of every token by `--outlier-gain` (30): hidden states shaped like a real
LLM's (`make_hf_input`).

    .venv/bin/python bench/accuracy.py [--seeds 4] [--tokens 4096] [--input-bits 16 --smoothing 0.5]
        [--weight-bits 4] [--skip-threshold 0.2] [--outliers 3 --outlier-gain 30]
"""

import argparse
import glob
import statistics
import sys

from moeforge import AccelConfig
from moeforge.hls_models.accuracy import knobs, measure_accuracy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--input-bits", type=int, choices=(8, 16))
    ap.add_argument("--smoothing", type=float)
    ap.add_argument("--weight-bits", type=int, choices=(4, 8))
    ap.add_argument("--skip-threshold", type=float)
    ap.add_argument("--outliers", type=int, default=0)
    ap.add_argument("--outlier-gain", type=float, default=30.0)
    ap.add_argument("configs", nargs="*", default=sorted(glob.glob("configs/*.toml")))
    args = ap.parse_args(argv)
    shape = (f"; {args.outliers} outlier channels ×{args.outlier_gain:g}" if args.outliers else "")
    print(f"{args.seeds} seeds × {args.tokens} tokens{shape}; median (worst)\n")
    print("| config | family | rel. L2, device input | same experts, device input "
          "| rel. L2, float input | same experts, float input | knobs |")
    print("|---|---|---|---|---|---|---|")
    for path in args.configs:
        cfg = AccelConfig.from_toml(path)
        if args.input_bits is not None:
            cfg = cfg.replace(input_bits=args.input_bits)
        if args.smoothing is not None:
            cfg = cfg.replace(input_smoothing=args.smoothing)
        if args.weight_bits is not None:
            cfg = cfg.replace(weight_bits=args.weight_bits)
        if args.skip_threshold is not None and cfg.top_k > 1:    # top-1 has nothing to skip
            cfg = cfg.replace(skip_threshold=args.skip_threshold)
        rs = [measure_accuracy(cfg, seed=s, eval_tokens=args.tokens, outliers=args.outliers,
                               outlier_gain=args.outlier_gain) for s in range(args.seeds)]

        def cell(vals, pct_worst):
            return f"{statistics.median(vals) * 100:.2f}% ({pct_worst(vals) * 100:.2f}%)"
        print(f"| `{path}` | {cfg.family} | {cell([r.rel_l2 for r in rs], max)} "
              f"| {cell([r.route_match for r in rs], min)} | {cell([r.rel_l2_float_input for r in rs], max)} "
              f"| {cell([r.route_match_float_input for r in rs], min)} | {knobs(cfg)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
