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
    assert "per seed (ours acc / published-structure ref acc / lean ref acc, speed-ups): 0:" in out
    assert re.search(r"front: \d+ points", out)
    assert "published sums: full w1.2 @224 = 92.40 ms, smallest @160 = 9.89 ms" in out
    assert re.search(r"6 random sub-networks timed end to end in the same interleaved rounds", out)
    assert "N=    3:" in out                                                  # host calibration on the check pairs


def test_published_structure_reference_agrees_with_table_and_predictor(note10, published_predictor):
    """Both references price a config exactly as the table does and featurise it exactly as the predictor does."""
    import numpy as np

    from ofa_core.spec import SubnetConfig
    spec = note10.spec
    enc = spec.sample_encoded(40, np.random.default_rng(3))
    samples = [SubnetConfig.from_encoded(spec, e).to_dict() for e in enc]
    pub = bs.PubLatencyTable(note10)
    lean = bs.RefLatency(note10)
    ours = note10.predict(enc)
    for s, want in zip(samples, ours):
        assert abs(pub.predict_efficiency(dict(s, r=[s["r"]])) - want) < 1e-9
        assert abs(lean.predict(s) - want) < 1e-9
    acc = bs.PubAccuracyPredictor(published_predictor.model).predict_accuracy([dict(s, r=[s["r"]]) for s in samples])
    np.testing.assert_allclose(acc.view(-1).numpy(), published_predictor.predict(enc), atol=1e-5)
