"""The resource check: what the estimate counts, and the refusals before any tool runs."""

import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from moeforge import AccelConfig
from moeforge.fpga_boards.boards import BOARDS, FPGAS
from moeforge.fpga_boards.resources import ResourceShortfall, check_fits, estimate_component

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny.toml"
ECP5 = FPGAS["LFE5U-85F"]


class _Mul(wiring.Component):
    """``o = a * b`` registered, `a` and `b` of the given widths (`b` a constant if given)."""

    def __init__(self, a_bits, b_bits, *, const=None):
        self.const = const
        super().__init__({"a": In(signed(a_bits)), "b": In(signed(b_bits)),
                          "o": Out(signed(a_bits + b_bits))})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.o.eq(self.a * (self.const if self.const is not None else self.b))
        return m


class _Mem(wiring.Component):
    """One memory of `width` × `depth`, written and read (synchronously unless `async_read`)."""

    def __init__(self, width, depth, *, async_read=False):
        self.width, self.depth, self.async_read = width, depth, async_read
        super().__init__({"addr": In(range(depth)), "data": In(width), "en": In(1),
                          "q": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port(domain="comb" if self.async_read else "sync")
        m.d.comb += [wr.addr.eq(self.addr), wr.data.eq(self.data), wr.en.eq(self.en),
                     rd.addr.eq(self.addr), self.q.eq(rd.data)]
        return m


@pytest.mark.parametrize("a, b, const, mults", [
    (8, 8, None, 1),            # one MULT18X18D
    (18, 18, None, 1),
    (32, 17, None, 2),          # split in two along the wide operand
    (30, 30, None, 4),
    (16, 16, 1 << 5, 0),        # a power of two is a shift
    (1, 12, None, 0),           # a 1-bit operand is an AND
])
def test_multipliers_are_counted_as_yosys_splits_them(a, b, const, mults):
    est = estimate_component(_Mul(a, b, const=const), ECP5)
    assert est.total.multipliers == mults


def test_iCE40_multipliers_are_16_bits_wide():
    assert estimate_component(_Mul(17, 8), FPGAS["iCE40UP5K"]).total.multipliers == 2


@pytest.mark.parametrize("width, depth, blocks", [
    (8, 1024, 1),               # 2048×9
    (32, 512, 1),               # 512×36, one write port
    (32, 768, 2),
    (156, 512, 5),              # 5 × 36 bits wide
    (32, 6532, 13),
])
def test_synchronous_memories_take_block_ram_in_the_cheapest_shape(width, depth, blocks):
    est = estimate_component(_Mem(width, depth), ECP5)
    assert est.total.bram_blocks == blocks
    assert est.total.bram_bits == width * depth


def test_an_asynchronous_read_is_lut_ram_not_block_ram():
    est = estimate_component(_Mem(32, 256, async_read=True), ECP5)
    assert est.total.bram_blocks == 0
    assert est.total.lutram_luts >= 4 * (256 // 16) * (32 // 4)


def test_a_small_memory_stays_in_lut_ram_when_cheaper():
    est = estimate_component(_Mem(8, 16), ECP5)           # two 16×4 LUT RAMs cost 8 < 128
    assert est.total.bram_blocks == 0 and est.total.lutram_luts > 0


def test_flip_flops_are_the_register_bits():
    assert estimate_component(_Mul(8, 8), ECP5).total.ffs == 16


def test_a_shortfall_names_every_resource_short():
    from moeforge.fpga_boards.resources import Estimate, Usage
    board = BOARDS["ulx3s-25f"]
    est = Estimate(board.fpga, Usage(luts=30000, ffs=100, multipliers=96, bram_blocks=60))
    with pytest.raises(ResourceShortfall) as e:
        check_fits(est, board, "config big")
    msg = str(e.value)
    assert "config big needs 96 multipliers (LFE5U-25F has 28)" in msg
    assert "60 block RAMs (LFE5U-25F has 56)" in msg
    assert "about 30000 LUTs (LFE5U-25F has 24288)" in msg
    assert "flip-flops" not in msg                                  # those fit
    check_fits(Estimate(board.fpga, Usage(luts=100, ffs=100, multipliers=28, bram_blocks=56)),
               board, "config small")                               # exactly full fits


def _moeforge(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "moeforge.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _big_mac_config(tmp_path: Path) -> Path:
    text = TINY.read_text().replace("mac_rows = 4", "mac_rows = 8").replace("mac_cols = 4", "mac_cols = 8")
    assert text != TINY.read_text()
    p = tmp_path / "wide.toml"
    p.write_text(text)
    return p


def test_build_refuses_a_config_with_too_many_multipliers_before_any_tool_runs(tmp_path):
    cfg = _big_mac_config(tmp_path)
    out = tmp_path / "out"
    r = _moeforge("build", "--board", "ulx3s-25f", "--config", str(cfg), "-o", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("elaborating "), r.stderr   # progress, then one error
    assert lines[1].startswith("moeforge: error: config tiny needs "), lines[1]
    assert "multipliers (LFE5U-25F has 28)" in lines[1] and "does not fit ulx3s-25f" in lines[1]
    assert not (out / "logs").exists() and not (out / "work").exists()      # no tool ran


def test_build_refuses_tiny_on_the_icebreaker_with_the_shortfall_per_resource(tmp_path):
    r = _moeforge("build", "--board", "icebreaker", "--config", str(TINY), "-o", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    for what in ("multipliers (iCE40UP5K has 8)", "block RAMs (iCE40UP5K has 30)",
                 "LUTs (iCE40UP5K has 5280)"):
        assert what in err, err
    assert not (tmp_path / "o" / "logs").exists()


def test_tiny_fits_the_85f_by_the_estimate():
    from moeforge.fpga_boards.top import SoCWithStore, store_budget
    board = BOARDS["ulx3s-85f"]
    cfg = AccelConfig.from_toml(TINY)
    design = SoCWithStore(cfg, clock_hz=50e6, baud=2_000_000, budget_bits=store_budget(board))
    est = estimate_component(design, board.fpga, name="design")
    assert est.shortfalls() == []
    store = [u for path, u in est.modules.items() if path.startswith("store")]
    assert sum(u.bram_blocks for u in store) > 0, "the expert store is in block RAM"
    assert sum(u.lutram_luts for u in store) == 0
