"""The calibration model (ofa_core.calibrate): recovers synthetic devices, beats the family baseline, prices
unseen resolutions, records its provenance, suggests informative configs. Seeded; small spaces where possible."""
import numpy as np
import pytest

from bench.calib_devices import DEVICES, device_table, timings
from ofa_core.calib_features import OperatorLayout
from ofa_core.calibrate import (agreement, calibrate, family_baseline, fit_calibration, suggest_configs)
from ofa_core.costs import CostModel
from ofa_core.latency import LatencyTable
from ofa_core.spec import get_spec

CIFAR = "ofa_mbv3_cifar10"
W10 = "ofa_mbv3_d234_e346_k357_w1.0"


def _device(spec, name, seed, n_train, n_test=600):
    dev = DEVICES[name]
    true = device_table(dev, spec, seed)
    rng = np.random.default_rng(seed)
    tr, te = spec.sample_encoded(n_train, rng), spec.sample_encoded(n_test, rng)
    return dev, true, tr, timings(dev, true, tr, rng), te, timings(dev, true, te, rng)


def test_layout_counts_match_the_table_and_costs():
    spec = get_spec(CIFAR)
    lay = OperatorLayout(spec, spec.resolutions)
    true = device_table(DEVICES["compute-bound (mobile CPU)"], spec, 0)
    enc = spec.sample_encoded(50, np.random.default_rng(1))
    x = lay.from_table(true)
    np.testing.assert_allclose(lay.counts(enc) @ x, true.predict(enc), rtol=1e-12)
    # the per-operator MAC features add up to the cost model's MACs
    names = lay.names
    mac_cols = [names.index(n) for n in names if "macs" in n]
    np.testing.assert_allclose((lay.counts(enc) @ lay.F[:, mac_cols]).sum(1), CostModel(spec).macs(enc), rtol=1e-12)
    with pytest.raises(ValueError, match="resolution 28"):
        OperatorLayout(spec, (24, 32)).counts(spec.sample_encoded(5, np.random.default_rng(0), [28]))


def test_recovers_a_synthetic_devices_table_noise_free():
    """With enough noise-free timings the fit is the device's table: every held-out config within 1%."""
    spec = get_spec(CIFAR)
    dev = DEVICES["memory-bound (edge NPU)"]
    true = device_table(dev, spec, 3)
    rng = np.random.default_rng(3)
    tr, te = spec.sample_encoded(600, rng), spec.sample_encoded(400, rng)
    res = fit_calibration(spec, tr, true.predict(tr), cv_folds=0)
    rel = np.abs(res.table.predict(te) / true.predict(te) - 1)
    assert rel.max() < 0.01, rel.max()
    # block operators (identifiable one by one) are recovered individually
    got = OperatorLayout(spec, spec.resolutions).from_table(res.table)
    want = OperatorLayout(spec, spec.resolutions).from_table(true)
    nb = OperatorLayout(spec, spec.resolutions).n_block_cols
    assert np.median(np.abs(got[:nb] / want[:nb] - 1)) < 0.02


@pytest.mark.parametrize("name", ["launch-bound (GPU, batch 1)", "throughput (GPU, batch 64)"])
def test_beats_the_family_baseline_at_30_and_100(name):
    spec = get_spec(W10)
    for n in (30, 100):
        wins = []
        for seed in (0, 1):
            dev, true, tr, ytr, te, yte = _device(spec, name, seed, n)
            base = agreement(family_baseline(spec, tr, ytr).predict(te), yte)
            ours = agreement(fit_calibration(spec, tr, ytr, batch_size=dev.batch, cv_folds=0, seed=seed)
                             .table.predict(te), yte)
            wins.append(ours["share_within_5"] - base["share_within_5"])
            assert ours["share_within_10"] >= base["share_within_10"] - 0.01, (n, seed, ours, base)
        assert np.mean(wins) > 0, (n, wins)


def test_provenance_batch_and_round_trip():
    spec = get_spec(CIFAR)
    dev, true, tr, ytr, te, yte = _device(spec, "throughput (GPU, batch 64)", 0, 40)
    res = fit_calibration(spec, tr, ytr, batch_size=64, seed=0)
    t = res.table
    assert t.source == "calibrated" and t.batch_size == 64
    cal = t.environment["calibration"]
    assert cal["n_timings"] == 40 and cal["method"] == "hierarchical-gp" and cal["batch_size"] == 64
    assert cal["cv"]["folds"] == 5 and 0.0 <= cal["cv"]["share_within_10"] <= 1.0 and cal["cv"]["n"] == 40
    assert cal["prior"] == "cost-model" and cal["fit_seconds"] > 0 and set(cal["hyper"]) >= {"op", "noise"}
    back = LatencyTable.from_json_text(t.to_json())
    assert back.batch_size == 64 and back.environment["calibration"]["n_timings"] == 40
    np.testing.assert_allclose(back.predict(te), t.predict(te))


