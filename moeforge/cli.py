"""The `moeforge` command line.

Every user error (bad config, missing file, wrong shape) ends in one line on stderr
and exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_args import MAX_TOKENS, int_in
from .config import AccelConfig
from .errors import MoeforgeError
from .outputs import atomic_write, check_output

__all__ = ["main"]

_TOKENS = int_in(1, MAX_TOKENS)
_SEED = int_in(0, 2**32 - 1)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _load_config(path: str) -> AccelConfig:
    return AccelConfig.from_toml(path)


def cmd_config(args) -> int:
    cfg = _load_config(args.config)
    if args.json:
        print(json.dumps({"hash": cfg.content_hash(), **cfg.to_dict()}, indent=2))
    else:
        print(f"# {args.config}: valid, content hash {cfg.content_hash()}")
        print(cfg.to_toml(), end="")
    return 0


def _accuracy_rows(cfg, seed, tokens):
    from moeforge.hls_models.accuracy import measure_accuracy
    return measure_accuracy(cfg, seed=seed, eval_tokens=tokens)


def _measuring(paths):
    """Yield `paths` one by one, saying on stderr which is being measured: a tqdm bar on a
    terminal, else one line each (a log or a pipe shows progress too, not minutes of silence)."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        with tqdm(total=len(paths), unit="config", file=sys.stderr) as bar:
            for p in paths:
                bar.set_description(f"measuring {p}")
                yield p
                bar.update(1)
        return
    for i, p in enumerate(paths, 1):
        print(f"measuring {p} ({i}/{len(paths)}) ...", file=sys.stderr, flush=True)
        yield p


def cmd_accuracy(args) -> int:
    """One row per config, each printed as soon as it is measured (``--json``: one document at
    the end, progress on stderr only)."""
    cfgs = {}
    for path in args.config:       # every config is checked before minutes of measuring
        cfg = cfgs[path] = _load_config(path)
        if cfg.family == "custom":
            raise MoeforgeError(f"{path}: family 'custom' has no transformers block to compare with")
    if not args.json:
        print(f"{'':42} {'device input':>26} {'raw float input':>26}")
        print(f"{'config':28} {'family':12} {'rel L2':>12} {'same experts':>13} {'rel L2':>12} "
              f"{'same experts':>13} {'experts/token':>13}  knobs", flush=True)
    from tqdm import tqdm
    reports = []
    for p in _measuring(args.config):
        r = _accuracy_rows(cfgs[p], args.seed, args.tokens)
        reports.append({"config": p, **r.as_dict()})
        if not args.json:
            with tqdm.external_write_mode(file=sys.stdout):    # the row above a terminal's bar
                print(f"{p:28} {r.family:12} {r.rel_l2 * 100:11.2f}% {r.route_match * 100:12.2f}% "
                      f"{r.rel_l2_float_input * 100:11.2f}% {r.route_match_float_input * 100:12.2f}% "
                      f"{r.experts_per_token:13.2f}  {r.knobs}",
                      flush=True)
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0


def cmd_quantize(args) -> int:
    """Quantise a random-weight transformers block of the config's family into a weight image."""
    cfg = _load_config(args.config)
    if cfg.family == "custom":
        raise MoeforgeError(f"{args.config}: family 'custom' has no transformers block to build")
    out = check_output(args.output, "-o")
    import torch

    from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
    torch.manual_seed(args.seed)
    block = make_hf_block(cfg, seed=args.seed)
    q = QuantizedMoELayer.from_hf(block, cfg, calib=make_hf_input(cfg, args.calib_tokens, seed=args.seed + 1))
    atomic_write(out, q.save, suffix=out.suffix)
    print(f"wrote {args.output} ({cfg.name}, config {cfg.short_hash})")
    return 0


def cmd_demo(args) -> int:
    cfg = _load_config(args.config)
    print(f"moeforge demo — {args.config}: {cfg.name}, family {cfg.family}, d_model={cfg.d_model}, "
          f"d_ff={cfg.d_ff}, {cfg.n_experts} experts, top-{cfg.top_k}, {cfg.routing}, "
          f"router {cfg.router_bits}-bit, config hash {cfg.short_hash}")
    from moeforge.hls_models.accuracy import knobs
    print(f"\n[1] golden model (the device's integer arithmetic; {knobs(cfg)}) vs the float "
          f"transformers block, {args.tokens} random tokens", flush=True)
    r = _accuracy_rows(cfg, args.seed, args.tokens)
    rows = [("the device's input", r.rel_l2, r.route_match),
            ("the raw float tokens", r.rel_l2_float_input, r.route_match_float_input)]
    print(f"    {'':42} {'rel L2 error':>12} {'same experts':>13}")
    for name, err, match in rows:
        print(f"    {'float block fed ' + name:42} {err * 100:11.2f}% {match * 100:12.2f}%")
    for name, err, match in rows:
        met = err <= 0.03 and match >= 0.995
        print(f"    targets ≤ 3% and ≥ 99.5% on {name}: {'met' if met else 'MISSED'}", flush=True)
    if args.no_sim:
        return 0
    print(f"\n[2] the whole accelerator in Verilator (cocotb, random stalls) vs the golden model, "
          f"{args.sim_tokens} tokens (the first build takes a few minutes; later runs use the cache)",
          flush=True)
    import argparse as _argparse
    sim_args = _argparse.Namespace(tokens=args.sim_tokens, seed=args.seed, mem_latency=None,
                                   mem_bandwidth=None, stall=0.2, waves=False, trace=None, json=False)
    from .cli_sim import sim_layer
    code = sim_layer(cfg, sim_args)
    if args.no_device:
        return code
    print(f"\n[3] the host runtime: {args.device_tokens} tokens streamed through the simulated device "
          f"(the link's frames over a socket; the first build takes a few minutes)", flush=True)
    from .cli_device import demo_stream
    return demo_stream(cfg, seed=args.seed, tokens=args.device_tokens) or code


