import numpy as np
import pytest

from ofa_core.calibrate import calibrate, calibration_curve, count_matrix, share_within
from ofa_core.spec import get_spec


def test_calibration_recovers_known_table(note10):
    spec = note10.spec
    rng = np.random.default_rng(0)
    true = note10.with_means({r: {k: e.mean * 1.7 for k, e in t.items()} for r, t in note10.tables.items()},
                             source="measured")
    enc = spec.sample_encoded(60, rng)
    y = true.predict(enc)
    cal = calibrate(note10, enc[:10], y[:10])
    assert cal.source == "calibrated" and cal.environment["calibration_pairs"] == 10
    np.testing.assert_allclose(cal.predict(enc[10:]), y[10:], rtol=1e-3)
    assert share_within(cal, enc[10:], y[10:]) == 1.0 and share_within(note10, enc[10:], y[10:]) == 0.0
    # per-operator perturbations: more pairs -> better held-out agreement
    true2 = note10.with_means({r: {k: e.mean * np.exp(rng.normal(0, 0.3)) for k, e in t.items()}
                               for r, t in note10.tables.items()}, source="measured")
    enc = spec.sample_encoded(700, rng)
    y = true2.predict(enc)
    curve = calibration_curve(note10, enc[:600], y[:600], enc[600:], y[600:], ns=(5, 600))
    assert curve[-1]["share_within"] >= 0.95 and curve[-1]["median_abs_rel_err"] < curve[0]["median_abs_rel_err"]
    A, cols = count_matrix(note10, enc[:3])
    assert A.sum(axis=1).tolist() == [6 + int(enc[i, 40:45].sum()) for i in range(3)]


def test_profiler_network_mode_covers_resumes_and_checks(tmp_path, monkeypatch):
    import ofa_core.profiler as prof
    from ofa_core.latency import required_operator_keys
    from ofa_core.mbv3 import build_supernet
    spec = get_spec("ofa_mbv3_cifar10")
    # the covering networks run every operator key at least `covers` times
    for r in spec.resolutions:
        counts: dict[str, int] = {}
        for e in prof.covering_configs(spec, r, covers=2):
            for k in prof.network_operator_keys(spec, e):
                counts[k] = counts.get(k, 0) + 1
        assert set(counts) == set(required_operator_keys(spec, r)) and min(counts.values()) >= 2
    # one clock reading per operator, in key order, and the same output as forward
    from ofa_core.extract import extract
    from ofa_core.spec import SubnetConfig
    sup = build_supernet(spec)
    e = spec.sample_encoded(1, np.random.default_rng(3), [28])[0]
    net = extract(sup, SubnetConfig.from_encoded(spec, e)).eval()
    import torch
    with torch.no_grad():
        t = prof.time_layers(net, torch.randn(1, 3, 28, 28))
    assert len(t) == len(prof.network_operator_keys(spec, e)) and (t > 0).all()

    path = tmp_path / "partial.json"
    t = prof.profile_table(spec, [24], repeats=2, warmup=1, covers=1, progress=False, progress_path=path, check=3,
                           supernet=sup)
    assert t.source == "measured" and t.resolutions == (24,) and t.environment["mode"] == "network"
    assert set(t.tables[24]) == set(required_operator_keys(spec, 24))
    assert all(x.mean > 0 for x in t.tables[24].values())
    c = t.environment["check"]
    assert c["n"] == 3 and 0.0 <= c["share_within"] <= 1.0 and c["min_ratio"] <= c["median_ratio"] <= c["max_ratio"]
    # resume: every round is done, nothing runs again, same table
    monkeypatch.setattr(prof, "_interleaved", lambda *a, **k: pytest.fail("re-measured a finished resolution"))
    t2 = prof.profile_table(spec, [24], repeats=2, warmup=1, covers=1, progress=False, progress_path=path, check=3,
                            supernet=sup)
    enc = spec.sample_encoded(5, np.random.default_rng(0), [24])
    np.testing.assert_allclose(t2.predict(enc), t.predict(enc))
    assert t2.environment["check"] == c
    monkeypatch.undo()
    chk = prof.check_table(sup, t, n=2, repeats=2, warmup=1)
    assert 0.0 <= chk["share_within"] <= 1.0 and len(chk["measured"]) == 2 and chk["statistic"] == "min"
    with pytest.raises(ValueError, match="statistic"):
        prof.profile_table(spec, [24], statistic="median", progress=False)
    with pytest.raises(ValueError, match="resolutions"):
        prof.profile_table(spec, [40], progress=False)


def test_profiler_operator_mode(tmp_path, monkeypatch):
    import ofa_core.profiler as prof
    spec = get_spec("ofa_mbv3_cifar10")
    path = tmp_path / "partial.json"
    t = prof.profile_table(spec, [24], mode="operator", repeats=2, warmup=1, progress=False, progress_path=path,
                           flush_bytes=1 << 16)
    assert t.environment["mode"] == "operator" and t.environment["statistic"] == "median"
    assert all(e.mean > 0 and e.count == 2 for e in t.tables[24].values())
    monkeypatch.setattr(prof, "time_module", lambda *a, **k: pytest.fail("re-measured a done key"))
    t2 = prof.profile_table(spec, [24], mode="operator", repeats=2, warmup=1, progress=False, progress_path=path)
    assert {k: e.mean for k, e in t2.tables[24].items()} == {k: e.mean for k, e in t.tables[24].items()}
