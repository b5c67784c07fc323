"""moeforge.rtl.layer: one MoE layer's compute for a batch (`LayerCore`: token buffer, router,
scheduler, engines) with its token reader and combiner."""
