import json

import numpy as np
import pytest

from ofa_core.predictor import (AccuracyPredictor, PredictorError, build_predictor_dataset, fill_mirrored_rows,
                                kendall_tau, read_predictor_dataset, train_predictor)
from ofa_core.spec import SubnetConfig, get_spec


def test_reproduces_published(published_predictor):
    spec = published_predictor.spec
    assert round(published_predictor.predict_one(spec.max_config(224)), 4) == 0.8359
    assert round(published_predictor.predict_one(spec.min_config(160)), 4) == 0.7531
    enc = spec.sample_encoded(64, np.random.default_rng(0))
    assert published_predictor.predict(enc).shape == (64,)


def test_skipped_blocks_zero(published_predictor):
    spec = published_predictor.spec
    f = published_predictor.features(spec.min_config(160).encode()[None])[0]
    assert f.shape == (128,) and f.sum() == 10 + 10 + 1
    assert f[120 + (160 - 112) // 16] == 1


def test_cifar_encoding_and_save_load(tmp_path):
    spec = get_spec("ofa_mbv3_cifar10")
    with pytest.raises(PredictorError):
        AccuracyPredictor(spec, encoding="published")
    rng = np.random.default_rng(0)
    enc = spec.sample_encoded(200, rng)
    # a synthetic "accuracy": bigger networks are better
    from ofa_core.spec import active_mask
    big = ((enc[:, :20] == 7) & active_mask(spec, enc[:, 40:45])).sum(1)
    acc = 0.6 + 0.01 * big + 0.02 * (enc[:, -1] - 24) / 4
    pred, m = train_predictor(enc, acc, spec, epochs=60, seed=0)
    assert pred.n_features == 20 * 3 * 2 + 3
    assert m["val_rmse_pp"] < 3.0 and m["val_kendall_tau"] > 0.3
    p2, m2 = train_predictor(enc, acc, spec, epochs=60, seed=0)
    np.testing.assert_array_equal(pred.predict(enc), p2.predict(enc))
    path = tmp_path / "p.safetensors"
    pred.save(path)
    loaded = AccuracyPredictor.load(path)
    assert loaded.encoding == "onehot" and loaded.metrics["val_rmse_pp"] == pytest.approx(m["val_rmse_pp"])
    np.testing.assert_allclose(loaded.predict(enc), pred.predict(enc))
    p2.save(tmp_path / "again.safetensors")          # the same predictor: the same bytes (a stable sha256)
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_kendall_tau():
    assert kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_dataset_builder_resumes(tmp_path):
    spec = get_spec("ofa_mbv3_cifar10")
    calls = []

    def ev(net, cfg):
        calls.append(cfg)
        return 0.5 + 0.01 * sum(cfg.d)

    out = tmp_path / "rows.jsonl"
    enc, acc = build_predictor_dataset(None, spec, 6, ev, out, rng=3, progress=False)
    assert len(acc) == 6 and len(calls) == 6
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])   # interrupted mid-write
    enc2, acc2 = build_predictor_dataset(None, spec, 6, ev, out, rng=3, progress=False)
    assert len(calls) == 8 and len(acc2) == 6
    np.testing.assert_array_equal(np.sort(acc2), np.sort(acc))
    with pytest.raises(PredictorError):
        build_predictor_dataset(None, spec, 2, lambda n, c: 80.0, tmp_path / "x.jsonl", rng=0, progress=False)


def _fake_eval(cfg, mirrored: bool) -> float:
    """A deterministic stand-in for a measurement: depends on the config, differs between the two views."""
    return 0.5 + 0.01 * sum(cfg.d) + (0.003 * cfg.ks[0] if mirrored else 0.0)


