"""moeforge.rtl.top: the tops: `MoEAccelerator` (layer core and expert cache behind the command
set) and `MoESoC` (host link and accelerator, with a memory port for the experts)."""
