"""cocotb modules run by `moeforge sim --unit NAME` (and by the tests through sim.unit_sim).

Each reads its stimulus and expected outputs from the JSON file named by an environment
variable (MOEFORGE_BENCH; the benches shared with the tests read MOEFORGE_TEST_PARAMS or
MOEFORGE_HIDDEN_BENCH) and, when that file names a ``summary``, writes there what its
scoreboards compared, with the run's ``nonce`` (see `common.write_summary`): the only
evidence the command line's verdict is computed from.
"""
