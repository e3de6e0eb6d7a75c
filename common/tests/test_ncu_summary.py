"""common.ncu_summary on small synthetic ncu CSV exports (the layout `--page raw --csv` and `--page source --csv`
write: a header, a units row, one row per kernel; ==PROF== lines before the table)."""
import gzip
import json

import pytest

from common import ncu_summary as ns

RAW = '''==PROF== Connected to process 1
"ID","Kernel Name","gpu__time_duration.sum","sm__throughput.avg.pct_of_peak_sustained_elapsed","launch__registers_per_thread","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio"
"","","usecond","%","register/thread","ratio","ratio","ratio"
"0","seesaw_kernel","136.50","71.2","255","0.5","3.25","0"
'''
SASS = '''"Kernel Name","seesaw_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","stall_wait","stall_long_sb","stall_wait (Not Issued)"
"0x10","HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ","30","20","25","5","20"
"0x20","SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR8], R3","60","60","0","60","0"
"0x30","FADD R1, R2, R3","10","0","10","0","0"
"0x40","NOP","0","0","0","0","0"
'''


def test_digest_of_a_raw_export_and_its_sass(tmp_path):
    (tmp_path / "raw.csv.gz").write_bytes(gzip.compress(RAW.encode()))
    (tmp_path / "sass.csv").write_text(SASS)
    s = ns.main([str(tmp_path / "raw.csv.gz"), "--sass", str(tmp_path / "sass.csv"), "--json",
                 str(tmp_path / "d.json")])
    (k,) = s["kernels"]
    assert k["name"] == "seesaw_kernel"
    head = {label: v for label, v, _ in k["headline"]}
    assert head == {"duration": 136.5, "SM throughput % of peak": 71.2, "registers / thread": 255.0}
    assert k["stalls"] == [("barrier", 3.25), ("long_scoreboard", 0.5)]  # largest first, zeros left out
    top = s["sass"]["top"]
    assert [t["address"] for t in top] == ["0x20", "0x10", "0x30"] and s["sass"]["samples"] == 100
    assert top[0]["share"] == pytest.approx(0.6) and [t["stall"] for t in top] == ["long_sb", "wait", "wait"]
    assert s["sass"]["stall_samples"] == [("long_sb", 65.0), ("wait", 35.0)]  # the "(Not Issued)" copies left out
    md = ns.markdown(s)
    assert "| barrier | 3.25 | 87% |" in md and "SYNCS.PHASECHK" in md and "| long_sb | 65 | 65.0% |" in md
    assert json.loads((tmp_path / "d.json").read_text())["kernels"][0]["name"] == "seesaw_kernel"


def test_bad_inputs_say_what_is_wrong(tmp_path):
    (tmp_path / "empty.csv").write_text("==PROF== nothing profiled\n")
    with pytest.raises(ValueError, match="no CSV table"):
        ns.read_raw(tmp_path / "empty.csv")
    (tmp_path / "short.csv").write_text('"ID","Kernel Name"\n"",""\n')
    with pytest.raises(ValueError, match="at least one kernel row"):
        ns.read_raw(tmp_path / "short.csv")
    (tmp_path / "nosass.csv").write_text('"Kernel Name","k",\n"Offset","Text"\n"0x0","NOP"\n')
    with pytest.raises(ValueError, match="no Source"):
        ns.read_sass(tmp_path / "nosass.csv")
    with pytest.raises(SystemExit, match="no such file"):
        ns.main([str(tmp_path / "missing.csv")])
