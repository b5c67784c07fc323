"""Expert parallelism on the whole layer (`AcceleratorWithMemory`) in Verilator: ``SET_EXPERT_MASK``
and ``READ_PARTIAL`` against `QuantizedMoELayer.partial_int`, bit-exact.

One command program per config: partials before any batch (0), every expert (partial_int and
forward_int), a random mask and its complement (each partial == partial_int of its experts, each
output == rq_8 of it, the two summed and requantised == forward_int), nothing enabled, failed
mask and read commands (the mask in force and the device unchanged), then all enabled again on a
smaller batch (its output == forward_int; the previous batch's extra tokens read 0).
"""

import random

import pytest
import torch

from moeforge import AccelConfig
from moeforge.hls_models.fixed_point import requantize
from moeforge.sim.layer_sim import layer_program, run_steps
from moeforge.spec.protocol import COUNTERS, CommandLayout, Op, Status, encode

pytestmark = pytest.mark.verilator

# tiny: no shared expert; deepseek_v3: the smallest shared expert of the example configs (a
# cold build and run of about 3.5 min: `make test-slow`)
CONFIGS = ["configs/tiny.toml", pytest.param("configs/deepseek_v3.toml", marks=pytest.mark.slow)]


def _step(name, packet, status=Status.OK, *, max_cycles=200_000, **kw):
    return dict(name=name, packet=packet.hex(), status=status, max_cycles=max_cycles, **kw)


def _y(acc, q):
    return requantize(acc, q.out_mult, q.out_shift, 8).to(torch.int8)


