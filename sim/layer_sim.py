"""The whole layer in Verilator against the golden model: `moeforge sim` without ``--unit``.

`run_layer` quantises a random-weight layer of the config's family, loads it into
`AcceleratorWithMemory` through the command protocol, streams ``tokens`` random tokens through
it in batches of up to ``token_buffer_depth`` (write tokens, run, read outputs, read counters),
and compares every output with ``QuantizedMoELayer.forward_int`` bit for bit. It also replays
the batches' expert sequence through `ExpertCacheModel` and checks the RTL's hit and miss
counters against it, and puts each batch's cycles next to its roofline `BatchBound`.

Everything reaches the device as command packets, one byte a cycle, as a host would send them.
The verdict is `scoreboard.verdict`'s: the bench's summary for this run (its nonce) must say
that every token sent was compared, element by element, and that none differed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import torch

from moeforge.config import AccelConfig
from moeforge.errors import ConfigError
from moeforge.outputs import atomic_write, check_output

__all__ = ["run_layer", "run_steps", "BatchBound", "batch_bound", "layer_program", "layer_verilog",
           "LAYER_BENCH", "rtl_source_hash"]

# The cocotb module of the whole layer.
LAYER_BENCH = "moeforge.sim.benches.layer"


@dataclass(frozen=True)
class BatchBound:
    """The roofline of one batch, in cycles: ``max(compute, fetch) + router + combiner``."""

    compute: int        # routed MAC ops / (R·C) per cycle (or the shared engine's, if larger)
    fetch: int          # missed bytes / backing-memory bytes per cycle
    router: int         # T · the router's cycles per token
    combiner: int       # the combiner's flush: T · D/L beats (L its lanes) + its latency

    @property
    def total(self) -> int:
        return max(self.compute, self.fetch) + self.router + self.combiner


def batch_bound(top, counts, misses: int, n_tokens: int) -> BatchBound:
    """`BatchBound` of a batch whose experts got `counts` tokens and whose cache missed `misses`
    times, on `top` (an `AcceleratorWithMemory`)."""
    core, cfg = top.accel.core, top.cfg
    routed = core.mac_ops([c for c in counts if c])
    shared = core.shared.busy(n_tokens) if core.shared is not None else 0
    fetch_bytes = misses * core.image_words * cfg.mac_cols
    fetch = int(-(-Fraction(fetch_bytes) // top.memory.bytes_per_cycle)) if fetch_bytes else 0
    return BatchBound(compute=max(routed, shared), fetch=fetch,
                      router=n_tokens * core.router.cycles_per_token(),
                      combiner=n_tokens * core.combiner.beats_per_token + core.combiner.flush_latency)


# The modules of `moeforge.sim` that describe hardware (the simulation models and the tops on
# them); the rest of the package (benches, drivers, builds) does not change any Verilog.
SIM_HARDWARE_MODULES = ("backing_memory.py", "tops.py", "weight_memory.py")


def rtl_source_hash() -> str:
    """Hash of the Python sources the RTL is generated from (for the Verilog cache): every module
    of the packages the RTL, its tables and the config come from, and the simulation models of
    `SIM_HARDWARE_MODULES`, wherever they are installed."""
    import amaranth

    import moeforge
    import moeforge.hls_models
    import moeforge.rtl
    h = hashlib.sha256()
    for pkg in (moeforge.rtl, moeforge.hls_models, moeforge):
        folder = Path(pkg.__file__).resolve().parent
        for p in sorted(folder.rglob("*.py")):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    here = Path(__file__).resolve().parent
    for name in SIM_HARDWARE_MODULES:
        h.update(f"sim/{name}".encode())
        h.update((here / name).read_bytes())
    h.update(amaranth.__version__.encode())
    return h.hexdigest()


def layer_verilog(top, key: str) -> str:
    """The Verilog of `top`, cached on disk under `key` + the RTL sources' hash (converting a
    whole layer to Verilog takes tens of seconds).

    A cache hit still elaborates `top` (``Fragment.get``, well under a second even for the
    largest example layers): that runs the checks inside its units' ``elaborate`` and marks
    every unit as used, so Amaranth has no unused design to warn about when `top` is collected.
    """
    from amaranth.hdl import Fragment

    from moeforge.rtl.export import to_verilog
    from moeforge.sim.build import cache_root
    digest = hashlib.sha256(f"{key}|{rtl_source_hash()}".encode()).hexdigest()[:24]
    path = cache_root() / "verilog" / f"layer-{digest}.v"
    if path.exists():
        Fragment.get(top, None)
        return path.read_text()
    text = to_verilog(top, "layer")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)          # atomic: parallel workers never read half a file
    return text


def _hex(packet: bytes) -> str:
    return packet.hex()


def layer_program(cfg: AccelConfig, q, x: torch.Tensor):
    """``(steps, batches)`` for the bench: load the layer, then per batch write its tokens, run,
    read the outputs (expected: ``forward_int``), read the counters."""
    from moeforge.spec.protocol import Op, encode, layer_commands
    steps = [dict(name=f"load 0x{packet[0]:02x}", packet=_hex(packet), status=0,
                  max_cycles=40 * len(packet) + 2000) for packet in layer_commands(q, cfg)]
    batches = []
    T_max = cfg.token_buffer_depth
    for b0 in range(0, x.shape[0], T_max):
        xb = x[b0:b0 + T_max]
        n = xb.shape[0]
        batches.append(dict(first=b0, n=n, run_step=len(steps) + 1, counters_step=len(steps) + 3))
        steps.append(dict(name=f"batch {len(batches) - 1}: tokens", status=0, max_cycles=160 * n * cfg.d_model + 2000,
                          packet=_hex(encode(Op.WRITE_TOKENS, 0, xb.tolist(), x.element_size()))))
        steps.append(dict(name=f"batch {len(batches) - 1}: run", status=0, max_cycles=5_000_000,
                          packet=_hex(encode(Op.RUN, n))))
        steps.append(dict(name=f"batch {len(batches) - 1}: outputs", status=0,
                          max_cycles=80 * n * cfg.d_model + 2000,
                          packet=_hex(encode(Op.READ_OUTPUT, 0, n)),
                          expected=q.forward_int(xb).tolist()))
        steps.append(dict(name=f"batch {len(batches) - 1}: counters", status=0, max_cycles=2000,
                          packet=_hex(encode(Op.READ_COUNTERS))))
    return steps, batches


def _expert_sequences(q, x, t_max: int) -> list[tuple[list[int], list[int]]]:
    """Per batch: (experts in the scheduler's order — ascending, chosen by some token — and the
    token count of every expert)."""
    out = []
    for b0 in range(0, x.shape[0], t_max):
        idx = q.route_int(x[b0:b0 + t_max]).indices
        counts = torch.bincount(idx.flatten(), minlength=q.cfg.n_experts).tolist()
        out.append(([e for e, c in enumerate(counts) if c], counts))
    return out


def run_layer(cfg: AccelConfig, *, tokens: int, seed: int, latency: int | None = None,
              bytes_per_cycle=None, stall: float = 0.3, waves: bool = False,
              workdir: str | Path | None = None, perturb: bool = False,
              q=None, x: torch.Tensor | None = None, trace: str | Path | None = None) -> dict:
    """Build (cached) and run the whole layer; returns the summary of the command line.

    ``passed`` holds only if this run's bench summary compared all `tokens` (every element)
    and none differed; ``compared`` / ``expected`` are ``{tokens, elements}`` and ``problems``
    says why a run did not pass. `trace` is checked before anything is built and written
    atomically. The temporary folder is removed on every path unless `waves` (then
    ``workdir`` is its path).
    """
    from moeforge.hls_models.expert_cache import ExpertCacheModel
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.sim.tops import DEFAULT_LATENCY, AcceleratorWithMemory
    from moeforge.sim.unit_sim import check_run_options, random_layer, run_bench, run_folder

    check_run_options(tokens=tokens, seed=seed, stall=stall)
    if trace is not None:
        check_output(trace, "trace")
    latency = DEFAULT_LATENCY if latency is None else latency
    bpc = Fraction(cfg.mac_cols if bytes_per_cycle is None else bytes_per_cycle)
    try:
        top = AcceleratorWithMemory(cfg, latency=latency, bytes_per_cycle=bpc)
    except (ValueError, TypeError) as exc:
        raise ConfigError("config", f"the accelerator cannot be built for {cfg.name}: {exc}") from None
    q = random_layer(cfg, seed) if q is None else q
    if x is None:
        x = q.quantize_input(make_hf_input(cfg, tokens, seed=seed))
    steps, batches = layer_program(cfg, q, x)
    seqs = _expert_sequences(q, x, cfg.token_buffer_depth)

    # the cache model's prediction and each batch's roofline
    model = ExpertCacheModel.from_config(cfg)
    for bi, (b, (order, counts)) in enumerate(zip(batches, seqs, strict=True)):
        model.hits = model.misses = 0
        acc = model.run(order)
        b.update(experts=order, model_hits=sum(a.hit for a in acc),
                 model_misses=sum(not a.hit for a in acc),
                 model_trace=[[a.expert, int(a.hit), a.slot] for a in acc])
        bound = batch_bound(top, counts, b["model_misses"], b["n"])
        b["bound"] = asdict(bound) | {"total": bound.total}
        steps[b["run_step"]]["max_cycles"] = 30 * bound.total + 50_000
    if perturb:         # prove the check can fail: one expected output off by one
        out_step = steps[batches[0]["run_step"] + 1]
        v = out_step["expected"][0][0]
        out_step["expected"][0][0] = v + 1 if v < 127 else v - 1
    sent = sum(len(st["expected"]) for st in steps if st.get("expected") is not None)

    handle, bench = _layer_build(top, steps, stall=stall, waves=waves)
    with run_folder(workdir, "moeforge-sim-layer-", keep=waves) as tmp:
        run = run_bench(handle, LAYER_BENCH, bench, tmp, seed=seed)
        out = {"config": cfg.name, "tokens": tokens, "seed": seed}
        out.update(_layer_result(cfg, run, batches, sent, trace=trace))
        out.update(wall_s=round(run.wall, 2), build_cached=handle.cached,
                   build_seconds=round(handle.seconds, 2),
                   memory=dict(latency=latency, bytes_per_cycle=str(bpc)))
        if waves and run.results.waves_path:
            out["waves"] = str(run.results.waves_path)
        if waves or workdir is not None:
            out["workdir"] = str(tmp)
    return out


def _layer_result(cfg, run, batches, sent: int, *, trace) -> dict:
    """The summary of a whole-layer run (the verdict, cycles, cache counters per batch);
    writes `trace`."""
    from moeforge.sim.scoreboard import verdict
    from moeforge.spec.protocol import COUNTERS
    results, s = run.results, run.summary
    failure = "; ".join(f.message for f in results.failures)
    v = verdict(s, nonce=run.nonce, tokens=sent, elements=sent * cfg.d_model, sim_ok=results.ok,
                failure=failure)
    ours = v.compared is not None          # the summary is this run's: its numbers may be shown
    responses = s.get("responses", []) if ours else []

    per_batch = []
    for b in batches:
        row = dict(tokens=b["n"], experts=len(b["experts"]), bound=b["bound"],
                   model_hits=b["model_hits"], model_misses=b["model_misses"])
        if len(responses) > b["counters_step"]:
            c = bytes.fromhex(responses[b["counters_step"]])[1:]
            counters = {n: int.from_bytes(c[4 * i:4 * i + 4], "little") for i, n in enumerate(COUNTERS)}
            row.update(counters)
            row["ratio"] = round(counters["cycles"] / b["bound"]["total"], 3)
        per_batch.append(row)
    done = [r for r in per_batch if "cycles" in r]
    total = lambda k: sum(r[k] for r in done)   # noqa: E731
    out = {"batches": len(batches), "passed": v.passed, "compared": v.compared,
           "expected": v.expected, "mismatches": v.mismatches}
    if done:
        cycles = total("cycles")
        bound = sum(r["bound"]["total"] for r in done)
        out.update(cycles=cycles, cycles_bound=bound, cycles_over_bound=round(cycles / bound, 3),
                   hits=total("hits"), misses=total("misses"),
                   bytes_fetched=total("words_fetched") * cfg.mac_cols,
                   stall_cycles=total("stall_cycles"), prefetch_hits=total("prefetch_hits"),
                   mac_util=round(total("mac_busy") / max(1, cycles), 4),
                   cache_model_match=all(r["hits"] == r["model_hits"] and r["misses"] == r["model_misses"]
                                         for r in done))
    if ours and s.get("sim_cycles") and s.get("wall_s"):
        out["sim_cycles_per_s"] = round(s["sim_cycles"] / s["wall_s"], 1)
    out["per_batch"] = per_batch
    if not v.passed:
        out["problems"] = list(v.problems)
    if failure or (ours and s.get("failure")):
        out["failure"] = (failure or s["failure"])[:2000]
    if trace is not None:
        rows = [dict(batch=i, experts=b["experts"], model=b["model_trace"], rtl=per_batch[i])
                for i, b in enumerate(batches)]
        atomic_write(trace, lambda tmp_path: tmp_path.write_text(json.dumps(rows, indent=1)))
    return out


def _layer_build(top, steps, *, stall: float, waves: bool):
    """Build (cached) `top`; returns ``(build handle, the bench data for `steps`)``."""
    from moeforge.rtl.export import verilog_ports
    from moeforge.sim.build import build_cached
    cfg = top.cfg
    ports = verilog_ports(top)
    prefix = lambda s: ports[f"{s}.valid"].name.removesuffix("__valid")   # noqa: E731
    bench = dict(i_cmd=prefix("i_cmd"), o_rsp=prefix("o_rsp"),
                 steps=steps, in_stall=stall, out_stall=stall, d_model=cfg.d_model)
    key = f"{cfg.content_hash()}|{top.memory.latency}|{top.memory.bytes_per_cycle}"
    verilog = layer_verilog(top, key)
    return build_cached(verilog, "layer", waves=waves), bench


def run_steps(top, steps, *, seed: int, stall: float = 0.3, waves: bool = False,
              workdir: str | Path | None = None):
    """Run command `steps` (see `sim.benches.layer`) on `top` (an `AcceleratorWithMemory`).

    Returns ``(results, summary, build handle, wall s, workdir)``: ``summary`` is the bench's
    for this run (its nonce checked), ``{}`` if it wrote none; ``workdir`` is ``None`` when the
    run used a temporary folder (removed unless `waves`).
    """
    from moeforge.sim.unit_sim import run_bench, run_folder
    handle, bench = _layer_build(top, steps, stall=stall, waves=waves)
    with run_folder(workdir, "moeforge-sim-layer-", keep=waves) as tmp:
        run = run_bench(handle, LAYER_BENCH, bench, tmp, seed=seed)
    summary = run.summary if isinstance(run.summary, dict) and run.summary.get("nonce") == run.nonce else {}
    return run.results, summary, handle, run.wall, (tmp if waves or workdir is not None else None)
