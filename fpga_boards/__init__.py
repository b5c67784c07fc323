"""moeforge.fpga_boards: the boards (thin amaranth-boards subclasses), the board top, the
resource check, the bitstream build with the open toolchain from PyPI, its report, and
programming. It reads rtl, the spec and the config, not the golden model or sim
(docs/architecture.md)."""
