"""moeforge.rtl.datapath."""
