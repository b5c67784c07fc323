"""moeforge.fpga_boards — see DESIGN.md; filled by later issues."""
