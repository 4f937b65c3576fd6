"""Reading (config, accuracy) pairs as other tools write them, and `ofa train-predictor` on them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ofa_core.predictor_data import AccuracyDataError, parse_accuracy_data
from ofa_core.spec import SubnetConfig, get_spec

SPEC = "ofa_mbv3_cifar10"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _data(n=300, seed=0):
    spec = get_spec(SPEC)
    rng = np.random.default_rng(seed)
    enc = spec.sample_encoded(n, rng)
    acc = 60 + 0.03 * enc[:, :40].sum(1) + 0.5 * (enc[:, -1] - 24) + rng.normal(0, 0.2, n)
    return spec, enc, acc


def _ofa_rows(spec, enc, acc):
    out = []
    for e, a in zip(enc, acc):
        c = SubnetConfig.from_encoded(spec, e).to_dict()
        out.append({"wid": None, "ks": c["ks"], "e": c["e"], "d": c["d"], "r": [c["r"]], "acc": float(a)})
    return out


def test_formats_scale_and_notes():
    spec, enc, acc = _data(20)
    rows = _ofa_rows(spec, enc, acc)
    jsonl = "\n".join(json.dumps(r) for r in rows)
    d = parse_accuracy_data(jsonl, spec, "percent")
    np.testing.assert_allclose(np.sort(d.acc), np.sort(acc / 100))
    assert any("ignored keys: wid" in n for n in d.notes) and "percent" in d.notes[0]
    # a JSON array of {config, accuracy} rows, fractions
    arr = [{"config": SubnetConfig.from_encoded(spec, e).to_dict(), "accuracy": a / 100, "id": i}
           for i, (e, a) in enumerate(zip(enc, acc))]
    d2 = parse_accuracy_data(json.dumps(arr), spec, "fraction")
    np.testing.assert_allclose(np.sort(d2.acc), np.sort(acc / 100))
    assert any("id" in n for n in d2.notes)
    # the published {config as JSON: accuracy} object, with one config twice (averaged)
    obj = {json.dumps({k: r[k] for k in ("wid", "ks", "e", "d", "r")}): r["acc"] / 100 for r in rows}
    d3 = parse_accuracy_data(json.dumps(obj), spec, "fraction")
    assert len(d3.acc) == 20
    dup = "\n".join([json.dumps(rows[0]), json.dumps({**rows[0], "acc": rows[0]["acc"] + 2})])
    d4 = parse_accuracy_data(dup, spec, "percent")
    assert len(d4.acc) == 1 and d4.acc[0] == pytest.approx((rows[0]["acc"] + 1) / 100)
    assert any("duplicate" in n for n in d4.notes)


@pytest.mark.parametrize("text,scale,match", [
    ('{"ks": [3], "e": [3], "d": [2], "r": 32, "acc": 70}', "percent", "config.ks"),
    ('[{"config": {"ks": [3]}, "acc": 1}]', "percent", "'e' is missing"),
    ("", "percent", "empty"),
    ('{"a": 1}', "percent", "not a config"),
])
def test_errors_name_the_row(text, scale, match):
    with pytest.raises(AccuracyDataError, match=match):
        parse_accuracy_data(text, get_spec(SPEC), scale)


def test_scale_is_explicit_and_checked():
    spec, enc, acc = _data(10)
    text = "\n".join(json.dumps(r) for r in _ofa_rows(spec, enc, acc))
    with pytest.raises(AccuracyDataError, match="use scale 'percent'"):
        parse_accuracy_data(text, spec, "fraction")
    frac = "\n".join(json.dumps({**r, "acc": r["acc"] / 100}) for r in _ofa_rows(spec, enc, acc))
    with pytest.raises(AccuracyDataError, match="look like fractions"):
        parse_accuracy_data(frac, spec, "percent")
    with pytest.raises(AccuracyDataError, match="never guessed"):
        parse_accuracy_data(frac, spec, "auto")


def test_cli_train_predictor_val_file_and_register(tmp_path):
    spec, enc, acc = _data(240)
    rows = _ofa_rows(spec, enc, acc)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:200]))
    (tmp_path / "val.json").write_text(json.dumps(rows[190:]))          # 10 overlap with training
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OFA_VAR_DIR": str(tmp_path / "var"),
           "OFA_DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite"}
    cmd = [sys.executable, "-m", "service.cli", "train-predictor", str(tmp_path / "train.jsonl"), "--scale",
           "percent", "--supernet", SPEC, "--val-file", str(tmp_path / "val.json"), "--epochs", "150", "--ensemble", "2",
           "--json", "--register"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout[r.stdout.index("{"):])
    assert rep["n_val"] == 50 and rep["n_train"] == 190 and rep["split"] == "validation file"
    assert any("10 training configs also in the validation file" in n for n in rep["notes"])
    assert 0 < rep["val_rmse_pp"] < 2.0 and rep["val_kendall_tau"] > 0.5 and rep["registered"]
    assert rep["ensemble"] == 2
    assert os.path.exists(tmp_path / "var" / "predictors" / f"{SPEC}.safetensors")
    from ofa_core.predictor import AccuracyPredictor
    p = AccuracyPredictor.load(rep["predictor"], spec)
    assert p.predict(enc[:3]).shape == (3,) and p.hidden == 800 and p.metrics["ensemble"] == 2
    bad = subprocess.run(cmd[:-2] + ["--scale", "fraction"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "use scale 'percent'" in bad.stderr
