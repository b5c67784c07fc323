"""moeforge.rtl.link."""
