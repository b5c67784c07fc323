"""Errors that reach the user as one clear line (the command line exits 2 on them)."""

__all__ = ["MoeforgeError", "ConfigError", "ShapeError", "WeightsError"]


class MoeforgeError(Exception):
    """Base of every error the command line reports without a traceback."""

    exit_code = 2


class ConfigError(MoeforgeError, ValueError):
    """An invalid `AccelConfig` value; names the field and the accepted range."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ShapeError(MoeforgeError, ValueError):
    """A tensor whose shape or dtype disagrees with the config."""


class WeightsError(MoeforgeError, ValueError):
    """A weight file or module that cannot be imported (unsupported block, corrupt file)."""
