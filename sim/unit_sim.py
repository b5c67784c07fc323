"""Run one unit's cosimulation against the golden model: `moeforge sim --unit NAME`.

A bench pairs a stimulus maker (golden model → inputs and expected outputs, as JSON)
with a cocotb module in `moeforge.sim.benches`. The tool writes the stimulus with a nonce
and the path of the summary it expects; the cocotb side compares every output with a
counting `Scoreboard` and writes there what it compared. The verdict comes only from that
summary (`moeforge.sim.scoreboard.verdict`): no summary, another run's, or fewer outputs
compared than were expected is never a pass.

`run_bench` and `run_folder` are shared with the whole-layer run (`sim.layer_sim`).
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError

__all__ = ["BENCHES", "UnitBench", "BenchRun", "run_unit", "run_bench", "run_folder", "hidden_beats",
           "requantiser_bench", "random_layer", "bench_outputs", "check_run_options",
           "BENCH_VARIABLES"]

# The environment variables the bench modules read their stimulus file from.
BENCH_VARIABLES = ("MOEFORGE_BENCH", "MOEFORGE_TEST_PARAMS", "MOEFORGE_HIDDEN_BENCH")


def bench_outputs(stim: dict) -> tuple[int, int]:
    """``(tokens, elements)`` a bench whose scoreboard takes ``stim["expected"]`` row by row
    must compare."""
    rows = stim["expected"]
    return len(rows), sum(len(r) for r in rows)


@dataclass(frozen=True)
class UnitBench:
    """A unit's cosimulation.

    `stimulus(cfg, component, q, tokens, seed)` returns the JSON-able bench data, written to
    a file named by each of `BENCH_VARIABLES` (benches shared with the tests read their own).
    `outputs(stim)` says how many tokens and elements the bench's scoreboard must compare
    (tokens as the scoreboard counts them: one per output beat of a streaming unit).
    """

    unit: str                       # name in rtl.units.UNITS
    module: str                     # cocotb module
    stimulus: Callable[..., dict]
    testcase: str | None = None     # run only this cocotb test of the module
    harness: Callable | None = None     # cfg → (unit, the design to build around it); default the unit
    summarise: Callable | None = None   # (bench summary, stimulus) → extra fields (mac_busy, ...)
    outputs: Callable[[dict], tuple[int, int]] = bench_outputs


@dataclass(frozen=True)
class BenchRun:
    """One cocotb run of a bench: its results, the summary file's content (``None`` if it
    wrote none; see `scoreboard.read_summary`), the nonce the run was given, wall seconds."""

    results: object
    summary: object
    nonce: str
    wall: float


@contextlib.contextmanager
def run_folder(workdir: str | Path | None, prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """The folder a run works in: `workdir` if given (left as it is), else a new temporary
    folder that is removed however the block ends (an error, Ctrl-C), except when `keep` and
    the block ended normally (the caller then reports its path)."""
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    kept = False
    try:
        yield path
        kept = keep
    finally:
        if not kept:
            shutil.rmtree(path, ignore_errors=True)


def run_bench(handle, module: str, bench: dict, workdir: Path, *, seed: int,
              testcase: str | None = None) -> BenchRun:
    """Write `bench` with a fresh nonce and the summary path into ``workdir/bench.json``, run
    the cocotb `module` on `handle`, and read back the summary it wrote for this run."""
    from moeforge.sim.build import run_cocotb
    from moeforge.sim.scoreboard import read_summary
    nonce = secrets.token_hex(8)
    bench_file = workdir / "bench.json"
    summary_file = workdir / "bench.summary.json"
    summary_file.unlink(missing_ok=True)          # a summary of an earlier run is not this one's
    bench_file.write_text(json.dumps({**bench, "nonce": nonce, "summary": str(summary_file)}))
    env = {name: str(bench_file) for name in BENCH_VARIABLES}
    env["COCOTB_REWRITE_ASSERTION_FILES"] = "none"
    t0 = time.monotonic()
    results = run_cocotb(handle, module, test_dir=workdir, seed=seed, check=False,
                         testcase=testcase, extra_env=env)
    wall = time.monotonic() - t0
    return BenchRun(results=results, summary=read_summary(summary_file), nonce=nonce, wall=wall)


def random_layer(cfg: AccelConfig, seed: int):
    """A quantised random-weight layer for `cfg` (a transformers block of its family when it has one)."""
    from moeforge.hls_models import QuantizedMoELayer, make_hf_block, make_hf_input
    if cfg.family == "custom":
        raise ConfigError("family", "unit simulations draw weights from a transformers block of the "
                          "config's family; 'custom' has none")
    block = make_hf_block(cfg, seed=seed)
    return QuantizedMoELayer.from_hf(block, cfg, calib=make_hf_input(cfg, 512, seed=seed + 7))


def requantiser_bench(dut, beats) -> dict:
    """The requantiser bench's data (sim/benches/requantiser.py) for `beats` (``[acc lanes,
    mult lanes, shift]`` each) through the `Requantiser` `dut`: the golden model's outputs
    (``hls_models.fixed_point.requantize``), and the unit's widths, latency, input layout and
    port names taken from the component itself."""
    from moeforge.hls_models.fixed_point import requantize
    from moeforge.rtl.export import verilog_ports
    from moeforge.sim.benches.common import stream_prefix
    ports = verilog_ports(dut)
    acc = torch.tensor([a for a, _, _ in beats], dtype=torch.int64)
    mult = torch.tensor([m for _, m, _ in beats], dtype=torch.int64)
    shift = torch.tensor([[s] for _, _, s in beats], dtype=torch.int64).expand_as(acc)
    return dict(beats=[[list(a), list(m), s] for a, m, s in beats],
                expected=requantize(acc, mult, shift, dut.out_bits).tolist(),
                in_width=dut.in_width, out_bits=dut.out_bits, lanes=dut.lanes,
                mult_bits=dut.mult_bits, shift_bits=dut.shift_bits, latency=dut.latency,
                in_layout=[dut.in_layout[f].offset for f in ("acc", "mult", "shift")],
                i_stream=stream_prefix(ports, "i_stream"), o_stream=stream_prefix(ports, "o_stream"))


def _requantiser_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """The down projection's requantisation of one expert: one beat per output channel and
    group of `lanes` tokens (a beat shares its channel's multiplier and shift)."""
    from moeforge.hls_models.expert_bank import int_gemm
    from moeforge.hls_models.hf_random import make_hf_input
    x = q.expert_input(q.quantize_input(make_hf_input(cfg, tokens, seed=seed))).to(torch.int64)
    e = int(torch.randint(cfg.n_experts, (1,), generator=torch.Generator().manual_seed(seed)))
    bank = q.experts
    acc = int_gemm(bank.hidden(e, x), bank.w_down[e])            # [T, D] int32 range
    lanes = dut.lanes
    pad = (-tokens) % lanes
    acc = torch.cat([acc, torch.zeros(pad, cfg.d_model, dtype=torch.int64)])
    beats = []
    for d in range(cfg.d_model):
        m, s = int(bank.down_mult[e, d]), int(bank.down_shift[e, d])
        for t0 in range(0, tokens + pad, lanes):
            beats.append([acc[t0:t0 + lanes, d].tolist(), [m] * lanes, s])
    return {**requantiser_bench(dut, beats), "macs": 0}


def _combiner_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """One batch: every routed expert's output (expert-major, as the device runs) and the
    shared expert's, gate-weighted; expected y = forward_int(x)."""
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.export import verilog_ports
    from moeforge.sim.benches.common import stream_prefix
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    x64 = q.expert_input(x).to(torch.int64)       # the experts' int8 (the router reads x)
    route = q.route_int(x)
    contribs = []
    for e in route.experts_run():
        tok, slot = torch.nonzero((route.indices == e) & route.kept, as_tuple=True)
        o = q.experts.forward(e, x64[tok])
        contribs += [[t, int(route.gates[t, slot[j]]), o[j].tolist()] for j, t in enumerate(tok.tolist())]
    if q.shared is not None:
        o = q.shared.forward(0, x64)
        contribs += [[t, int(route.shared_gate[t]), o[t].tolist()] for t in range(tokens)]
    ports = verilog_ports(dut)
    batch = dict(name="cli", n_tokens=tokens, mult=q.out_mult, shift=q.out_shift, contribs=contribs,
                 expected=q.forward_int(x).tolist())
    return {"d_model": dut.d_model, "lanes": dut.lanes, "t_max": dut.t_max,
            "flush_latency": dut.flush_latency, "i_contrib": stream_prefix(ports, "i_contrib"),
            "i_flush": stream_prefix(ports, "i_flush"), "o_y": stream_prefix(ports, "o_y"),
            "y_mult": ports["y_mult"].name, "y_shift": ports["y_shift"].name,
            "perturb": None, "batches": [batch], "expected": batch["expected"]}


def _router_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """Load the layer's router through the write port, route random tokens; expected route_int."""
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.export import verilog_ports
    from moeforge.rtl.routing.router import router_image
    from moeforge.sim.benches.common import stream_prefix
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    expected = q.route_int(x).beat_rows(keep=bool(dut.skip))
    ports = verilog_ports(dut)
    batch = dict(name="cli", image=router_image(q, lanes=dut.lanes), tokens=x.tolist(), expected=expected)
    return {"lanes": dut.lanes, "input_bits": dut.input_bits, "slices": dut.slices,
            "n_experts": dut.n_experts, "top_k": dut.top_k, "skip": bool(dut.skip),
            "cycles_per_token": dut.cycles_per_token(), "i_tokens": stream_prefix(ports, "i_tokens"),
            "o_route": stream_prefix(ports, "o_route"), "wr_addr": ports["wr.addr"].name,
            "wr_data": ports["wr.data"].name, "wr_en": ports["wr.en"].name, "wr_stall": 0.2,
            "batches": [batch], "expected": expected}


def _expert_ffn_harness(cfg):
    """The routed experts' engine on a weight memory holding every expert's image."""
    from amaranth.utils import ceil_log2

    from moeforge.rtl.expert.expert_ffn import ExpertFFN, ExpertImageLayout
    from moeforge.sim.weight_memory import WeightMemoryHarness
    words = ExpertImageLayout.from_config(cfg).words
    eng = ExpertFFN.from_config(cfg, w_addr_width=max(1, ceil_log2(cfg.n_experts * words)))
    return eng, WeightMemoryHarness(eng, depth=cfg.n_experts * words)


def _expert_ffn_stimulus(cfg, eng, q, tokens: int, seed: int, harness=None) -> dict:
    """One batch as the scheduler runs it: the golden router's experts in ascending order, each
    a job over the tokens that chose it, back to back; expected ``ExpertBank.forward``."""
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.expert.expert_ffn import expert_image
    from moeforge.rtl.export import verilog_ports
    x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    route = q.route_int(x)
    x = q.expert_input(x)                          # the experts' int8 (the router reads x_in)
    words, R, D = eng.image.words, eng.rows, cfg.d_model
    jobs = []
    for e in route.experts_run():
        tok = torch.nonzero(((route.indices == e) & route.kept).any(dim=1)).flatten()
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
    periods = s.get("periods") or []
    busy = sum(b for b, _ in periods)
    return {"mac_busy": busy, "mac_util_busy": round(busy / max(1, sum(t for _, t in periods)), 4)}


def _expert_ffn_outputs(stim: dict) -> tuple[int, int]:
    """Every job's ``o_y`` beats: R lanes, token and last each."""
    rows = [r for job in stim["jobs"] for r in job["expected"]]
    return len(rows), sum(len(r) for r in rows)


def _combiner_outputs(stim: dict) -> tuple[int, int]:
    """``o_y`` beats: ``d_model / lanes`` per token, each its lanes plus token and last."""
    beats = sum(len(b["expected"]) for b in stim["batches"]) * (stim["d_model"] // stim["lanes"])
    return beats, beats * (stim["lanes"] + 2)


def hidden_beats(dut, acc_g, acc_u) -> list[int]:
    """The hidden unit's ``i_acc`` payloads for gate/up accumulators ``[T, F']`` (any multiple of
    its lanes; `acc_g` None for ReLU), ``last`` on each token's final beat."""
    from moeforge.sim.stream import pack_layout
    L = dut.lanes
    T, F = acc_u.shape
    beats = []
    for t in range(T):
        for b in range(F // L):
            value = {"up": acc_u[t, b * L:(b + 1) * L].tolist(), "last": int(b == F // L - 1)}
            if dut.swiglu:
                value["gate"] = acc_g[t, b * L:(b + 1) * L].tolist()
            beats.append(pack_layout(dut.acc_layout, value))
    return beats


def _hidden_stimulus(cfg, dut, q, tokens: int, seed: int) -> dict:
    """One expert's gate/up accumulators of random tokens (exact GEMMs), its requantiser state
    loaded through the write port; expected ``ExpertBank.hidden``."""
    from moeforge.hls_models.expert_bank import int_gemm
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.rtl.export import verilog_ports
    from moeforge.rtl.expert.hidden import hidden_image
    from moeforge.sim.benches.common import stream_prefix
    x = q.expert_input(q.quantize_input(make_hf_input(cfg, tokens, seed=seed))).to(torch.int64)
    e = int(torch.randint(cfg.n_experts, (1,), generator=torch.Generator().manual_seed(seed)))
    bank = q.experts
    acc_u = int_gemm(x, bank.w_up[e])
    acc_g = int_gemm(x, bank.w_gate[e]) if dut.swiglu else None
    ports = verilog_ports(dut)
    batch = dict(name="cli", image=hidden_image(bank, e), beats=hidden_beats(dut, acc_g, acc_u),
                 expected=bank.hidden(e, x).tolist())
    return {"lanes": dut.lanes, "latency": dut.latency, "i_acc": stream_prefix(ports, "i_acc"),
            "o_h": stream_prefix(ports, "o_h"),
            "wr": {k: ports[f"wr.{k}"].name for k in ("addr", "data", "en")},
            "h_data_offset": dut.h_layout["data"].offset, "h_last_offset": dut.h_layout["last"].offset,
            "batches": [batch], "perturb": None, "expected": batch["expected"]}


BENCHES: dict[str, UnitBench] = {
    "requantiser": UnitBench("requantiser", "moeforge.sim.benches.requantiser", _requantiser_stimulus,
                             testcase="requantiser_bench"),
    "combiner": UnitBench("combiner", "moeforge.sim.benches.combiner", _combiner_stimulus,
                          testcase="combiner_batches", outputs=_combiner_outputs),
    "router": UnitBench("router", "moeforge.sim.benches.router", _router_stimulus, testcase="router_batches"),
    "hidden": UnitBench("hidden", "moeforge.sim.benches.hidden", _hidden_stimulus, testcase="hidden_random"),
    "expert_ffn": UnitBench("expert_ffn", "moeforge.sim.benches.expert_ffn", _expert_ffn_stimulus,
                            testcase="expert_ffn_jobs", harness=_expert_ffn_harness,
                            summarise=_expert_ffn_summary, outputs=_expert_ffn_outputs),
}


def check_run_options(*, tokens, seed, stall) -> None:
    """`ConfigError` unless `tokens` is a positive integer, `seed` an integer in [0, 2**32) and
    `stall` a probability in [0, 1): checked before anything is built."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise ConfigError("tokens", f"must be a positive number of tokens, not {tokens!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 1 << 32:
        raise ConfigError("seed", f"must be an integer in [0, 2**32), not {seed!r}")
    if not isinstance(stall, (int, float)) or isinstance(stall, bool) or not math.isfinite(stall) \
            or not 0 <= stall < 1:
        raise ConfigError("stall", f"must be a probability in [0, 1), not {stall!r}")


def run_unit(cfg: AccelConfig, unit: str, *, tokens: int, seed: int, waves: bool = False,
             stall: float = 0.3, perturb: bool = False, workdir: str | Path | None = None) -> dict:
    """Build (cached) and run `unit`'s bench; returns the summary (see the command line).

    ``passed`` is `scoreboard.verdict`'s: this run's bench summary compared every expected
    output and none differed. ``compared`` / ``expected`` are ``{tokens, elements}`` (tokens as
    the unit's scoreboard counts them), ``problems`` says why a run did not pass. The
    temporary folder is removed unless `waves` (then ``workdir`` is its path).
    """
    from moeforge.rtl.export import to_verilog
    from moeforge.rtl.units import elaborate
    from moeforge.sim.build import build_cached
    from moeforge.sim.scoreboard import verdict

    if unit not in BENCHES:
        raise ConfigError("unit", f"has no cosimulation bench: {unit!r}; benches: {', '.join(BENCHES)}")
    check_run_options(tokens=tokens, seed=seed, stall=stall)
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
    n_tokens, n_elements = bench.outputs(stim)
    handle = build_cached(to_verilog(top, unit), unit, waves=waves)
    with run_folder(workdir, f"moeforge-sim-{unit}-", keep=waves) as tmp:
        run = run_bench(handle, bench.module, stim, tmp, seed=seed, testcase=bench.testcase)
    results, s = run.results, run.summary
    failure = "; ".join(f.message for f in results.failures)
    v = verdict(s, nonce=run.nonce, tokens=n_tokens, elements=n_elements, sim_ok=results.ok,
                failure=failure)
    ours = v.compared is not None            # the summary is this run's: its numbers may be shown
    cycles = s.get("cycles") if ours else None
    cycles = int(s["sim_cycles"]) if ours and cycles is None and s.get("sim_cycles") else cycles
    wall_s = s.get("wall_s") if ours else None
    out = {"unit": unit, "config": cfg.name, "tokens": tokens, "seed": seed, "passed": v.passed,
           "compared": v.compared, "expected": v.expected, "mismatches": v.mismatches,
           "cycles": cycles,
           "sim_cycles_per_s": round(cycles / wall_s, 1) if cycles and wall_s else None,
           "wall_s": round(run.wall, 2),
           "build_cached": handle.cached, "build_seconds": round(handle.seconds, 2)}
    if ours and bench.summarise is not None:
        s = {**s, **bench.summarise(s, stim)}
    macs = stim.get("macs", 0)
    if macs and ours and cycles:
        out["mac_util"] = round(s.get("mac_busy", 0) / max(1, cycles), 4)
        if "mac_util_busy" in s:     # over the engine's busy periods (from the first job's acceptance)
            out["mac_util_busy"] = s["mac_util_busy"]
    if not v.passed:
        out["problems"] = list(v.problems)
    if failure or (ours and s.get("failure")):
        out["failure"] = (failure or s["failure"])[:2000]
    if waves and results.waves_path:
        out["waves"] = str(results.waves_path)
    if waves or workdir is not None:
        out["workdir"] = str(tmp)
    return out
