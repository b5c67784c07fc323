"""The cocotb benches, one module a unit, and `layer` for the whole accelerator.

The tests run each through `sim.build.run_cocotb`; the command line runs those of
`sim.unit_sim.BENCHES` (`moeforge sim --unit NAME`: requantiser, combiner, router, hidden,
expert_ffn) and `layer` (`moeforge sim`, through `sim.layer_sim`). A bench reads its stimulus
and expected values from the JSON file an environment variable names (MOEFORGE_TEST_PARAMS;
MOEFORGE_BENCH for the requantiser's and the layer's, MOEFORGE_HIDDEN_BENCH for the hidden
unit's) and, when that file names a ``summary``, writes there what its scoreboards compared,
with the run's ``nonce`` (`common.write_summary`): the only evidence the command line's
verdict is computed from. The helpers a test shares with its bench (expected beats, stimulus,
Amaranth-simulator runs) live in the bench's module.
"""
