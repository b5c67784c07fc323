"""moeforge.rtl: the accelerator in Amaranth, synthesizable only (every component here is one a
board can build), one unit a file, stream interfaces between them.

Grouped by level: `datapath` (MAC array, GEMM engine, requantiser, divider), `routing` (router,
dispatch table), `expert` (hidden unit, expert FFN engine), `memory` (expert cache, on-chip
expert store), `layer` (token reader, combiner, layer core), `link` (CRC-32, host link, UART)
and `top` (`MoEAccelerator`, `MoESoC`). `units.UNITS` registers every unit by name for the
command line and the checks; `export` writes Verilog. It reads the spec, the config and
hls_models' tables, never sim (docs/architecture.md, docs/rtl.md).
"""
