"""Run one unit's cosimulation against the golden model: `moeforge sim --unit NAME`.

A bench pairs a stimulus maker (golden model → inputs and expected outputs, as JSON)
with a cocotb module in `moeforge.sim.benches`. The cocotb side writes a summary that
comes back here with the wall time, so the command line can print cycles, mismatches,
MAC utilisation and simulated cycles per second.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError

__all__ = ["BENCHES", "UnitBench", "run_unit", "random_layer"]


@dataclass(frozen=True)
class UnitBench:
    """A unit's cosimulation.

    `stimulus(cfg, component, q, tokens, seed)` returns the JSON-able bench data, written to
    a file named by MOEFORGE_BENCH (and MOEFORGE_TEST_PARAMS, for benches shared with the
    tests). A bench that writes no summary of its own stops at the first mismatch: its
    summary is derived from the cocotb results (cycles from simulated time).
    """

    unit: str                       # name in rtl.units.UNITS
    module: str                     # cocotb module
    stimulus: Callable[..., dict]
    testcase: str | None = None     # run only this cocotb test of the module
    harness: Callable | None = None     # cfg → (unit, the design to build around it); default the unit
    summarise: Callable | None = None   # (bench summary, stimulus) → {mismatches, cycles, wall_s, mac_busy}


def random_layer(cfg: AccelConfig, seed: int):
    """A quantised random-weight layer for `cfg` (a transformers block of its family when it has one)."""
    from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
    if cfg.family == "custom":
        raise ConfigError("family", "unit simulations draw weights from a transformers block of the "
                          "config's family; 'custom' has none")
    block = make_hf_block(cfg, seed=seed)
    return QuantizedMoELayer.from_hf(block, cfg, calib=make_hf_input(cfg, 512, seed=seed + 7))


def _stream_prefix(component, name: str) -> str:
    from moeforge.rtl.export import verilog_ports
    return verilog_ports(component)[f"{name}.valid"].name.removesuffix("__valid")


def _requantiser_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """The down projection's requantisation of one expert: one beat per output channel and
    group of `lanes` tokens (a beat shares its channel's multiplier and shift)."""
    from moeforge.hls_models.fixed_point import requantize
    from moeforge.hls_models.golden import _gemm
    from moeforge.hls_models.hf_random import make_hf_input
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed)).to(torch.int64)
    e = int(torch.randint(cfg.n_experts, (1,), generator=torch.Generator().manual_seed(seed)))
    bank = q.experts
    acc = _gemm(bank.hidden(e, x), bank.w_down[e])            # [T, D] int32 range
    lanes = dut.lanes
    pad = (-tokens) % lanes
    acc = torch.cat([acc, torch.zeros(pad, cfg.d_model, dtype=torch.int64)])
    beats, expected = [], []
    for d in range(cfg.d_model):
        m, s = int(bank.down_mult[e, d]), int(bank.down_shift[e, d])
        for t0 in range(0, tokens + pad, lanes):
            a = acc[t0:t0 + lanes, d]
            beats.append([a.tolist(), [m] * lanes, s])
            expected.append(requantize(a, m, s, dut.out_bits).tolist())
    return dict(beats=beats, expected=expected, in_width=dut.in_width, out_bits=dut.out_bits,
                lanes=lanes, i_stream=_stream_prefix(dut, "i_stream"),
                o_stream=_stream_prefix(dut, "o_stream"), macs=0)


def _combiner_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """One batch: every routed expert's output (expert-major, as the device runs) and the
    shared expert's, gate-weighted; expected y = forward_int(x)."""
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.export import verilog_ports
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    x64 = x.to(torch.int64)
    route = q.route_int(x)
    contribs = []
    for e in torch.unique(route.indices).tolist():
        tok, slot = torch.nonzero(route.indices == e, as_tuple=True)
        o = q.experts.forward(e, x64[tok])
        contribs += [[t, int(route.gates[t, slot[j]]), o[j].tolist()] for j, t in enumerate(tok.tolist())]
    if q.shared is not None:
        o = q.shared.forward(0, x64)
        contribs += [[t, int(route.shared_gate[t]), o[t].tolist()] for t in range(tokens)]
    ports = verilog_ports(dut)
    batch = dict(name="cli", n_tokens=tokens, mult=q.out_mult, shift=q.out_shift, contribs=contribs,
                 expected=q.forward_int(x).tolist())
    return {"d_model": dut.d_model, "lanes": dut.lanes, "t_max": dut.t_max,
            "flush_latency": dut.flush_latency, "i_contrib": _stream_prefix(dut, "i_contrib"),
            "i_flush": _stream_prefix(dut, "i_flush"), "o_y": _stream_prefix(dut, "o_y"),
            "y_mult": ports["y_mult"].name, "y_shift": ports["y_shift"].name,
            "perturb": None, "batches": [batch], "expected": batch["expected"]}


