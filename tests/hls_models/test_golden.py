"""Golden-model invariants: dtypes, determinism, batch independence, saturation, ties, errors."""

import ast
from pathlib import Path

import pytest
import torch

from moeforge import ShapeError, WeightsError
from moeforge.hls_models import QuantizedMoELayer, family_configs, make_hf_block, make_hf_input
from moeforge.hls_models.expert_bank import int_gemm

FAMILIES = family_configs()
# each family with its example config's input (int16, smoothed), with the int8-only one, with
# expert skipping (every family with top_k > 1; 0.2 skips some experts in each) and with int4
# expert weights
MODES = {"in16": {}, "in8": dict(input_bits=8, input_smoothing=0.0), "skip": dict(skip_threshold=0.2),
         "w4": dict(weight_bits=4)}
VARIANTS = [f"{f}-{i}" for f in sorted(FAMILIES) for i in MODES
            if i != "skip" or FAMILIES[f].top_k > 1]


@pytest.fixture(scope="module", params=VARIANTS)
def layer(request):
    family, inp = request.param.rsplit("-", 1)
    cfg = FAMILIES[family].replace(**MODES[inp])
    block = make_hf_block(cfg, seed=3)
    return QuantizedMoELayer.from_hf(block, cfg, calib=make_hf_input(cfg, 256, seed=4))


def _tokens(layer, n, seed=0):
    return layer.quantize_input(make_hf_input(layer.cfg, n, seed=seed))


def _bounds(layer):
    """The device token's extremes: ±127/-128, or ±32767/-32768 with the 16-bit input."""
    info = torch.iinfo(layer.input_dtype)
    return info.max, info.min


def test_integer_dtypes_and_shape(layer):
    x = _tokens(layer, 17)
    assert x.dtype == (torch.int16 if layer.cfg.input_bits == 16 else torch.int8)
    y = layer.forward_int(x)
    assert y.dtype == torch.int8 and y.shape == x.shape
    r = layer.route_int(x)
    assert r.indices.dtype == torch.int64 and r.indices.shape == (17, layer.cfg.top_k)
    assert r.gates.dtype == torch.int64 and (r.gates >= 0).all()
    tensors = layer.tensors()
    smooth = tensors.pop("input.smooth")        # the host's smoothing, never sent to the device
    assert smooth.dtype == torch.float32 and (smooth > 0).all()
    for t in tensors.values():
        assert not torch.is_floating_point(t)
    lo, hi = -(1 << (layer.cfg.weight_bits - 1)), (1 << (layer.cfg.weight_bits - 1)) - 1
    for bank in filter(None, (layer.experts, layer.shared)):
        for w in filter(lambda t: t is not None, (bank.w_up, bank.w_gate, bank.w_down)):
            assert w.dtype == torch.int8 and lo <= int(w.min()) and int(w.max()) <= hi
            assert int(w.min()) == lo or int(w.max()) == hi       # the range is used


def test_deterministic(layer):
    x = _tokens(layer, 33)
    assert torch.equal(layer.forward_int(x), layer.forward_int(x.clone()))


def test_batch_independence(layer):
    """A token's output does not depend on the other tokens of its batch."""
    x = _tokens(layer, 24, seed=5)
    y = layer.forward_int(x)
    for i in (0, 7, 23):
        assert torch.equal(layer.forward_int(x[i:i + 1])[0], y[i])
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer.forward_int(x[perm]), y[perm])
    assert torch.equal(layer.forward_int(torch.cat([x, _tokens(layer, 9, seed=6)]))[:24], y)


def test_saturating_inputs_stay_in_range(layer):
    D = layer.cfg.d_model
    for v in _bounds(layer):
        x = torch.full((3, D), v, dtype=layer.input_dtype)
        y = layer.forward_int(x)
        assert y.dtype == torch.int8
        assert torch.equal(y[0], y[1])


def test_output_saturates_instead_of_wrapping(layer):
    x = _tokens(layer, 16, seed=8)
    y = layer.forward_int(x).to(torch.int64)
    big = QuantizedMoELayer.__new__(QuantizedMoELayer)  # a copy with a huge output gain
    big.__dict__.update(layer.__dict__)
    big.out_shift = layer.out_shift - 12  # 4096x gain: nearly every output saturates
    yb = big.forward_int(x).to(torch.int64)
    assert yb.max().item() == 127 and yb.min().item() == -128
    nz = y != 0
    assert torch.equal(torch.sign(yb[nz]), torch.sign(y[nz]))  # saturated, never wrapped


