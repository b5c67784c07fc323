"""moeforge.host_runtime: the host side of the accelerator — link protocol, transports, the
`Device` API and expert parallelism over several devices (see ``docs/protocol.md``).

It needs neither Amaranth nor the RTL: it reads the spec and hls_models, and reaches the
simulator only where ``open_device("sim")`` starts the simulated device (docs/architecture.md).
"""

from .device import Device, open_device
from .errors import (ConfigMismatch, DeviceBusy, DeviceCommandError, DeviceCrashed, DeviceError,
                     DeviceNotAnswering, NoSuchDevice)
from .group import DeviceGroup, open_device_group

__all__ = ["open_device", "open_device_group", "Device", "DeviceGroup", "DeviceError",
           "NoSuchDevice", "DeviceNotAnswering", "DeviceCrashed", "DeviceBusy", "ConfigMismatch",
           "DeviceCommandError"]
