"""moeforge.rtl.top."""
