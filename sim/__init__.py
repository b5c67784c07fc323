"""moeforge.sim — see DESIGN.md; filled by later issues."""
