"""What the trade-off benches share: a whole-layer run that counts only when bit-exact, and the
median (worst) cell of their tables."""

import statistics


def median_worst(values, worst) -> str:
    """``median% (worst%)`` of fractions; `worst` is ``max`` for errors, ``min`` for agreement."""
    return f"{statistics.median(values) * 100:.2f}% ({worst(values) * 100:.2f}%)"


def verified_layer_run(cfg, tokens: int, *, bytes_per_cycle=None) -> dict | None:
    """`moeforge sim`'s whole-layer run (seed 0, no stalls) of `cfg` on `tokens` tokens; its
    summary, or None after a line saying why the run did not pass (not bit-exact, or not
    everything compared)."""
    from moeforge.sim.layer_sim import run_layer
    run = run_layer(cfg, tokens=tokens, seed=0, stall=0.0, bytes_per_cycle=bytes_per_cycle)
    if not run["passed"]:
        print(f"{cfg.name}: the layer run did not pass: {run['problems']}")
        return None
    return run
