"""The golden model tracks the float transformers blocks (figures in the README).

Targets: ≤ 3% relative L2 error, ≥ 99.5% of tokens with the float router's
expert set. With the int8-only input (``input_bits = 8``), measured against the float block
fed the device's own (int8) input, the
routing target holds and the error is 2.2–4% (median ≈ 2.6%): the 3% target is met
for most seeds, not all — asserted here is the bound that does hold, 5%. Against raw
float tokens both targets are missed (see the README): int8 input quantisation flips
1–2.5% of near-tied routes, which no router precision can recover.

The float-faithful input (``input_bits = 16``, ``input_smoothing = 0.5``, the defaults: the router reads
the int16 token, the experts an int8 derived on the device) meets the routing target on the
float input for every family; its relative L2 error there is 2.6–3.8% over seeds 0 and 1
(the int8 experts' own error): asserted is 4%, and that it beats the int8 input.

int4 expert weights (``weight_bits = 4``, a scale per output row) cost error: 14.8-18.2% on the
float input (seed 0, 512 tokens), against 2.5-3.3% at int8; routing is unchanged (the router's
weights are not the experts'). Asserted: at most 22%, above int8, the routing target held.

Seed 1 of the two bound sweeps runs under ``slow``.
"""

import pytest

from moeforge import AccelConfig
from moeforge.hls_models import family_configs
from moeforge.hls_models.accuracy import measure_accuracy

FAMILIES = family_configs()                  # the defaults: float-faithful input
INT8 = dict(input_bits=8, input_smoothing=0.0)     # the int8-only input
WIDE = dict(input_bits=16, input_smoothing=0.5)


SEEDS = [0, pytest.param(1, marks=pytest.mark.slow)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", SEEDS)
def test_int8_input_accuracy_bounds(family, seed):
    r = measure_accuracy(FAMILIES[family].replace(**INT8), seed=seed, eval_tokens=2048)
    assert r.route_match >= 0.995, f"{family}: same expert set for {r.route_match:.4f} of tokens"
    assert r.rel_l2 <= 0.05, f"{family}: relative L2 error {r.rel_l2:.4f}"
    # the raw-input figures are worse, never better, than the device-input ones
    assert r.route_match_float_input <= r.route_match


def test_router_precision_knob_matters():
    """An 8-bit router routes worse than the default 16-bit one (the knob is real)."""
    cfg = FAMILIES["mixtral"].replace(**INT8)
    r16 = measure_accuracy(cfg, seed=0, eval_tokens=4096)
    r8 = measure_accuracy(cfg.replace(router_bits=8), seed=0, eval_tokens=4096)
    assert r8.route_match < r16.route_match
    assert r8.rel_l2 > r16.rel_l2


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", SEEDS)
def test_float_faithful_input_bounds(family, seed):
    int8 = measure_accuracy(FAMILIES[family].replace(**INT8), seed=seed, eval_tokens=2048)
    wide = measure_accuracy(FAMILIES[family].replace(**WIDE), seed=seed, eval_tokens=2048)
    assert wide.knobs == "int16 input, int8 weights, smoothing 0.5"
    assert wide.route_match_float_input >= 0.995, \
        f"{family}: same expert set for {wide.route_match_float_input:.4f} of float tokens"
    assert wide.rel_l2_float_input <= 0.04, \
        f"{family}: relative L2 error on float tokens {wide.rel_l2_float_input:.4f}"
    assert wide.rel_l2_float_input < int8.rel_l2_float_input
    assert wide.route_match_float_input >= int8.route_match_float_input


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_float_faithful_input_on_outlier_tokens(family):
    """3 channels at 30x (`make_hf_input`'s outliers): the routing target holds; the L2 target
    does not (5.5-9.2% over seeds 0 and 1, the int8 experts' error on smoothed weights; the
    int8 input: 7.9-17.6%): asserted is 10%, and that it beats the int8 input."""
    shape = dict(seed=0, eval_tokens=2048, outliers=3, outlier_gain=30.0)
    int8 = measure_accuracy(FAMILIES[family].replace(**INT8), **shape)
    wide = measure_accuracy(FAMILIES[family].replace(**WIDE), **shape)
    assert wide.route_match_float_input >= 0.995, \
        f"{family}: same expert set for {wide.route_match_float_input:.4f} of outlier tokens"
    assert wide.rel_l2_float_input <= 0.10, \
        f"{family}: relative L2 error on outlier tokens {wide.rel_l2_float_input:.4f}"
    assert wide.rel_l2_float_input < int8.rel_l2_float_input
    assert wide.route_match_float_input > int8.route_match_float_input


def test_the_defaults_are_the_float_faithful_input():
    """AccelConfig's defaults and every example config (FAMILIES scales them down)."""
    for cfg in (AccelConfig(), *FAMILIES.values()):
        assert (cfg.input_bits, cfg.input_smoothing) == (WIDE["input_bits"], WIDE["input_smoothing"])


@pytest.mark.parametrize("family", sorted(f for f, c in FAMILIES.items() if c.top_k > 1))
def test_expert_skipping_trades_experts_for_error(family):
    """A small threshold (0.03) stays within the float-faithful bounds (≤ 4% L2, ≥ 99.5% of
    top-k sets; measured 2.5-2.9%, seeds 0 and 1); a large one (0.2) runs fewer experts per
    token and costs error (9-58% on these random-weight blocks: their experts are uncorrelated,
    so a dropped gate of 0.1 is 10% of the output gone). The README's trade-off table has the
    curve; bench/skip_tradeoff.py regenerates it."""
    base = FAMILIES[family]
    off, small, large = (measure_accuracy(base.replace(skip_threshold=t), seed=0, eval_tokens=2048)
                         for t in (0.0, 0.03, 0.2))
    assert off.experts_per_token == base.top_k and "skip" not in off.knobs
    assert small.knobs.endswith("skip < 0.03")
    assert small.rel_l2_float_input <= 0.04, f"{family}: {small.rel_l2_float_input:.4f} at 0.03"
    assert small.route_match_float_input >= 0.995
    assert small.experts_per_token <= base.top_k
    assert large.experts_per_token < small.experts_per_token
    assert large.experts_per_token < base.top_k
    assert large.rel_l2_float_input > off.rel_l2_float_input


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_int4_weights_cost_error_but_not_routing(family):
    """int4 experts: error above int8's and at most 22% on the float input, the same routing
    agreement target (the module docstring has the figures)."""
    base = FAMILIES[family]
    w8, w4 = (measure_accuracy(base.replace(weight_bits=b), seed=0, eval_tokens=1024) for b in (8, 4))
    assert "int4 weights" in w4.knobs and "int8 weights" in w8.knobs
    assert w8.rel_l2_float_input < w4.rel_l2_float_input <= 0.22, \
        f"{family}: int4 {w4.rel_l2_float_input:.4f}, int8 {w8.rel_l2_float_input:.4f}"
    assert w4.route_match_float_input >= 0.995
