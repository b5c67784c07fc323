"""moeforge.rtl.memory."""
