"""Expert parallelism: several devices serve one layer, each holding a share of the experts.

Every device holds the whole router and only its experts' images (the rest masked off). The
host routes each token (the golden router, bit-identical to the devices') and sends it only to
the devices that hold one of its experts — every token also to the device with the shared
expert. Each device returns the raw combiner accumulators of its experts' contributions
(``READ_PARTIAL``); the host adds them and requantises once, which is exactly what one device
holding every expert computes.
"""

from __future__ import annotations

import torch

from moeforge.config import AccelConfig
from moeforge.hls_models.fixed_point import requantize
from moeforge.spec.arith import Y_BITS

from .device import Device, open_device

__all__ = ["DeviceGroup", "open_device_group", "default_placement"]


def default_placement(n_experts: int, n_devices: int) -> list[list[int]]:
    """Contiguous, as even as possible: device i holds experts [i·E/N, (i+1)·E/N)."""
    return [list(range(i * n_experts // n_devices, (i + 1) * n_experts // n_devices))
            for i in range(n_devices)]


class DeviceGroup:
    def __init__(self, devices: list[Device], cfg: AccelConfig, placement: list[list[int]]):
        self.devices, self.cfg, self.placement = devices, cfg, placement
        self._q = None
        self._sent = [0] * len(devices)

    def load(self, q, *, progress: bool | None = None) -> None:
        for i, (dev, experts) in enumerate(zip(self.devices, self.placement)):
            dev.load(q, progress=progress, experts=experts, shared=(i == 0))
        self._q = q

    def run(self, x):
        """Like `Device.run`: float or int8 tokens ``[..., d_model]``."""
        dev0 = self.devices[0]
        rows, is_float, lead = dev0.tokens_in(x)
        q = self._q
        if q is None:
            raise ValueError("load(q) the group first: the host routes with the layer's router")
        acc = torch.zeros(rows.shape[0], self.cfg.d_model, dtype=torch.int64)
        route = q.route_int(rows) if rows.shape[0] else None
        chosen = route.indices if route else torch.empty(0, self.cfg.top_k)
        kept = route.kept if route else torch.empty(0, self.cfg.top_k, dtype=torch.bool)
        for i, (dev, experts) in enumerate(zip(self.devices, self.placement)):
            if i == 0 and self.cfg.shared_d_ff:
                mine = torch.arange(rows.shape[0])
            else:
                # the tokens that keep one of the device's experts (skipped ones do not count)
                hit = (torch.isin(chosen, torch.tensor(experts, dtype=chosen.dtype)) & kept).any(dim=1)
                mine = torch.nonzero(hit, as_tuple=True)[0]
            if mine.numel():
                acc[mine] += dev.run_int(rows[mine], partial=True)
                self._sent[i] += mine.numel()
        y = requantize(acc, q.out_mult, q.out_shift, Y_BITS).to(torch.int8)
        if is_float:
            y = q.dequantize_output(y)
        return y.reshape(*lead, self.cfg.d_model)

    def stats(self) -> dict:
        return {"placement": [{"device": d.transport.name, "experts": e,
                               "shared": bool(i == 0 and self.cfg.shared_d_ff),
                               "tokens_sent": self._sent[i]}
                              for i, (d, e) in enumerate(zip(self.devices, self.placement))],
                "devices": [d.stats() for d in self.devices],
                "retries": sum(d.link.stats.retries for d in self.devices)}

    def close(self) -> None:
        errors = []
        for d in self.devices:
            try:
                d.close()
            except Exception as e:      # noqa: BLE001 - close the others first, then report
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_device_group(specs: list[str], cfg: AccelConfig, *, placement=None, **kwargs) -> DeviceGroup:
    """Open every device of ``specs`` (e.g. ``["sim", "sim"]``) for `cfg` and place the experts:
    ``placement`` is a list of expert lists, one per device (default: contiguous shares)."""
    if not specs:
        raise ValueError("open_device_group needs at least one device")
    placement = default_placement(cfg.n_experts, len(specs)) if placement is None else \
        [sorted(int(e) for e in p) for p in placement]
    if len(placement) != len(specs):
        raise ValueError(f"placement has {len(placement)} expert lists for {len(specs)} devices")
    flat = sorted(e for p in placement for e in p)
    if flat != list(range(cfg.n_experts)):
        raise ValueError(f"placement must hold each of the {cfg.n_experts} experts exactly once, "
                         f"got {placement}")
    devices = []
    try:
        for spec in specs:
            devices.append(open_device(spec, cfg, **kwargs))
    except BaseException:
        for d in devices:
            d.close()
        raise
    return DeviceGroup(devices, cfg, placement)
