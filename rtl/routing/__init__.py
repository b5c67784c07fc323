"""moeforge.rtl.routing: the router (gating GEMV, top-k, gates, shared-expert gate; its EXP
tables in `router_tables`) and the dispatch table that turns its choices into expert-major
order."""
