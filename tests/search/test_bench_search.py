"""The search benchmark script runs end to end (tiny settings; its figures come from full runs, not from here)."""
import re

import bench.bench_search as bs


def test_bench_search_smoke(capsys):
    bs.main(["--budgets", "25", "--generations", "5", "--repeats", "2", "--seeds", "0", "1",
             "--prof-repeats", "1", "--prof-n", "6", "--pareto-low", "15", "--pareto-high", "30"])
    out = capsys.readouterr().out
    row = re.search(r"^\s+25\.0 \|\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) \|\s+([\d.]+)\s+([\d.]+)\s+([\d.]+) \|\s+([\d.]+)x",
                    out, re.M)
    assert row, out
    assert float(row.group(3)) <= 25.0 and float(row.group(6)) <= 25.0         # both answers fit the budget
    assert "per seed (ours acc / ref acc, speed-up): 0:" in out
    assert re.search(r"front: \d+ points", out)
    assert "published sums: full w1.2 @224 = 92.40 ms, smallest @160 = 9.89 ms" in out
    assert re.search(r"6 random sub-networks timed end to end in the same interleaved rounds", out)
    assert "N=    3:" in out                                                  # host calibration on the check pairs
