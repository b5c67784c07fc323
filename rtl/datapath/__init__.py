"""moeforge.rtl.datapath: the arithmetic the other units are built from: the R×C int8 MAC array,
the GEMM engine on it, the requantiser, the restoring divider, and Amaranth forms of the
integer primitives of docs/arithmetic.md (`arith`)."""
