"""The dashboard benchmark script runs end to end (tiny settings; its figures come from full runs)."""
import re
import sys

from ofa_service_testlib import ROOT


def test_bench_dashboard_smoke(capsys):
    sys.path.insert(0, ROOT)
    import bench.bench_dashboard as bd
    bd.main(["--devices", "2", "--loads", "2"])
    out = capsys.readouterr().out
    assert re.search(r"^\s+/\s+[\d.]+ ms\s+JSON /devices\?limit=2\s+[\d.]+ ms\s+ratio\s+[\d.]+$", out, re.M), out
    assert re.search(r"dashboard /\s+[\d.]+ ms", out), out