def test_unseen_resolution_priced_by_the_cost_model():
    spec = get_spec(CIFAR)
    dev = DEVICES["compute-bound (mobile CPU)"]
    true = device_table(dev, spec, 0)
    rng = np.random.default_rng(0)
    tr = spec.sample_encoded(60, rng, [24, 32])
    te = spec.sample_encoded(200, rng, [28])
    res = fit_calibration(spec, tr, timings(dev, true, tr, rng), cv_folds=0)
    assert res.table.resolutions == (24, 28, 32)
    assert agreement(res.table.predict(te), true.predict(te))["share_within_10"] >= 0.9


def test_prior_rescaled_and_chosen(note10):
    spec = note10.spec
    rng = np.random.default_rng(0)
    true = note10.with_means({r: {k: e.mean * 0.4 for k, e in t.items()} for r, t in note10.tables.items()},
                             source="measured")
    enc = spec.sample_encoded(40, rng)
    res = fit_calibration(spec, enc[:3], true.predict(enc[:3]), prior=note10)     # 3 timings: prior rescaled
    np.testing.assert_allclose(res.table.predict(enc[3:]), true.predict(enc[3:]), rtol=1e-4)
    cal = calibrate(note10, enc, true.predict(enc))
    assert cal.environment["calibration"]["prior"] == "imported" and cal.resolutions == note10.resolutions


def test_bad_input_is_named():
    spec = get_spec(CIFAR)
    enc = spec.sample_encoded(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="matching"):
        fit_calibration(spec, enc, [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fit_calibration(spec, enc, [1.0, -2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="resolution"):
        fit_calibration(spec, enc, [1.0] * 4, resolutions=[40])
    with pytest.raises(ValueError, match="prior"):
        calibrate(None, enc, [1.0] * 4)


def test_suggestions_spread_and_condition_on_what_was_timed():
    spec = get_spec(CIFAR)
    enc, sd = suggest_configs(spec, 12, seed=0, pool=400)
    assert enc.shape == (12, spec.enc_width) and len(np.unique(enc, axis=0)) == 12
    assert set(enc[:, -1]) == set(spec.resolutions)          # every resolution asked for early
    assert np.all(sd > 0)
    # once those are timed, the next suggestions are others, and less uncertain
    enc2, sd2 = suggest_configs(spec, 12, seed=0, pool=400, observed=enc)
    assert not {r.tobytes() for r in enc2} & {r.tobytes() for r in enc}
    assert sd2.max() < sd.max()
    # from a fitted table
    dev = DEVICES["compute-bound (mobile CPU)"]
    true = device_table(dev, spec, 0)
    res = fit_calibration(spec, enc, true.predict(enc), cv_folds=0)
    enc3, sd3 = suggest_configs(spec, 5, table=res.table, observed=enc, hyper=res.report["hyper"], seed=1, pool=400)
    assert enc3.shape == (5, spec.enc_width) and np.all(np.isfinite(sd3))


def test_batch_features_scale_activations_not_weights():
    spec = get_spec(CIFAR)
    a, b = OperatorLayout(spec, (32,), 1), OperatorLayout(spec, (32,), 8)
    n = a.names
    np.testing.assert_allclose(b.F[:, n.index("pw_macs")], 8 * a.F[:, n.index("pw_macs")])
    np.testing.assert_allclose(b.F[:, n.index("param_elems")], a.F[:, n.index("param_elems")])


def test_bench_calibration_smoke(capsys):
    """The benchmark runs end to end (tiny settings; its figures come from full runs)."""
    import re
    import bench.bench_calibration as bc
    bc.main(["--ns", "10", "30", "--seeds", "1", "--test", "100", "--devices", "mobile", "GPU, batch 1",
             "--time-n", "40", "--time-repeats", "1", "--supernet", CIFAR, "--suggest", "9"])
    out = capsys.readouterr().out
    rows = re.findall(r"^(.+?)\s+(\d+) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \|", out, re.M)
    assert len(rows) == 4 and {r[1] for r in rows} == {"10", "30"}
    assert all(0 <= float(v) <= 1 for r in rows for v in r[2:])
    assert re.search(r"fit of 40 timings \(ofa_mbv3_cifar10\): ours [\d.]+ s fastest", out)
    assert re.search(r"random [\d.]+ / [\d.]+ \| suggested [\d.]+ / [\d.]+ \| random\+suggested", out)


def test_bench_calibration_with_the_note10_prior(capsys, note10):
    import bench.bench_calibration as bc
    from tests.search.conftest import NOTE10
    bc.main(["--ns", "10", "--seeds", "1", "--test", "100", "--devices", "mobile", "--time-n", "20",
             "--time-repeats", "1", "--suggest", "0", "--note10-prior", NOTE10])
    out = capsys.readouterr().out
    assert "ofa_mbv3_d234_e346_k357_w1.2 (5 resolutions)" in out and "with Note10 prior" in out