def _router_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """Load the layer's router through the write port, route random tokens; expected route_int."""
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.export import verilog_ports
    from moeforge.rtl.router import router_image
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    r = q.route_int(x)
    expected = [r.indices[t].tolist() + r.gates[t].tolist() + [int(r.shared_gate[t])] for t in range(tokens)]
    ports = verilog_ports(dut)
    batch = dict(name="cli", image=router_image(q, lanes=dut.lanes), tokens=x.tolist(), expected=expected)
    return {"lanes": dut.lanes, "slices": dut.slices, "n_experts": dut.n_experts, "top_k": dut.top_k,
            "cycles_per_token": dut.cycles_per_token(), "i_tokens": _stream_prefix(dut, "i_tokens"),
            "o_route": _stream_prefix(dut, "o_route"), "wr_addr": ports["wr.addr"].name,
            "wr_data": ports["wr.data"].name, "wr_en": ports["wr.en"].name, "wr_stall": 0.2,
            "batches": [batch], "expected": expected}


def _expert_ffn_harness(cfg):
    """The routed experts' engine on a weight memory holding every expert's image."""
    from amaranth.utils import ceil_log2

    from moeforge.rtl.expert_ffn import ExpertFFN, ExpertImageLayout
    from moeforge.rtl.gemm import WeightMemoryHarness
    words = ExpertImageLayout(activation=cfg.activation, d_model=cfg.d_model, d_ff=cfg.d_ff,
                              rows=cfg.mac_rows, cols=cfg.mac_cols).words
    eng = ExpertFFN.from_config(cfg, w_addr_width=max(1, ceil_log2(cfg.n_experts * words)))
    return eng, WeightMemoryHarness(eng, depth=cfg.n_experts * words)


