"""moeforge.rtl.memory: the expert cache (S on-chip slots, burst fetch, prefetch, counters) and
the on-chip expert store a board puts behind the SoC's memory port."""
