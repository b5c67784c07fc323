"""moeforge.rtl.expert."""