def _expert_ffn_stimulus(cfg, eng, q, tokens: int, seed: int, harness=None) -> dict:
    """One batch as the scheduler runs it: the golden router's experts in ascending order, each
    a job over the tokens that chose it, back to back; expected ``ExpertBank.forward``."""
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.expert_ffn import expert_image
    from moeforge.rtl.export import verilog_ports
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    route = q.route_int(x)
    words, R, D = eng.image.words, eng.rows, cfg.d_model
    jobs = []
    for e in torch.unique(route.indices).tolist():
        tok = torch.nonzero((route.indices == e).any(dim=1)).flatten()
        xe = x[tok]
        o = q.expert_int(e, xe)
        expected = [o[t, g * R:(g + 1) * R].tolist() + [t, int(g == D // R - 1)]
                    for t in range(len(tok)) for g in range(D // R)]
        jobs.append(dict(name=f"expert {e}", w_base=e * words, x=xe.tolist(), expected=expected,
                         busy=eng.busy(len(tok)), cycles=eng.cycles(len(tok))))
    image = [[e * words + i, w] for e in range(cfg.n_experts)
             for i, w in enumerate(expert_image(q.experts, e, cfg))]
    ports = verilog_ports(harness)
    prefix = lambda s: ports[f"{s}.valid"].name.removesuffix("__valid")   # noqa: E731
    return {"engine": dict(activation=eng.activation, d_model=eng.d_model, d_ff=eng.d_ff,
                           rows=eng.rows, cols=eng.cols, t_max=eng.t_max, rotation=eng.rotation,
                           w_addr_width=eng.w_addr_width),
            "ports": {"i_job": prefix("i_job"), "i_x": prefix("i_x"), "o_y": prefix("o_y"),
                      **{n: ports[n].name for n in ("w_wr.addr", "w_wr.data", "w_wr.en",
                                                     "busy_cycles", "total_cycles")}},
            "image": image, "jobs": jobs, "perturb": None,
            "expected": jobs[len(jobs) // 2]["expected"], "macs": sum(j["busy"] for j in jobs)}


def _expert_ffn_summary(s: dict, stim: dict) -> dict:
    return {"cycles": int(s["sim_cycles"]), "wall_s": s["wall_s"],
            "mac_busy": sum(b for b, _ in s["periods"]),
            "mac_util_busy": round(sum(b for b, _ in s["periods"]) / max(1, sum(t for _, t in s["periods"])), 4)}


BENCHES: dict[str, UnitBench] = {
    "requantiser": UnitBench("requantiser", "moeforge.sim.benches.requantiser", _requantiser_stimulus),
    "combiner": UnitBench("combiner", "moeforge.sim.benches.combiner", _combiner_stimulus,
                          testcase="combiner_batches"),
    "router": UnitBench("router", "moeforge.sim.benches.router", _router_stimulus, testcase="router_batches"),
    "expert_ffn": UnitBench("expert_ffn", "moeforge.sim.benches.expert_ffn", _expert_ffn_stimulus,
                            testcase="expert_ffn_jobs", harness=_expert_ffn_harness,
                            summarise=_expert_ffn_summary),
}


def run_unit(cfg: AccelConfig, unit: str, *, tokens: int, seed: int, waves: bool = False,
             stall: float = 0.3, perturb: bool = False, workdir: str | Path | None = None) -> dict:
    """Build (cached) and run `unit`'s bench; returns the summary (see the command line)."""
    from moeforge.rtl.export import to_verilog
    from moeforge.rtl.units import elaborate
    from moeforge.sim.build import build_cached, run_cocotb

    if unit not in BENCHES:
        raise ConfigError("unit", f"has no cosimulation bench yet; benches: {', '.join(BENCHES)}")
    if not 1 <= tokens <= cfg.token_buffer_depth:
        raise ConfigError("tokens", f"must be in [1, token_buffer_depth={cfg.token_buffer_depth}], not {tokens}")
    bench = BENCHES[unit]
    if bench.harness is None:
        dut = top = elaborate(cfg, unit)
    else:
        try:
            dut, top = bench.harness(cfg)
        except (ValueError, TypeError) as exc:
            raise ConfigError("unit", f"{unit} cannot be built for config {cfg.name}: {exc}") from None
    q = random_layer(cfg, seed)
    stim = (bench.stimulus(cfg, dut, q, tokens, seed) if bench.harness is None
            else bench.stimulus(cfg, dut, q, tokens, seed, harness=top))
    if perturb:  # prove the check can fail: one expected value off by one
        stim["expected"][len(stim["expected"]) // 2][0] += 1  # (a shared list with batches' expected)
    stim.update(seed=seed, in_stall=stall, out_stall=stall)
    handle = build_cached(to_verilog(top, unit), unit, waves=waves)
    own_dir = workdir is None
    tmp = Path(tempfile.mkdtemp(prefix=f"moeforge-sim-{unit}-")) if own_dir else Path(workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    bench_file = tmp / "bench.json"
    summary_file = bench_file.with_suffix(".summary.json")
    if bench.summarise is not None:
        stim["summary"] = str(summary_file)
    bench_file.write_text(json.dumps(stim))
    t0 = time.monotonic()
    results = run_cocotb(handle, bench.module, test_dir=tmp, seed=seed, check=False, testcase=bench.testcase,
                         extra_env={"MOEFORGE_BENCH": str(bench_file), "MOEFORGE_TEST_PARAMS": str(bench_file),
                                    "COCOTB_REWRITE_ASSERTION_FILES": "none"})
    wall = time.monotonic() - t0
    if summary_file.exists():
        s = json.loads(summary_file.read_text())
        if bench.summarise is not None:
            s = {"mismatches": 0 if results.ok else 1, **bench.summarise(s, stim)}
    else:   # a bench that stops at the first mismatch: at least one when it failed
        sim_ns = sum(c.sim_time_ns or 0 for c in results.cases)
        real = sum(c.real_time_s or 0 for c in results.cases)
        s = {"mismatches": 0 if results.ok else 1, "cycles": int(sim_ns // 10), "wall_s": real or wall}
    macs = stim.get("macs", 0)
    out = {"unit": unit, "config": cfg.name, "tokens": tokens, "seed": seed, "passed": results.ok,
           "mismatches": s["mismatches"], "cycles": s["cycles"],
           "sim_cycles_per_s": round(s["cycles"] / s["wall_s"], 1) if s.get("wall_s") else None,
           "wall_s": round(wall, 2),
           "build_cached": handle.cached, "build_seconds": round(handle.seconds, 2)}
    if macs:
        out["mac_util"] = round(s.get("mac_busy", 0) / max(1, s["cycles"]), 4)
        if "mac_util_busy" in s:     # over the engine's busy periods (from the first job's acceptance)
            out["mac_util_busy"] = s["mac_util_busy"]
    if not results.ok:
        out["failure"] = "; ".join(f.message for f in results.failures)[:2000]
    if waves and results.waves_path:
        out["waves"] = str(results.waves_path)
    out["workdir"] = str(tmp)
    return out