@pytest.mark.parametrize("path", CONFIGS)
def test_expert_mask_partials_bit_exact(path, tmp_path):
    from moeforge.hls_models.hf_random import make_hf_input
    from moeforge.sim.tops import AcceleratorWithMemory
    from moeforge.sim.unit_sim import random_layer

    cfg = AccelConfig.from_toml(path)
    lay = CommandLayout.from_config(cfg)
    E, T_max, D = cfg.n_experts, cfg.token_buffer_depth, cfg.d_model
    has_shared = bool(cfg.shared_d_ff)
    seed = 7
    q = random_layer(cfg, seed)
    n, n2 = min(12, T_max), 5
    x = q.quantize_input(make_hf_input(cfg, n, seed=seed))
    load, batches = layer_program(cfg, q, x)
    steps = load[:batches[0]["run_step"] - 1]

    # a random mask that keeps some chosen experts and drops others, and its complement
    rng = random.Random(seed)
    chosen = sorted(set(q.route_int(x).indices.flatten().tolist()))
    assert len(chosen) >= 2
    while True:
        part_a = sorted(e for e in range(E) if rng.random() < 0.5)
        if any(e in part_a for e in chosen) and not set(chosen) <= set(part_a):
            break
    part_b = sorted(set(range(E)) - set(part_a))
    shared_a = rng.random() < 0.5

    checks = []          # (step index, kind, expected) checked after the run

    def add(name, packet, status=Status.OK, check=None, **kw):
        steps.append(_step(name, packet, status, **kw))
        if check is not None:
            checks.append((len(steps) - 1, name, *check))

    def mask(experts, shared):
        return encode(Op.SET_EXPERT_MASK, lay.expert_mask(experts, shared), lay.mask_bytes)

    def run(tokens):
        add(f"run {tokens}", encode(Op.RUN, tokens), max_cycles=5_000_000)

    def read_partial(name, first, count, expected):
        add(name, encode(Op.READ_PARTIAL, first, count), check=("partial", expected))

    def read_output(name, first, count, expected):
        add(name, encode(Op.READ_OUTPUT, first, count), check=("output", expected))

    zeros = torch.zeros(T_max, D, dtype=torch.int64)
    full = q.partial_int(x)
    add("tokens", encode(Op.WRITE_TOKENS, 0, x.tolist(), x.element_size()))
    read_partial("partials before any batch", 0, T_max, zeros)
    # every expert (the reset mask)
    run(n)
    read_partial("all: partials", 0, n, full)
    read_output("all: outputs", 0, n, q.forward_int(x))
    read_partial("all: partials again, a slice", 1, 3, full[1:4])
    read_output("all: outputs again", 0, n, q.forward_int(x))
    # mask A, then its complement B
    acc = {}
    for tag, experts, shared in (("A", part_a, shared_a), ("B", part_b, not shared_a)):
        acc[tag] = q.partial_int(x, experts=experts, shared=shared)
        add(f"mask {tag}", mask(experts, shared))
        run(n)
        read_output(f"mask {tag}: outputs", 0, n, _y(acc[tag], q))
        read_partial(f"mask {tag}: partials", 0, n, acc[tag])
        add(f"mask {tag}: counters", encode(Op.READ_COUNTERS),
            check=("counters", (experts, shared)))
    assert torch.equal(acc["A"] + acc["B"], full)
    assert torch.equal(_y(acc["A"] + acc["B"], q), q.forward_int(x))
    # nothing enabled: the batch still ends, everything reads 0
    add("mask none", mask([], False))
    run(n)
    read_output("none: outputs", 0, n, torch.zeros(n, D, dtype=torch.int8))
    read_partial("none: partials", 0, T_max, zeros)
    # failed commands change nothing: mask B comes back and stays through them
    add("mask B again", mask(part_b, not shared_a))
    add("mask packet one byte short", mask([], False)[:-1], Status.BAD_LENGTH)
    add("mask packet one byte long", mask([], False) + b"\x00", Status.BAD_LENGTH)
    add("partials beyond the buffer", encode(Op.READ_PARTIAL, T_max, 1), Status.OUT_OF_RANGE)
    add("partials running past the buffer", encode(Op.READ_PARTIAL, 1, T_max), Status.OUT_OF_RANGE)
    add("partials with trailing bytes", encode(Op.READ_PARTIAL, 0, 1) + b"\x00", Status.BAD_LENGTH)
    add("partials short header", encode(Op.READ_PARTIAL, 0, 1)[:-1], Status.BAD_LENGTH)
    read_partial("no partials", 0, 0, zeros[:0])
    run(n)
    read_partial("mask B after failed commands: partials", 0, n, acc["B"])
    # all enabled, a smaller batch: forward_int; the previous batch's other tokens read 0
    add("mask all", mask(None, True))
    run(n2)
    read_output("all, smaller batch: outputs", 0, n2, q.forward_int(x[:n2]))
    read_partial("all, smaller batch: partials", 0, T_max,
                 torch.cat([q.partial_int(x[:n2]), zeros[n2:]]))

    top = AcceleratorWithMemory(cfg)
    results, summary, *_ = run_steps(top, steps, seed=seed, stall=0.2, workdir=tmp_path)
    assert results.ok, (summary.get("failure"), [f.message for f in results.failures])
    responses = [bytes.fromhex(r) for r in summary["responses"]]
    assert len(responses) == len(steps)
    route = q.route_int(x).indices
    for i, name, kind, expected in checks:
        data = responses[i][1:]
        if kind == "partial":
            got = torch.tensor(lay.partials(data), dtype=torch.int64).reshape(-1, D)
            assert got.shape == expected.shape and torch.equal(got, expected), name
        elif kind == "output":
            got = torch.frombuffer(bytearray(data), dtype=torch.int8).reshape(-1, D)
            assert torch.equal(got, expected), name
        else:
            experts, shared = expected
            c = dict(zip(COUNTERS, (int.from_bytes(data[4 * j:4 * j + 4], "little")
                                    for j in range(len(COUNTERS)))))
            run_experts = set(route.flatten().tolist()) & set(experts)
            assert c["experts_run"] == len(run_experts), name
            assert c["tokens_routed"] == n, name
            if has_shared:
                assert (c["shared_mac_busy"] > 0) == shared, name


def test_mask_and_partial_encoding():
    cfg = AccelConfig.from_toml("configs/tiny.toml")
    lay = CommandLayout.from_config(cfg)
    assert lay.partial_bytes == 5 and lay.mask_bytes == 1          # 39-bit accumulators, 5 bits
    assert CommandLayout.from_config(AccelConfig.from_toml("configs/deepseek_v3.toml")).mask_bytes == 3
    assert lay.expert_mask() == 0b11111 and lay.expert_mask([1, 3], shared=False) == 0b01010
    assert encode(Op.SET_EXPERT_MASK, lay.expert_mask([0]), lay.mask_bytes) == bytes([0x0A, 0b10001])
    assert encode(Op.READ_PARTIAL, 2, 3) == bytes([0x0B, 2, 0, 3, 0])
    with pytest.raises(ValueError, match=r"not \[4\]"):
        lay.expert_mask([0, 4])
    values = [-1, 5, -(1 << 38), (1 << 38) - 1] * (cfg.d_model // 4)
    data = b"".join(v.to_bytes(5, "little", signed=True) for v in values * 2)
    assert lay.partials(data) == [values, values]
    with pytest.raises(ValueError, match="whole tokens"):
        lay.partials(data[:-1])
