"""The resource check: what a design needs of an FPGA, estimated before any tool runs.

The estimate is read off the design itself, not off a table per unit: the component is
elaborated to RTLIL (Amaranth, pure Python, seconds) and each module's cells are costed the way
Yosys' FPGA flows map them:

- multipliers: every ``$mul`` whose operands are both at least 2 bits wide and neither a constant
  power of two (those become shifts) takes ``ceil(a / w) · ceil(b / w)`` hard multipliers of
  ``w`` bits (18 on ECP5, 16 on iCE40), as Yosys' ``mul2dsp`` splits it; the rest are LUTs;
- memories: a memory read synchronously goes to block RAM in the cheapest shape of the device's
  blocks (ECP5 DP16KD 16384×1 … 1024×18, or 512×36 with one write port), unless LUT RAM is
  cheaper by Yosys' own costs (128 a block, 4 a 16×4 LUT RAM); a read without a clock can only
  be LUT RAM (ECP5) or flip-flops (iCE40); a ROM read without a clock is logic;
- flip-flops: the widths of the ``$dff`` cells;
- LUT4s: a rough figure per bit of each operator (an adder 1, a 2:1 mux 1, a comparison ½ …).

Multipliers and block RAM are counted exactly as the flows map them in every case measured;
the LUT figure is rough: `LUT_ESTIMATE_NOTE` states how far it was from Yosys' real count.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

from moeforge.errors import MoeforgeError

from .boards import FPGA, Board
from .usage import Usage

__all__ = ["Usage", "Estimate", "estimate_rtlil", "estimate_component", "check_fits",
           "ResourceShortfall", "LUT_ESTIMATE_NOTE"]

# Measured: see the note in README (moeforge build) and tests/fpga_boards/test_resources.py.
LUT_ESTIMATE_NOTE = "LUTs are a rough estimate (within about ±40% of Yosys' count where measured)"


class ResourceShortfall(MoeforgeError):
    """The design needs more of some resource than the board's FPGA has."""


@dataclass
class Estimate:
    """A design's estimated needs: in total and per module (dotted path below the top)."""

    fpga: FPGA
    total: Usage
    modules: dict[str, Usage] = field(default_factory=dict)

    def shortfalls(self) -> list[str]:
        """One phrase per resource the FPGA lacks (empty if everything fits)."""
        t, f = self.total, self.fpga
        short = []
        if t.multipliers > f.multipliers:
            short.append(f"{t.multipliers} multipliers ({f.name} has {f.multipliers})")
        if t.bram_blocks > f.bram_blocks:
            short.append(f"{t.bram_blocks} block RAMs ({f.name} has {f.bram_blocks})")
        if round(t.luts) > f.luts:
            short.append(f"about {round(t.luts)} LUTs ({f.name} has {f.luts})")
        if t.ffs > f.ffs:
            short.append(f"{t.ffs} flip-flops ({f.name} has {f.ffs})")
        return short

    def as_dict(self) -> dict:
        return {"fpga": self.fpga.name, "total": self.total.as_dict(),
                "available": {"luts": self.fpga.luts, "ffs": self.fpga.ffs,
                              "multipliers": self.fpga.multipliers,
                              "bram_blocks": self.fpga.bram_blocks},
                "modules": {k: v.as_dict() for k, v in self.modules.items()}}


def check_fits(estimate: Estimate, board: Board, what: str) -> None:
    """Raise `ResourceShortfall` naming every resource `what` needs more of than `board` has."""
    short = estimate.shortfalls()
    if short:
        raise ResourceShortfall(f"{what} needs {'; '.join(short)}: it does not fit {board.name}")


# --- RTLIL ---------------------------------------------------------------------------------

_CONST = re.compile(r"(\d+)'([01xz]+)\Z")
_CELL = re.compile(r"^\s*cell (\S+) (\S+)\n(.*?)^\s*end$", re.M | re.S)
_PARAM = re.compile(r"^\s*parameter \\(\w+) (\S+)$", re.M)
_CONN = re.compile(r"^\s*connect \\(\w+) (.*)$", re.M)
_MEMORY = re.compile(r"^\s*memory width (\d+) size (\d+) (\S+)$", re.M)
_PROCESS = re.compile(r"^  process (\S+)\n(.*?)^  end$", re.M | re.S)
_ASSIGN = re.compile(r"^\s*assign (\S+(?: \[[0-9:]+\])?) (.*)$", re.M)
_SLICE = re.compile(r"\[(\d+)(?::(\d+))?\]")


def _param_int(v: str) -> int:
    m = _CONST.match(v)
    if m:
        return int(m.group(2).replace("x", "0").replace("z", "0"), 2)
    return int(v.strip('"'))