def test_tie_goes_to_lower_expert_index(layer):
    cfg = layer.cfg
    tied = QuantizedMoELayer.__new__(QuantizedMoELayer)
    tied.__dict__.update(layer.__dict__)
    w = torch.zeros_like(layer.router_weight)
    tied.router_weight = w
    if tied.selection_bias is not None:
        tied.selection_bias = torch.zeros_like(tied.selection_bias)
    r = tied.route_int(_tokens(layer, 5))
    # every logit equal: the lowest k indices (of the lowest groups) win, best first
    assert r.indices.tolist() == [list(range(cfg.top_k))] * 5
    # two equal best rows: the lower index comes first
    w2 = torch.zeros_like(layer.router_weight)
    a, b = cfg.n_experts - 1, cfg.n_experts - 2  # same group (the last one)
    w2[a] = w2[b] = 1000
    tied.router_weight = w2
    x = torch.full((2, cfg.d_model), 5, dtype=layer.input_dtype)
    assert tied.route_int(x).indices[:, :2].tolist() == [[b, a][:cfg.top_k]] * 2


def test_gates_sum_to_one_when_renormalised(layer):
    cfg = layer.cfg
    r = layer.route_int(_tokens(layer, 64, seed=9))
    if cfg.renormalize or cfg.routing == "topk_softmax":
        expected = round(cfg.routed_scaling_factor * 32768)
        assert ((r.gates.sum(dim=1) - expected).abs() <= cfg.top_k * 2).all()
    else:
        assert (r.gates.sum(dim=1) <= round(cfg.routed_scaling_factor * 32768) + cfg.top_k).all()


def _same_layer(layer, **cfg_changes):
    """`layer` with other routing fields (the same tensors)."""
    other = QuantizedMoELayer.__new__(QuantizedMoELayer)
    other.__dict__.update(layer.__dict__)
    other.cfg = layer.cfg.replace(**cfg_changes)
    return other


def test_skipping_keeps_what_the_threshold_says(layer):
    """docs/arithmetic.md §3.7: the same top-k; the first choice always kept, a later one iff
    its gate before routed scaling reaches τ_q; skipped gates 0; unnormalised families keep
    their gates, normalising ones renormalise over the kept; only kept experts run."""
    cfg = layer.cfg
    x = _tokens(layer, 200, seed=12)
    r = layer.route_int(x)
    full = _same_layer(layer, skip_threshold=0.0).route_int(x)
    if not cfg.skip_threshold:
        assert r.kept.all() and torch.equal(r.gates, full.gates)
        return
    assert torch.equal(r.indices, full.indices)
    plain = _same_layer(layer, skip_threshold=0.0, routed_scaling_factor=1.0).route_int(x).gates
    tau = round(cfg.skip_threshold * 32768)
    want = plain >= tau
    want[:, 0] = True
    assert torch.equal(r.kept, want)
    assert (~r.kept).any() and r.kept[:, 1:].any()          # both outcomes occur
    assert (r.gates[~r.kept] == 0).all()
    if cfg.routing == "topk_softmax" or cfg.renormalize:
        whole = r.kept.all(dim=1)                             # nothing skipped: nothing changes
        assert torch.equal(r.gates[whole], full.gates[whole])
        assert (r.gates[~whole][:, 0] > full.gates[~whole][:, 0]).all()
    else:
        assert torch.equal(r.gates[r.kept], full.gates[r.kept])
    assert r.expert_counts(cfg.n_experts) == \
        torch.bincount(r.indices[want], minlength=cfg.n_experts).tolist()
    assert set(r.experts_run()) <= set(r.indices.unique().tolist())


def test_partials_over_an_expert_partition_sum_to_the_accumulator(layer):
    """Expert parallelism: the accumulators of disjoint expert sets (the shared expert in one of
    them) add up to the whole one, which requantises to forward_int; forward_int is exactly that."""
    import random

    from moeforge.hls_models.fixed_point import requantize
    x = _tokens(layer, 29, seed=11)
    full = layer.partial_int(x)
    assert full.dtype == torch.int64 and full.shape == x.shape
    y = requantize(full, layer.out_mult, layer.out_shift, 8).to(torch.int8)
    assert torch.equal(y, layer.forward_int(x))
    E = layer.cfg.n_experts
    rng = random.Random(E)
    for parts in (2, 3):
        owner = [rng.randrange(parts) for _ in range(E)]
        shared_part = rng.randrange(parts)
        sums = sum(layer.partial_int(x, experts=[e for e in range(E) if owner[e] == p],
                                     shared=p == shared_part) for p in range(parts))
        assert torch.equal(sums, full)
        assert torch.equal(requantize(sums, layer.out_mult, layer.out_shift, 8).to(torch.int8),
                           layer.forward_int(x))
    assert torch.equal(layer.partial_int(x, experts=range(E)), full)
    assert not layer.partial_int(x, experts=[], shared=False).any()
    if layer.shared is None:        # without a shared expert `shared` changes nothing
        assert torch.equal(layer.partial_int(x, shared=False), full)
    else:
        assert not torch.equal(layer.partial_int(x, shared=False), full)
    with pytest.raises(ValueError, match=f"not \\[{E}\\]"):
        layer.partial_int(x, experts=[0, E])


