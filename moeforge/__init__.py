"""moeforge: an MoE-layer accelerator described once, elaborated, verified, measured.

The layers of the package and what each may import: docs/architecture.md.
"""

from .config import AccelConfig
from .errors import ConfigError, MoeforgeError, ShapeError, WeightsError

__all__ = ["AccelConfig", "ConfigError", "MoeforgeError", "ShapeError", "WeightsError"]
__version__ = "0.1.0"