def _const_value(conn: str) -> int | None:
    m = _CONST.match(conn.strip())
    return int(m.group(2), 2) if m and set(m.group(2)) <= {"0", "1"} else None


@dataclass
class _Memory:
    width: int
    depth: int
    reads_sync: int = 0
    reads_async: int = 0
    writes: int = 0


# Block-RAM shapes (width, depth) Yosys maps to, per family; the wide one needs one write port.
_BRAM_SHAPES = {
    "ecp5": [(1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024)],
    "ice40": [(2, 2048), (4, 1024), (8, 512), (16, 256)],
}
_BRAM_WIDE = {"ecp5": (36, 512), "ice40": None}
_BRAM_COST, _LUTRAM_COST = 128, 4           # memory_libmap's costs (lattice brams / lutrams)
_MUL_WIDTH = {"ecp5": 18, "ice40": 16}
_MUL_MIN_Y = {"ecp5": 0, "ice40": 11}       # synth_ice40 -dsp: narrower products stay in LUTs


def _bram_blocks(fpga: FPGA, width: int, depth: int, writes: int) -> int:
    shapes = list(_BRAM_SHAPES[fpga.family])
    if writes <= 1 and _BRAM_WIDE[fpga.family]:
        shapes.append(_BRAM_WIDE[fpga.family])
    return min(math.ceil(depth / d) * math.ceil(width / w) for w, d in shapes)


def _memory_usage(fpga: FPGA, mem: _Memory) -> Usage:
    u = Usage()
    w, d = mem.width, mem.depth
    dpr = math.ceil(d / 16) * math.ceil(w / 4)
    lutram = 4 * dpr + w * (math.ceil(d / 16) - 1)          # the RAMs and their read muxes
    reads = max(1, mem.reads_sync + mem.reads_async)
    rom = mem.writes == 0
    if mem.reads_async:
        if rom:                                             # a table in logic
            u.luts = reads * w * d / 16 * 1.3
        elif fpga.family == "ecp5":
            u.luts = u.lutram_luts = reads * lutram
        else:                                               # no LUT RAM: flip-flops and muxes
            u.ffs = w * d
            u.luts = reads * w * d / 3
        return u
    blocks = _bram_blocks(fpga, w, d, mem.writes) * reads
    lutram_cost = _LUTRAM_COST * dpr * reads
    if fpga.family == "ecp5" and not rom and lutram_cost < _BRAM_COST * blocks:
        u.luts = u.lutram_luts = reads * lutram
        u.ffs = reads * w                                   # the read register
    else:
        u.bram_blocks, u.bram_bits = blocks, w * d
    return u


def _is_pow2_or_zero(v: int | None) -> bool:
    return v is not None and (v & (v - 1)) == 0


def _cell_usage(fpga: FPGA, typ: str, p: dict, c: dict) -> Usage:
    u = Usage()
    a, b = p.get("A_WIDTH", 0), p.get("B_WIDTH", 0)
    y = p.get("Y_WIDTH", p.get("WIDTH", 0))
    if typ == "$mul":
        ca, cb = _const_value(c.get("A", "")), _const_value(c.get("B", ""))
        if _is_pow2_or_zero(ca) or _is_pow2_or_zero(cb):
            return u                                        # a shift
        mw = _MUL_WIDTH[fpga.family]
        if min(a, b) >= 2 and y >= _MUL_MIN_Y[fpga.family]:
            u.multipliers = math.ceil(a / mw) * math.ceil(b / mw)
            u.luts = (u.multipliers - 1) * y / 2            # adding up the partial products
        else:
            u.luts = a * b
        return u
    if typ in ("$dff", "$adff", "$sdff", "$dffe", "$adffe", "$sdffe", "$sdffce"):
        u.ffs = p.get("WIDTH", 0)
        return u
    if typ in ("$add", "$sub", "$neg", "$alu"):
        u.luts = y
    elif typ in ("$lt", "$le", "$gt", "$ge"):
        u.luts = max(a, b) / 2
    elif typ in ("$eq", "$ne"):
        u.luts = max(a, b) / 2
    elif typ == "$mux":                                     # half of them fold into logic
        const_input = any(_const_value(c.get(k, "")) is not None for k in "AB")
        u.luts = p.get("WIDTH", 0) / (4 if const_input else 2)
    elif typ == "$pmux":
        u.luts = p.get("WIDTH", 0) * p.get("S_WIDTH", 1) / 2
    elif typ in ("$and", "$or", "$xor", "$xnor", "$not"):
        u.luts = y / 4
    elif typ in ("$reduce_and", "$reduce_or", "$reduce_xor", "$reduce_bool", "$logic_not",
                 "$logic_and", "$logic_or"):
        u.luts = max(a, b) / 3
    elif typ in ("$shl", "$shr", "$sshr", "$sshl", "$shift", "$shiftx"):
        if _const_value(c.get("B", "")) is None:
            u.luts = y * max(1, b) / 2
    return u


