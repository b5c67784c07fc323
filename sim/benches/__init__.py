"""cocotb modules run by `moeforge sim --unit NAME` (and by the tests through sim.unit_sim).

Each reads its stimulus and expected outputs from the JSON file named by the environment
variable MOEFORGE_BENCH and writes a summary JSON beside it (see `common.write_summary`).
"""
