"""The writes that load a quantised layer into a device, cut into packets of any size.

The link's frame size is the device's ``max_payload``, and under a noisy link the host makes
its frames smaller, so the plan is kept as runs of consecutive words (`WriteRun`) and cut into
command packets only when sent.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from moeforge.config import AccelConfig
from moeforge.rtl.commands import CommandLayout, Op

__all__ = ["WriteRun", "layer_writes"]

_HEADER = 9     # opcode, addr u32, count u32


@dataclass(frozen=True)
class WriteRun:
    op: int             # WRITE_ROUTER, WRITE_MEMORY or WRITE_SHARED
    addr: int
    words: tuple[int, ...]
    nbytes: int         # bytes of a word

    @property
    def size(self) -> int:
        return len(self.words) * self.nbytes

    def packets(self, max_payload: int):
        """Command packets of at most ``max_payload`` bytes, in address order."""
        per = (max_payload - _HEADER) // self.nbytes
        if per < 1:
            raise ValueError(f"a packet of {max_payload} bytes cannot carry one {self.nbytes}-byte word")
        for i in range(0, len(self.words), per):
            chunk = self.words[i:i + per]
            yield struct.pack("<BII", self.op, self.addr + i, len(chunk)) + b"".join(
                int(w).to_bytes(self.nbytes, "little") for w in chunk)


def _runs(op: int, writes, nbytes: int) -> list[WriteRun]:
    runs, start, cur = [], None, []
    for addr, word in sorted(writes):
        if cur and addr != start + len(cur):
            runs.append(WriteRun(op, start, tuple(cur), nbytes))
            cur = []
        if not cur:
            start = addr
        cur.append(word)
    if cur:
        runs.append(WriteRun(op, start, tuple(cur), nbytes))
    return runs


def layer_writes(q, cfg: AccelConfig, *, experts=None, shared: bool = True) -> list[WriteRun]:
    """Router, expert images (only ``experts`` if given) and shared image of `q` for a device
    built for `cfg`. A device given a subset still gets the last word of each memory written
    (zero where it is not its own): the device counts a memory loaded once a write reaches
    its end, and the experts it does not hold are masked off, never read."""
    from moeforge.rtl.expert_ffn import expert_image
    from moeforge.rtl.router import router_image
    lay = CommandLayout.from_config(cfg)
    runs = _runs(Op.WRITE_ROUTER, router_image(q, lanes=cfg.mac_cols), lay.router_bytes)
    chosen = range(cfg.n_experts) if experts is None else sorted(experts)
    mem = {}
    for e in chosen:
        mem.update((e * lay.image_words + i, w) for i, w in enumerate(expert_image(q.experts, e, cfg)))
    mem.setdefault(lay.memory_words - 1, 0)
    runs += _runs(Op.WRITE_MEMORY, mem.items(), lay.cols)
    if cfg.shared_d_ff:
        if q.shared is None:
            raise ValueError(f"config {cfg.name} has a shared expert; the layer has none")
        img = dict(enumerate(expert_image(q.shared, 0, cfg))) if shared else {}
        img.setdefault(lay.shared_image_words - 1, 0)
        runs += _runs(Op.WRITE_SHARED, img.items(), lay.cols)
    return runs