def _base(conn: str) -> str | None:
    """The wire a connection reads (``\\x [3:0]`` → ``\\x``), None for a constant or a concatenation."""
    conn = conn.strip()
    if not conn or conn.startswith("{") or _CONST.match(conn):
        return None
    return conn.split(" ", 1)[0]


def _enable_muxes(cells) -> set[str]:
    """The ``$mux`` cells that only hold a register's value or load its reset value: Yosys
    folds them into the flip-flop's clock enable and reset, so they cost no LUT."""
    mux_by_y, dffs = {}, []
    for typ, inst, body in cells:
        conns = dict(_CONN.findall(body))
        if typ == "$mux":
            y = _base(conns.get("Y", ""))
            if y is not None:
                mux_by_y[y] = (inst, conns.get("A", ""), conns.get("B", ""))
        elif typ == "$dff":
            dffs.append((_base(conns.get("D", "")), _base(conns.get("Q", ""))))
    free = set()
    for d, q in dffs:
        sig, seen = d, 0
        while sig in mux_by_y and seen < 64:
            inst, a, b = mux_by_y[sig]
            if _base(a) == q or _const_value(a) is not None:
                free.add(inst)
                sig = _base(b)
            elif _base(b) == q or _const_value(b) is not None:
                free.add(inst)
                sig = _base(a)
            else:
                break
            seen += 1
    return free


def _width(lhs: str) -> int:
    m = _SLICE.search(lhs)
    if not m:
        return 1
    hi, lo = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    return hi - lo + 1


def _process_luts(chunk: str, cells) -> float:
    """LUTs of the decision trees of Amaranth's processes: a signal given ``n`` different
    non-constant values costs ``n - 1`` 2:1 muxes a bit; holding a register's value is its
    clock enable and a constant its reset (or a LUT input folded in elsewhere)."""
    q_of = {}
    for typ, _inst, body in cells:
        if typ == "$dff":
            conns = dict(_CONN.findall(body))
            q_of[_base(conns.get("D", ""))] = _base(conns.get("Q", ""))
    luts = 0.0
    for _name, body in _PROCESS.findall(chunk):
        sources: dict[str, set] = defaultdict(set)
        widths: dict[str, int] = {}
        for lhs, rhs in _ASSIGN.findall(body):
            base = _base(lhs)
            widths[base] = max(widths.get(base, 0), _width(lhs))
            if _const_value(rhs) is None and _base(rhs) != q_of.get(base):
                sources[base].add(rhs.strip())
        luts += sum(widths[b] * max(0, len(src) - 1) for b, src in sources.items())
    return luts


def estimate_rtlil(text: str, fpga: FPGA) -> Estimate:
    """Estimate the needs of the RTLIL design `text` (Amaranth's output: one module per
    instance, named by its dotted path) on `fpga`."""
    modules: dict[str, Usage] = {}
    total = Usage()
    for chunk in re.split(r"^module ", text, flags=re.M)[1:]:
        name = chunk.split("\n", 1)[0].strip().lstrip("\\")
        path = name.split(".", 1)[1] if "." in name else "(top)"
        usage = Usage()
        mems: dict[str, _Memory] = {}
        for m in _MEMORY.finditer(chunk):
            mems[m.group(3)] = _Memory(int(m.group(1)), int(m.group(2)))
        cells = _CELL.findall(chunk)
        free = _enable_muxes(cells)
        for typ, inst, body in cells:
            if inst in free:
                continue
            p = {k: _param_int(v) if not v.startswith('"') else v for k, v in _PARAM.findall(body)}
            if typ.startswith("$mem"):
                memid = next((v.strip('"').replace("\\\\", "\\") for k, v in _PARAM.findall(body)
                              if k == "MEMID"), None)
                mem = mems.get(memid)
                if mem is None:
                    continue
                if typ == "$memrd_v2" or typ == "$memrd":
                    if p.get("CLK_ENABLE", 0):
                        mem.reads_sync += 1
                    else:
                        mem.reads_async += 1
                elif typ in ("$memwr_v2", "$memwr"):
                    mem.writes += 1
                continue
            usage.add(_cell_usage(fpga, typ, p, dict(_CONN.findall(body))))
        for mem in mems.values():
            usage.add(_memory_usage(fpga, mem))
        usage.luts += _process_luts(chunk, cells)
        modules[path] = usage
        total.add(usage)
    return Estimate(fpga, total, modules)


def estimate_component(component, fpga: FPGA, *, name: str = "top") -> Estimate:
    """Elaborate `component` (a `wiring.Component`) to RTLIL and `estimate_rtlil` it."""
    from amaranth.back import rtlil
    return estimate_rtlil(rtlil.convert(component, name=name), fpga)
