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
    # per-operator perturbations: more pairs -> better held-out agreement
    true2 = note10.with_means({r: {k: e.mean * np.exp(rng.normal(0, 0.3)) for k, e in t.items()}
                               for r, t in note10.tables.items()}, source="measured")
    enc = spec.sample_encoded(700, rng)
    y = true2.predict(enc)
    curve = calibration_curve(note10, enc[:600], y[:600], enc[600:], y[600:], ns=(5, 600))
    assert curve[-1]["share_within"] >= 0.95 and curve[-1]["median_abs_rel_err"] < curve[0]["median_abs_rel_err"]
    A, cols = count_matrix(note10, enc[:3])
    assert A.sum(axis=1).tolist() == [6 + int(enc[i, 40:45].sum()) for i in range(3)]


def test_profiler_tiny(tmp_path):
    from ofa_core.latency import LatencyTable
    from ofa_core.mbv3 import build_supernet
    from ofa_core.profiler import check_table, profile_table
    spec = get_spec("ofa_mbv3_cifar10")
    path = tmp_path / "partial.json"
    t = profile_table(spec, [24], repeats=2, warmup=1, progress=False, progress_path=path)
    assert t.source == "measured" and t.resolutions == (24,) and t.environment["threads"] == 1
    assert t.environment["torch_version"] and t.batch_size == 1
    assert path.exists()
    # resume: everything is done, nothing is re-measured
    import ofa_core.profiler as prof
    orig = prof.time_module
    prof.time_module = lambda *a, **k: pytest.fail("re-measured a done key")
    try:
        t2 = profile_table(spec, [24], repeats=2, warmup=1, progress=False, progress_path=path)
    finally:
        prof.time_module = orig
    enc = spec.sample_encoded(5, np.random.default_rng(0), [24])
    np.testing.assert_allclose(t2.predict(enc), t.predict(enc))
    chk = check_table(build_supernet(spec), t, n=2, repeats=2, warmup=1)
    assert 0.0 <= chk["share_within"] <= 1.0 and len(chk["measured"]) == 2