def test_bad_inputs_are_shape_errors(layer):
    D = layer.cfg.d_model
    dtype = layer.input_dtype
    other = torch.int8 if dtype == torch.int16 else torch.int16
    with pytest.raises(ShapeError, match=f"takes {dtype} tokens"):
        layer.forward_int(torch.zeros(2, D))
    with pytest.raises(ShapeError, match=f"takes {dtype} tokens .*not {other}"):
        layer.forward_int(torch.zeros(2, D, dtype=other))
    with pytest.raises(ShapeError, match=r"\[tokens, d_model="):
        layer.forward_int(torch.zeros(2, D + 1, dtype=dtype))
    with pytest.raises(ShapeError, match="float"):
        layer(torch.zeros(2, D, dtype=dtype))
    with pytest.raises(ShapeError, match="d_model"):
        layer(torch.zeros(2, D - 1))


def test_float_call_accepts_leading_dims(layer):
    x = make_hf_input(layer.cfg, 12, seed=2)
    y = layer(x.reshape(3, 4, -1))
    assert y.shape == (3, 4, layer.cfg.d_model) and y.dtype == torch.float32
    assert torch.equal(y.reshape(12, -1), layer(x))


def test_weight_image_round_trip(layer, tmp_path):
    p = tmp_path / "layer.safetensors"
    layer.save(p)
    back = QuantizedMoELayer.load(p, layer.cfg)
    x = _tokens(layer, 20)
    assert torch.equal(back.forward_int(x), layer.forward_int(x))
    assert back.x_scale == layer.x_scale and back.y_scale == layer.y_scale


def test_unsupported_block_and_shape_mismatch():
    cfg = FAMILIES["mixtral"]
    calib = make_hf_input(cfg, 8, seed=0)
    with pytest.raises(WeightsError, match="not a supported MoE block"):
        QuantizedMoELayer.from_hf(torch.nn.Linear(cfg.d_model, cfg.d_model), cfg, calib=calib)
    block = make_hf_block(cfg, seed=0)
    with pytest.raises(ShapeError):
        QuantizedMoELayer.from_hf(block, cfg.replace(d_ff=cfg.d_ff * 2), calib=calib)
    with pytest.raises(ShapeError, match="calib"):
        QuantizedMoELayer.from_hf(block, cfg, calib=torch.zeros(4, cfg.d_model + 1))


def test_weight_image_refuses_other_config_and_damage(tmp_path):
    cfg = FAMILIES["qwen2_moe"]
    q = QuantizedMoELayer.from_hf(make_hf_block(cfg, seed=1), cfg, calib=make_hf_input(cfg, 64, seed=1))
    p = tmp_path / "q.safetensors"
    q.save(p)
    good = p.read_bytes()
    with pytest.raises(WeightsError, match="quantised for config"):
        QuantizedMoELayer.load(p, cfg.replace(mac_rows=4))
    with pytest.raises(WeightsError, match="no such weight file"):
        QuantizedMoELayer.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        QuantizedMoELayer.load(tmp_path / "junk.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError):
        QuantizedMoELayer.load(tmp_path / "cut.safetensors")
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a moeforge layer image"):
        QuantizedMoELayer.load(tmp_path / "other.safetensors")
    assert p.read_bytes() == good  # failed loads never touch the file


# --- the package's structure ------------------------------------------------------------

HLS = Path(__file__).resolve().parents[2] / "hls_models"


def _project_imports(path: Path):
    """(module, names, top_level) of every import of a moeforge module in one hls_models file."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                mod = "moeforge.hls_models" + (f".{node.module}" if node.module else "")
            elif node.level == 0 and (node.module or "").startswith("moeforge"):
                mod = node.module
            else:
                continue
            yield mod, [a.name for a in node.names], id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("moeforge"):
                    yield a.name, [], id(node) in top


def test_hls_models_imports_point_one_way():
    """No cycle among hls_models' modules, every project import at module level (none hidden in a
    function to dodge a cycle), and no private name taken from another module."""
    graph = {}
    for path in sorted(HLS.glob("*.py")):
        me = "moeforge.hls_models" + ("" if path.stem == "__init__" else f".{path.stem}")
        deps = graph.setdefault(me, set())
        for mod, names, top_level in _project_imports(path):
            assert top_level, f"{path.name} imports {mod} inside a function"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.name} takes the private {private} from {mod}"
            if mod.startswith("moeforge.hls_models.") and path.stem != "__init__":
                deps.add(mod)
    state = {}

    def visit(m, trail):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(trail + [m])}"
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            visit(d, trail + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


def test_int_gemm_is_exact_integer_matmul():
    """`int_gemm`, the public GEMM the unit checks share with the golden model, is x @ w.T exactly."""
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-128, 128, (7, 300), generator=g)
    w = torch.randint(-128, 128, (9, 300), generator=g)
    assert torch.equal(int_gemm(x, w), x @ w.T)
    assert int_gemm(x, w).dtype == torch.int64
