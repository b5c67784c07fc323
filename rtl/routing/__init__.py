"""moeforge.rtl.routing."""
