"""moeforge.rtl.layer."""
