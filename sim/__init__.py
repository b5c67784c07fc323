"""moeforge.sim: simulation of the RTL: Verilator builds and their cache, cocotb stream drivers,
monitors and scoreboards, the backing-memory model, the simulated tops, the unit and layer
cosimulations `moeforge sim` runs (benches in `benches`), and the simulated device the host
runtime reaches for ``open_device("sim")``. It reads rtl, hls_models and the spec
(docs/architecture.md)."""
