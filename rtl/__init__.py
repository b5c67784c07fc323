"""moeforge.rtl — see DESIGN.md; filled by later issues."""