def cmd_verilog(args) -> int:
    from moeforge.rtl.units import all_verilog, unit_verilog
    cfg = _load_config(args.config)
    to_stdout = args.output is None or str(args.output) == "-"
    out = None if to_stdout else check_output(args.output, "-o")   # before the elaboration
    if args.board:
        from .cli_board import board_verilog
        text = board_verilog(args.board, cfg)
    else:
        text = unit_verilog(cfg, args.unit) if args.unit else all_verilog(cfg)
    if out is None:
        sys.stdout.write(text)
        return 0
    atomic_write(out, lambda tmp: tmp.write_text(text))
    what = f"board top for {args.board}" if args.board else args.unit or "all units"
    print(f"wrote {out} ({what}, config {cfg.name} {cfg.short_hash})", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moeforge", description="MoE-layer accelerator toolkit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("config", help="validate a config file and print it with its content hash")
    c.add_argument("config")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_config)

    a = sub.add_parser("accuracy", help="golden model vs float transformers block, per config")
    a.add_argument("config", nargs="+")
    a.add_argument("--seed", type=_SEED, default=0)
    a.add_argument("--tokens", type=_TOKENS, default=2048)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_accuracy)

    q = sub.add_parser("quantize", help="quantise a random-weight block of the config's family to a .safetensors image")
    q.add_argument("--config", required=True)
    q.add_argument("--seed", type=_SEED, default=0)
    q.add_argument("--calib-tokens", type=_TOKENS, default=512)
    q.add_argument("-o", "--output", required=True, type=Path)
    q.set_defaults(func=cmd_quantize)

    from moeforge.rtl.units import UNITS          # names only: building a unit needs Amaranth
    v = sub.add_parser("verilog", help="write the Verilog of one unit, or of every registered unit")
    v.add_argument("--config", required=True)
    from .cli_board import add_board_commands, board_names
    vwhat = v.add_mutually_exclusive_group()
    vwhat.add_argument("--unit", choices=list(UNITS), metavar="NAME",
                       help=f"unit name, one of: {', '.join(UNITS)} (default: all units)")
    vwhat.add_argument("--board", choices=board_names(), metavar="BOARD",
                       help=f"the whole board top (PLL, pins, SoC, on-chip store) for one of: "
                            f"{', '.join(board_names())}")
    v.add_argument("-o", "--output", type=Path, help="output file (default: stdout)")
    v.set_defaults(func=cmd_verilog)

    s = sub.add_parser("sim", help="cosimulate the whole layer (or one unit) in Verilator against the golden model")
    s.add_argument("--config", required=True)
    s.add_argument("--unit", help="unit name (default: the whole accelerator on its backing-memory model)")
    from .cli_args import MAX_TOKENS, float_in, int_in
    from .cli_sim import bytes_per_cycle, cmd_sim
    s.add_argument("--tokens", type=int_in(1, MAX_TOKENS), default=16,
                   help=f"tokens to stream, 1 to {MAX_TOKENS} (a unit: at most its token buffer)")
    s.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)
    s.add_argument("--stall", type=float_in(0.0, 1.0, hi_open=True), default=0.3,
                   help="probability of a stall cycle on each stream, in [0, 1)")
    s.add_argument("--waves", action="store_true", help="write a waveform file and keep the run's "
                   "folder (its path is printed); without it the folder is always removed")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--trace", help="whole layer: write each batch's expert-cache accesses (RTL "
                   "counters and the Python model's hit/miss/slot sequence) to this JSON file")
    s.add_argument("--mem-latency", type=int_in(1, 1024),
                   help="whole layer: backing-memory latency in cycles, 1 to 1024 (default 16)")
    s.add_argument("--mem-bandwidth", type=bytes_per_cycle,
                   help="whole layer: backing-memory bytes per cycle, e.g. 4 or 1/2 "
                   "(default one word, mac_cols bytes)")
    s.set_defaults(func=cmd_sim)

    d = sub.add_parser("demo", help="the README's demo: accuracy report, then the whole layer in simulation")
    d.add_argument("--config", default="configs/tiny.toml")
    d.add_argument("--seed", type=_SEED, default=0)
    d.add_argument("--tokens", type=_TOKENS, default=2048)
    d.add_argument("--sim-tokens", type=_TOKENS, default=48, help="tokens through the simulated accelerator")
    d.add_argument("--no-sim", action="store_true", help="skip the simulations (cosimulation and device)")
    d.add_argument("--device-tokens", type=_TOKENS, default=256, help="tokens streamed through the simulated device")
    d.add_argument("--no-device", action="store_true", help="skip the simulated-device step")
    d.set_defaults(func=cmd_demo)

    from .cli_device import add_device_commands
    add_device_commands(sub)
    add_board_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)     # numeric options are range-checked while parsing
    try:
        return args.func(args)
    except MoeforgeError as exc:
        print(f"moeforge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("moeforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
