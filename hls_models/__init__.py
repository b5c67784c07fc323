"""moeforge.hls_models: the executable specification of the device's arithmetic and what it is
judged against: float reference layers, import from `transformers`, quantisation, the bit-exact
golden model (`QuantizedMoELayer`) with its fixed-point primitives and tables, weight images,
the expert-cache model and the accuracy report.

It reads the spec and the config only (docs/architecture.md); `transformers` is imported only
inside the functions that need it.
"""

from .golden import QuantizedMoELayer
from .hf_import import float_weights_from_hf
from .hf_random import family_configs, hf_config_for, make_hf_block, make_hf_input
from .reference import FloatMoELayer
from .weights import FloatMoEWeights

__all__ = [
    "FloatMoEWeights",
    "FloatMoELayer",
    "float_weights_from_hf",
    "make_hf_block",
    "make_hf_input",
    "hf_config_for",
    "family_configs",
    "QuantizedMoELayer",
]
