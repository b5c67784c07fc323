"""Report parsing on saved Yosys and nextpnr outputs (data/), cross-checked against the other
output of the same run (nextpnr's log), and the build report made from them."""

import gzip
import json
import re
import shutil
from collections import Counter

import pytest

from moeforge import AccelConfig
from moeforge.fpga_boards.boards import BOARDS
from moeforge.fpga_boards.build import make_report
from moeforge.fpga_boards.report import (ReportError, format_table, parse_nextpnr_report,
                                         unit_usage)
from moeforge.fpga_boards.resources import estimate_component
from moeforge.fpga_boards.top import BoardTop, plan_pll

from probe_design import ProbeDesign


def _load(data_dir, name):
    return json.loads((data_dir / name).read_text())


def _last_section(log: str, header: str) -> str:
    """The text after the last line containing `header`."""
    return log[log.rindex(header):]


def test_post_route_fmax_and_critical_path_match_nextpnr_s_log(data_dir):
    timing = parse_nextpnr_report(_load(data_dir, "probe-ulx3s-85f.nextpnr.json"))
    log = (data_dir / "probe-ulx3s-85f.nextpnr.log").read_text()
    (clock, mhz), = re.findall(r"Max frequency for clock '([^']+)': ([0-9.]+) MHz", log)[-1:]
    assert set(timing.fmax) == {clock}
    achieved, constraint = timing.fmax[clock]
    assert round(achieved, 2) == float(mhz) and constraint == 50
    assert timing.worst() == (clock, achieved, constraint)
    section = _last_section(log, f"Critical path report for clock '{clock}'")
    section = section[:section.index("\n\n")] if "\n\n" in section else section
    sources = re.findall(r"Source (\S+)", section)
    sinks = re.findall(r"Sink (\S+)", section)
    cp = timing.path_of(clock)
    assert cp.start == sources[0] and cp.end == sinks[-1]
    total = re.findall(r"([0-9.]+) ns logic, ([0-9.]+) ns routing", section)
    assert total and abs(cp.delay_ns - sum(map(float, total[-1]))) < 0.02


def test_utilisation_matches_nextpnr_s_log(data_dir):
    timing = parse_nextpnr_report(_load(data_dir, "probe-ulx3s-85f.nextpnr.json"))
    log = (data_dir / "probe-ulx3s-85f.nextpnr.log").read_text()
    section = _last_section(log, "Device utilisation")
    for bel in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD", "EHXPLLL"):
        used, avail = map(int, re.search(rf"{bel}:\s+(\d+)/\s*(\d+)", section).groups())
        assert timing.utilisation[bel] == (used, avail), bel
    assert timing.utilisation["EHXPLLL"][0] == 1            # the board top's PLL was placed


def test_a_timing_miss_is_seen_on_the_ice40_run(data_dir):
    timing = parse_nextpnr_report(_load(data_dir, "probe-icebreaker.nextpnr.json"))
    clock, achieved, constraint = timing.worst()
    assert clock == "clk" and achieved < constraint


def _netlist(data_dir):
    with gzip.open(data_dir / "probe-ulx3s-85f.netlist.json.gz", "rt") as f:
        return json.load(f)


def test_unit_usage_gives_each_cell_to_its_unit_and_adds_them_up(data_dir):
    netlist = _netlist(data_dir)
    own, inclusive = unit_usage(netlist, "top", ["design", "design.scrambler"])
    cells = netlist["modules"]["top"]["cells"]
    scr = Counter(c["type"] for n, c in cells.items() if n.startswith("design.scrambler."))
    assert own["design.scrambler"].multipliers == scr["MULT18X18D"] == 7
    assert own["design.scrambler"].bram_blocks == scr["DP16KD"] == 1
    assert own["design.scrambler"].ffs == scr["TRELLIS_FF"]
    assert own["design.scrambler"].luts == scr["LUT4"] + 2 * scr["CCU2C"]
    assert inclusive["design"].luts == own["design"].luts + own["design.scrambler"].luts
    assert inclusive[""].luts == sum(u.luts for u in own.values())
    glue = Counter(c["type"] for n, c in cells.items() if not n.startswith("design."))
    assert own[""].ffs == glue["TRELLIS_FF"] > 0                  # the LED counters, the reset
    timing = parse_nextpnr_report(_load(data_dir, "probe-ulx3s-85f.nextpnr.json"))
    assert timing.utilisation["MULT18X18D"][0] == inclusive[""].multipliers
    assert timing.utilisation["DP16KD"][0] == inclusive[""].bram_blocks
    assert timing.utilisation["TRELLIS_FF"][0] == inclusive[""].ffs


@pytest.mark.parametrize("bad", [{}, {"fmax": {"c": {}}, "utilization": {}},
                                 {"fmax": {}, "utilization": {"X": {"used": "n/a", "available": 1}}}])
def test_a_malformed_nextpnr_report_is_a_report_error(bad):
    with pytest.raises(ReportError, match="the nextpnr report is malformed"):
        parse_nextpnr_report(bad)


def test_unit_usage_needs_the_top():
    with pytest.raises(ReportError, match="module 'top' is not in the netlist"):
        unit_usage({"modules": {"other": {}}}, "top", [])


def test_the_build_report_from_saved_outputs(data_dir, tmp_path):
    board = BOARDS["ulx3s-85f"]
    cfg = AccelConfig.from_toml("configs/tiny.toml")
    design = ProbeDesign()
    estimate = estimate_component(design, board.fpga, name="design")
    top = BoardTop(board, cfg, baud=2_000_000, design=design, pll=plan_pll("ecp5", 25e6, 50e6))
    from amaranth.hdl import Fragment
    Fragment.get(top, board.make_platform())                 # elaborated, as a build would
    (tmp_path / "top.json").write_text(json.dumps(_netlist(data_dir)))
    shutil.copy(data_dir / "probe-ulx3s-85f.nextpnr.json", tmp_path / "report.json")
    r = make_report(board, cfg, top, estimate, tmp_path, config_name="probe")
    util = _load(data_dir, "probe-ulx3s-85f.nextpnr.json")["utilization"]
    assert r["resources"]["luts"] == {"used": util["TRELLIS_COMB"]["used"], "available": 83640}
    assert r["resources"]["multipliers"]["used"] == 7
    assert r["timing"]["met"] and r["timing"]["target_mhz"] == 50.0
    assert r["timing"]["critical_path"]["start"].startswith("design.scrambler.")
    assert set(r["units"]) == {"design", "design.scrambler", "(board: PLL, reset, LEDs, pins)"}
    assert r["units"]["design.scrambler"]["estimate"] == estimate.modules["scrambler"].as_dict()
    assert r["estimate"]["total"]["multipliers"] == estimate.total.multipliers
    assert r["estimate"]["measured"]["multipliers"] == 7
    r["steps"] = {"elaborate": 1.0, "synthesis": 2.0}
    text = format_table(r)
    assert re.search(r"^multipliers +7 +156 +4.5% +8$", text, re.M), text
    mhz = _load(data_dir, "probe-ulx3s-85f.nextpnr.json")["fmax"]["$glbnet$clk"]["achieved"]
    assert f"clock: {mhz:.2f} MHz achieved, 50.00 MHz wanted: met" in text
    assert f"critical path: {r['timing']['critical_path']['start']} -> " in text
