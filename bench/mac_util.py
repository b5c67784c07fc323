# amaranth: UnusedElaboratable=no
# (engines are built for their cycle models too)

"""MAC-array utilisation of the GEMM and expert engines, and cosimulation speed.

For each config, in Verilator under cocotb, without stalls, every result checked bit-exact:

* the down-projection shaped GEMM (``N = d_model``, ``K = d_ff``, `GemmEngine`, against an
  integer matmul): one job of T = 1, R, 2R, 32 and 64 tokens each (up to the config's
  ``token_buffer_depth``);
* the expert FFN (`ExpertFFN.from_config`, against ``ExpertBank.forward`` of a quantised random
  layer of the config's family), for each T: one job alone on the idle engine, then four
  experts' jobs of T tokens back to back (the engine fetches the next expert's weights and
  tokens while one computes, as the scheduler will run a batch's experts).

Printed: MAC ops (``busy_cycles``), cycles (``total_cycles``) and utilisation of each job /
sequence; then per config the smallest T that reaches 90 % (from the engines' cycle models,
`GemmEngine.cycles` and `ExpertFFN.schedule`, which the runs check): for a GEMM job, an expert
job alone, four experts back to back, and the steady state of a long sequence.

Then the expert engine's simulation speed on one job: simulated cycles per wall-second in
Verilator + cocotb (inside the simulator; start-up shown apart) and in Amaranth's Python
simulator (``sim.add_clock(1e-6)``, an async testbench) on the same stimulus, and their ratio.

    .venv/bin/python bench/mac_util.py [--speed-tokens 8] [--no-speed] [configs ...]

(default: every ``configs/*.toml``; configs with the same engine shapes share one build). The
cocotb modules are the tests' (``moeforge.sim.benches.gemm``, ``moeforge.sim.benches.expert_ffn``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from moeforge import AccelConfig
from moeforge.hls_models.hf_random import make_hf_input
from moeforge.rtl.datapath.gemm import GemmEngine, gemm_image
from moeforge.rtl.export import to_verilog
from moeforge.rtl.expert.expert_ffn import ExpertFFN, expert_image
from moeforge.sim.benches import expert_ffn as expert_bench
from moeforge.sim.benches import gemm as gemm_bench
from moeforge.sim.benches.common import harness_ports
from moeforge.sim.build import build_cached, run_cocotb
from moeforge.sim.unit_sim import random_layer
from moeforge.sim.weight_memory import WeightMemoryHarness

TOKENS = (1, "R", "2R", 32, 64)
TARGET = 0.9
EXPERT_IMAGES = 4
SEQUENCE = 4          # experts back to back (the engine prefetches the next)


def token_counts(cfg) -> list[int]:
    R = cfg.mac_rows
    ts = [R if t == "R" else 2 * R if t == "2R" else t for t in TOKENS]
    return sorted({min(t, cfg.token_buffer_depth) for t in ts})


def first_t(busy, cycles, t_max) -> str:
    """The smallest T whose modelled utilisation reaches TARGET."""
    for t in range(1, t_max + 1):
        if busy(t) / cycles(t) >= TARGET:
            return str(t)
    return f"> {t_max}"


# ----------------------------------------------------------------------------------- GEMM

def gemm_run(cfg, workdir: Path) -> list[dict]:
    kw = dict(rows=cfg.mac_rows, cols=cfg.mac_cols, n=cfg.d_model, k=cfg.d_ff,
              t_max=cfg.token_buffer_depth)
    eng = GemmEngine(**kw)
    harness = WeightMemoryHarness(eng, depth=eng.image_words)
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-128, 128, (eng.n, eng.k), generator=g)
    jobs = []
    for T in token_counts(cfg):
        x = torch.randint(-128, 128, (T, eng.k), generator=g)
        jobs.append(dict(w_base=0, x=x.tolist(), expected=gemm_bench.expected_beats(eng, x @ w.T),
                         busy=eng.busy(T),
                         cycle_bound=eng.cycles(T)))
    handle = build_cached(to_verilog(harness, "gemm"), "gemm")
    params = workdir / "gemm.json"
    summary = workdir / "gemm.summary.json"
    params.write_text(json.dumps(dict(
        engine=kw, depth=harness.depth, ports=harness_ports(harness),
        image=list(enumerate(gemm_image(w, eng.cols))), jobs=jobs, in_stall=0.0, out_stall=0.0,
        perturb=None, summary=str(summary))))
    run_cocotb(handle, "moeforge.sim.benches.gemm", test_dir=workdir / "gemm", testcase="gemm_throughput",
               extra_env={"MOEFORGE_TEST_PARAMS": str(params)})
    return json.loads(summary.read_text())["jobs"]


# ------------------------------------------------------------------------------ expert FFN

def expert_jobs(cfg, q, eng, plan, seed):
    """Jobs for `plan` = [(tokens, expert, after_previous)], with expected outputs and models."""
    words = eng.image.words
    jobs = []
    for j, (T, e, after) in enumerate(plan):
        x = q.quantize_input(make_hf_input(cfg, T, seed + 10 + j))
        expected = expert_bench.expected_beats(q.expert_int(e, x), cfg.mac_rows)
        jobs.append(dict(name=f"expert {e}", w_base=e * words, x=x.tolist(), expected=expected,
                         busy=eng.busy(T), cycles=eng.cycles(T), after_previous=after))
    expert_bench.set_models(eng, jobs)
    return jobs


def expert_setup(cfg, seed=1):
    q = random_layer(cfg, seed)
    eng = ExpertFFN(**expert_bench.engine_kwargs(cfg, EXPERT_IMAGES))
    harness = WeightMemoryHarness(eng, depth=EXPERT_IMAGES * eng.image.words)
    words = eng.image.words
    n_img = min(EXPERT_IMAGES, cfg.n_experts)
    image = [[e * words + i, w] for e in range(n_img) for i, w in enumerate(expert_image(q.experts, e, cfg))]
    return q, eng, harness, image, n_img


def expert_run(cfg, eng, harness, image, jobs, workdir: Path, tag: str) -> dict:
    handle = build_cached(to_verilog(harness, "expert_ffn"), "expert_ffn")
    params = workdir / f"{tag}.json"
    summary = workdir / f"{tag}.summary.json"
    params.write_text(json.dumps(dict(
        engine=expert_bench.engine_kwargs(cfg, EXPERT_IMAGES), ports=harness_ports(harness), image=image,
        jobs=jobs, in_stall=0.0, out_stall=0.0, perturb=None, summary=str(summary))))
    start = time.perf_counter()
    run_cocotb(handle, "moeforge.sim.benches.expert_ffn", test_dir=workdir / tag, testcase="expert_ffn_throughput",
               extra_env={"MOEFORGE_TEST_PARAMS": str(params)})
    out = json.loads(summary.read_text())
    out["wall_with_startup_s"] = time.perf_counter() - start
    return out


def expert_thresholds(eng) -> tuple[str, str, str]:
    """Smallest T reaching 90 %: one job alone; a sequence of SEQUENCE experts; the steady
    state of a long sequence (per job, once the pipeline is full)."""
    t_max = eng.t_max

    def seq(t, n):
        return n * eng.busy(t) / eng.schedule([t] * n)[-1][1]

    def steady(t):
        s = eng.schedule([t] * 8)
        return eng.busy(t) * 4 / (s[-1][1] - s[-5][1])

    single = first_t(eng.busy, eng.cycles, t_max)
    out = [single]
    for f in (lambda t: seq(t, SEQUENCE), steady):
        out.append(next((str(t) for t in range(1, t_max + 1) if f(t) >= TARGET), f"> {t_max}"))
    return tuple(out)


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-tokens", type=int, default=8,
                    help="tokens of the job both simulators run for the speed comparison")
    ap.add_argument("--speed-configs", nargs="*", default=["configs/tiny.toml", "configs/olmoe.toml"])
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("configs", nargs="*", default=sorted(str(p) for p in (ROOT / "configs").glob("*.toml")))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moeforge-macutil-") as tmp:
        workdir = Path(tmp)
        print("| config | engine | array | T | MAC ops | cycles | utilisation | "
              f"{SEQUENCE} experts back to back: cycles | utilisation |")
        print("|---|---|---|---|---|---|---|---|---|")
        notes = []
        for path in args.configs:
            cfg = AccelConfig.from_toml(path)
            name = Path(path).stem
            array = f"{cfg.mac_rows}x{cfg.mac_cols}"
            for r in gemm_run(cfg, workdir):
                print(f"| {name} | GEMM {cfg.d_model}x{cfg.d_ff} | {array} | {r['tokens']} | {r['busy']} | "
                      f"{r['total']} | {100.0 * r['busy'] / r['total']:.1f} % | | |", flush=True)
            q, eng, harness, image, n_img = expert_setup(cfg)
            plan = []
            for T in token_counts(cfg):
                plan.append((T, 0, True))                                     # alone
                plan += [(T, e % n_img, e == 0) for e in range(SEQUENCE)]     # a sequence
            jobs = expert_jobs(cfg, q, eng, plan, seed=1)
            res = expert_run(cfg, eng, harness, image, jobs, workdir, f"expert-{name}")
            periods = iter(res["periods"])
            for T in token_counts(cfg):
                busy, total = next(periods)
                sbusy, stotal = next(periods)
                print(f"| {name} | expert ({cfg.activation}) | {array} | {T} | {busy} | {total} | "
                      f"{100.0 * busy / total:.1f} % | {stotal} | {100.0 * sbusy / stotal:.1f} % |", flush=True)
            g = GemmEngine(rows=cfg.mac_rows, cols=cfg.mac_cols, n=cfg.d_model, k=cfg.d_ff,
                           t_max=cfg.token_buffer_depth)
            single, seq, steady = expert_thresholds(eng)
            notes.append(f"| {name} | {array} | {first_t(g.busy, g.cycles, g.t_max)} (busy from T = "
                         f"{cfg.mac_rows}) | {single} | {seq} | {steady} |")
        print()
        print("Tokens per expert for >= 90 % MAC utilisation (from the engines' cycle models, "
              "which the runs above check):")
        print()
        print(f"| config | array | GEMM job | expert job alone | {SEQUENCE} experts back to back | "
              "steady state (long sequence) |")
        print("|---|---|---|---|---|---|")
        for line in notes:
            print(line)
        if args.no_speed:
            return 0
        print()
        print("| config | job | cycles | Verilator+cocotb cycles/s | Amaranth sim cycles/s | ratio |")
        print("|---|---|---|---|---|---|")
        for path in args.speed_configs:
            cfg = AccelConfig.from_toml(path)
            T = min(args.speed_tokens, cfg.token_buffer_depth)
            q, eng, harness, image, _ = expert_setup(cfg)
            jobs = expert_jobs(cfg, q, eng, [(T, 1, True)], seed=3)
            ver = expert_run(cfg, eng, harness, image, jobs, workdir, f"speed-{Path(path).stem}")
            q, eng, harness, image, _ = expert_setup(cfg)                 # a fresh harness
            run = expert_bench.amaranth_jobs(eng, harness, image, jobs)
            outs, cycles, wall = run.outs, run.cycles, run.wall_s
            if outs != jobs[0]["expected"]:
                print(f"{path}: Amaranth simulation MISMATCH")
                return 1
            v_rate = ver["sim_cycles"] / ver["wall_s"]
            a_rate = cycles / wall
            print(f"| {Path(path).stem} | expert, T={T} | {cycles} | {v_rate:,.0f} "
                  f"({ver['wall_with_startup_s']:.1f} s with start-up) | {a_rate:,.0f} | "
                  f"{v_rate / a_rate:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
