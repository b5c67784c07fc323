"""`Usage`: what a design or one of its modules takes of an FPGA, estimated or counted.

The resource check (`resources`) estimates it from the elaborated design before any tool runs;
the build report (`report`) counts it in Yosys' mapped netlist. One record for both, so the
report can set an estimate beside the count it estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Usage"]


@dataclass
class Usage:
    """Counts of one module, or of a whole design.

    ``bram_bits`` (the data bits of the memories placed in block RAM) is known to the estimate
    only; a netlist's count leaves it ``None``, and `as_dict` then omits it.
    """

    luts: float = 0.0
    ffs: int = 0
    multipliers: int = 0
    bram_blocks: int = 0
    bram_bits: int | None = 0
    lutram_luts: float = 0.0    # LUTs used as RAM (included in `luts`)

    def add(self, other: "Usage") -> None:
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, None if a is None or b is None else a + b)

    def as_dict(self) -> dict:
        d = {"luts": round(self.luts), "ffs": self.ffs, "multipliers": self.multipliers,
             "bram_blocks": self.bram_blocks, "bram_bits": self.bram_bits,
             "lutram_luts": round(self.lutram_luts)}
        if self.bram_bits is None:
            del d["bram_bits"]
        return d
