"""Errors of the host runtime: each is one clear line for the user (the command line prints it
and exits non-zero — 2 for bad input, 1 for a device that failed)."""

from __future__ import annotations

from moeforge.errors import MoeforgeError

__all__ = ["DeviceError", "NoSuchDevice", "DeviceNotAnswering", "DeviceCrashed", "DeviceBusy",
           "ConfigMismatch", "DeviceCommandError"]


class DeviceError(MoeforgeError, RuntimeError):
    """A device that failed while we talked to it."""

    exit_code = 1


class NoSuchDevice(MoeforgeError, ValueError):
    """A device spec that names nothing we can open (bad URL, missing port)."""


class DeviceNotAnswering(DeviceError):
    """Retransmissions ran out; says which command was last acknowledged."""

    def __init__(self, where: str, attempts: int, last_acked: int | None, what: str):
        self.last_acked = last_acked
        acked = "none yet" if last_acked is None else f"sequence number {last_acked}"
        super().__init__(f"{where}: device not answering {what} after {attempts} attempts "
                         f"(last acknowledged: {acked})")


class DeviceCrashed(DeviceError):
    """The simulated device's process died, or the connection closed under us."""


class DeviceBusy(DeviceCrashed):
    """A served simulated device that is serving another client said so and closed."""


class ConfigMismatch(MoeforgeError, ValueError):
    """A device built for one `AccelConfig` given a layer of another."""


class DeviceCommandError(DeviceError):
    """The accelerator answered a command with an error status."""