def test_rows_with_mirrored_accuracy_and_the_mirror_avg_label(tmp_path):
    spec = get_spec("ofa_mbv3_cifar10")
    out = tmp_path / "rows.jsonl"
    enc, acc = build_predictor_dataset(
        None, spec, 5, lambda n, c: {"acc": _fake_eval(c, False), "acc_mirrored": _fake_eval(c, True)}, out,
        rng=1, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(set(r) == {"i", "config", "acc", "acc_mirrored", "seconds"} for r in rows)
    enc_m, avg = read_predictor_dataset(out, spec, label="mirror_avg")
    np.testing.assert_array_equal(enc_m, enc)
    np.testing.assert_allclose(avg, [(r["acc"] + r["acc_mirrored"]) / 2 for r in rows])
    np.testing.assert_allclose(acc, [r["acc"] for r in rows])              # the plain label by default
    with pytest.raises(PredictorError, match="label must be one of"):
        read_predictor_dataset(out, spec, label="mirror")
    plain = tmp_path / "plain.jsonl"
    build_predictor_dataset(None, spec, 3, lambda n, c: _fake_eval(c, False), plain, rng=1, progress=False)
    with pytest.raises(PredictorError, match="row 0 has no acc_mirrored"):
        read_predictor_dataset(plain, spec, label="mirror_avg")
    for bad, msg in (({"acc_mirrored": 0.5}, "expected acc"), ({"acc": 0.5, "top5": 0.9}, "expected acc"),
                     ({"acc": 0.5, "acc_mirrored": 1.5}, "acc_mirrored=1.5")):
        with pytest.raises(PredictorError, match=msg):
            build_predictor_dataset(None, spec, 2, lambda n, c, b=bad: b, tmp_path / "bad.jsonl", rng=0,
                                    progress=False)


def test_fill_mirrored_rows_verifies_resumes_and_stops_on_a_mismatch(tmp_path):
    spec = get_spec("ofa_mbv3_cifar10")
    path = tmp_path / "rows.jsonl"
    build_predictor_dataset(None, spec, 7, lambda n, c: _fake_eval(c, False), path, rng=2, progress=False)
    calls = []

    def ev(net, cfg, plain, fail_at=None):
        if len(calls) == fail_at:
            raise RuntimeError("worker killed")
        calls.append(plain)
        got = {"acc_mirrored": _fake_eval(cfg, True)}
        return {"acc": _fake_eval(cfg, False), **got} if plain else got

    with pytest.raises(RuntimeError):                                        # interrupted after 4 rows
        fill_mirrored_rows(path, spec, None, lambda n, c, p: ev(n, c, p, fail_at=4), verify_every=3,
                           save_every=100, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 7 and sum("acc_mirrored" in r for r in rows) == 4      # kept what it had measured
    assert calls == [True, False, False, True]                               # the first of every 3 re-measured
    assert fill_mirrored_rows(path, spec, None, ev, verify_every=3, progress=False) == 3   # resumes: the rest
    assert calls[4:] == [True, False, False]
    _, avg = read_predictor_dataset(path, spec, label="mirror_avg")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        cfg = SubnetConfig.from_dict(spec, r["config"])
        assert r["acc_mirrored"] == _fake_eval(cfg, True) and r["acc"] == _fake_eval(cfg, False)
    assert fill_mirrored_rows(path, spec, None, ev, progress=False) == 0     # nothing left to fill
    # a measurement that does not reproduce the row's accuracy stops before that row is written
    other = tmp_path / "other.jsonl"
    build_predictor_dataset(None, spec, 3, lambda n, c: _fake_eval(c, False), other, rng=4, progress=False)
    before = other.read_text()
    with pytest.raises(PredictorError, match="row 0 measured .* its data set says"):
        fill_mirrored_rows(other, spec, None, lambda n, c, p: {"acc": 0.1, "acc_mirrored": 0.2}, progress=False)
    assert other.read_text() == before


def test_fast_path_matches_plain_mlp(published_predictor):
    """The gather-and-sum first layer + float32 matmuls equal the torch MLP on one-hot features."""
    pred = published_predictor
    spec = pred.spec
    enc = spec.sample_encoded(3000, np.random.default_rng(1))
    np.testing.assert_allclose(pred.predict(enc), pred.predict_mlp(enc), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pred.predict(enc), pred.predict_codes(pred.codes(enc), enc[:, -1]))
    # skipped blocks carry the skip code whatever their genes say
    c = pred.codes(spec.min_config(160).encode()[None])[0]
    assert (c == pred.n_codes - 1).sum() == 10
    with pytest.raises(PredictorError):
        pred.predict_codes(pred.codes(enc[:2]), np.array([100, 160]))


def test_fast_path_follows_weight_updates():
    spec = get_spec("ofa_mbv3_cifar10")
    pred = AccuracyPredictor(spec)
    enc = spec.sample_encoded(50, np.random.default_rng(0))
    a = pred.predict(enc)
    import torch
    with torch.no_grad():
        pred.model[0].weight.mul_(2.0)       # in-place change: the cached fast weights must refresh
    b = pred.predict(enc)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, pred.predict_mlp(enc), atol=1e-6)


def test_codes_predictor_matches_predict_codes(published_predictor, note10):
    pred = published_predictor
    enc = note10.spec.sample_encoded(300, np.random.default_rng(4))
    lean = pred.codes_predictor()
    np.testing.assert_array_equal(lean(pred.codes(enc), enc[:, -1]), pred.predict_codes(pred.codes(enc), enc[:, -1]))
    np.testing.assert_allclose(lean(pred.codes(enc[:7]), enc[:7, -1]), pred.predict_mlp(enc[:7]), atol=1e-6)


def test_codes_predictor_any_depth():
    spec = get_spec("ofa_mbv3_cifar10")
    enc = spec.sample_encoded(50, np.random.default_rng(2))
    for n_layers in (1, 2, 4):
        pred = AccuracyPredictor(spec, hidden=32, n_layers=n_layers)
        np.testing.assert_allclose(pred.codes_predictor()(pred.codes(enc), enc[:, -1]), pred.predict_mlp(enc),
                                   atol=1e-6)


def test_ensemble_is_the_average_of_its_members(tmp_path):
    from ofa_core.predictor import _train_one, average_predictors
    from ofa_core.spec import active_mask
    spec = get_spec("ofa_mbv3_cifar10")
    rng = np.random.default_rng(1)
    enc = spec.sample_encoded(200, rng)
    big = ((enc[:, :20] == 7) & active_mask(spec, enc[:, 40:45])).sum(1)
    acc = 0.6 + 0.01 * big + 0.02 * (enc[:, -1] - 24) / 4 + rng.normal(0, 0.002, 200)
    ens, m = train_predictor(enc, acc, spec, epochs=20, seed=5, ensemble=3, hidden=64)
    val = np.random.default_rng(5).permutation(200)[:40]
    members = [_train_one(enc, acc, spec, epochs=20, seed=5 + i, val_indices=val, hidden=64)[0] for i in range(3)]
    mean = np.mean([p.predict(enc) for p in members], axis=0)
    np.testing.assert_allclose(ens.predict(enc), mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ens.predict_mlp(enc), mean, rtol=0, atol=1e-5)
    assert m["ensemble"] == 3 and m["n_val"] == 40 and len(m["member_val_rmse_pp"]) == 3
    assert len({round(r, 6) for r in m["member_val_rmse_pp"]}) == 3          # different seeds, different members
    path = tmp_path / "ens.safetensors"
    ens.save(path)
    loaded = AccuracyPredictor.load(path)
    assert loaded.hidden == 192 and loaded.metrics["ensemble"] == 3
    np.testing.assert_allclose(loaded.predict(enc), mean, rtol=0, atol=1e-5)
    one = average_predictors(members[:1])
    np.testing.assert_allclose(one.predict(enc), members[0].predict(enc), rtol=0, atol=1e-6)
    with pytest.raises(PredictorError, match="ensemble"):
        train_predictor(enc, acc, spec, epochs=1, ensemble=0)
