"""moeforge.host_runtime — see DESIGN.md; filled by later issues."""
