import os

import numpy as np
import pytest

from ofa_core.latency import LatencyTable, LatencyTableError, required_operator_keys
from ofa_core.spec import SubnetConfig, get_spec

NOTE10 = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ofa-reference", "note10")


def test_published_sums(note10):
    spec = note10.spec
    assert note10.predict_one(spec.max_config(224)) == pytest.approx(92.4, abs=0.05)
    assert note10.predict_one(spec.min_config(160)) == pytest.approx(9.9, abs=0.05)
    assert all(len(required_operator_keys(spec, r)) == 96 for r in note10.resolutions)
    assert note10.source == "imported" and note10.batch_size == 1


def test_vectorized_equals_per_config(note10):
    spec = note10.spec
    enc = spec.sample_encoded(300, np.random.default_rng(1))
    vec = note10.predict(enc)
    ref = [note10.predict_one(SubnetConfig.from_encoded(spec, e)) for e in enc]
    np.testing.assert_allclose(vec, ref, rtol=1e-12)
    keys = note10.operator_keys(spec.max_config(224))
    assert keys[0] == "Conv-input:224x224x3-output:112x112x24" and len(keys) == 2 + 20 + 4
    assert "expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:7-stride:2-idskip:0-se:0-hs:0" in keys


def test_minimum_exact(note10):
    v, enc = note10.minimum()
    assert v == pytest.approx(note10.predict(enc[None])[0])
    assert v <= note10.predict(note10.spec.sample_encoded(5000, np.random.default_rng(0))).min()


def test_json_and_yaml_roundtrip(note10, tmp_path):
    t2 = LatencyTable.from_json(note10.to_json())
    enc = note10.spec.sample_encoded(50, np.random.default_rng(2))
    np.testing.assert_allclose(t2.predict(enc), note10.predict(enc))
    note10.to_yaml_dir(tmp_path)
    t3 = LatencyTable.from_dir(note10.spec, tmp_path)
    np.testing.assert_allclose(t3.predict(enc), note10.predict(enc))
    assert t3.environment.get("device") == "Samsung Note10"


def _text(r):
    with open(os.path.join(NOTE10, f"{r}_lookup_table.yaml")) as f:
        return f.read()


def test_missing_key_named(note10):
    text = _text(192)
    key = "Logits-input:1x1x1536-output:1000"
    lines = text.splitlines()
    i = lines.index(key + ":")
    broken = "\n".join(lines[:i] + lines[i + 4:])
    with pytest.raises(LatencyTableError, match=r"r=192.*Logits-input"):
        LatencyTable.from_yaml(note10.spec, {192: broken})


def test_non_numeric_mean_and_yaml_syntax(note10):
    text = _text(160).replace("  mean: 0.495562248995984", "  mean: fast", 1)
    with pytest.raises(LatencyTableError, match=r"Conv-input:160x160x3.*mean.*line"):
        LatencyTable.from_yaml(note10.spec, {160: text})
    with pytest.raises(LatencyTableError, match=r"YAML syntax error at line 3"):
        LatencyTable.from_yaml(note10.spec, {160: "a:\n  mean: 1\n b: [\n"})
    with pytest.raises(LatencyTableError, match="JSON syntax error"):
        LatencyTable.from_json("{not json")
    with pytest.raises(LatencyTableError, match="not in the latency table"):
        spec = get_spec("ofa_mbv3_d234_e346_k357_w1.2")
        LatencyTable.from_yaml(spec, {160: _text(160)}).predict(spec.max_config(224).encode())


def test_100k_batch_matches_reference_on_a_sample(note10):
    enc = note10.spec.sample_encoded(100_000, np.random.default_rng(0))
    lat = note10.predict(enc)
    assert lat.shape == (100_000,) and np.isfinite(lat).all()
    idx = np.arange(0, 100_000, 9973)
    np.testing.assert_allclose(lat[idx], [note10.predict_one(SubnetConfig.from_encoded(note10.spec, enc[i]))
                                         for i in idx], rtol=0, atol=1e-9)


def test_a_string_is_always_table_text_never_a_file_name(tmp_path):
    from ofa_core.latency import parse_yaml_table
    secret = tmp_path / "160_lookup_table.yaml"
    secret.write_text(_text(160))
    with pytest.raises(LatencyTableError, match="expected a mapping"):
        parse_yaml_table(str(secret), 160)           # the path string is YAML text: a scalar, not read
    assert len(parse_yaml_table(secret, 160)) > 0    # a pathlib.Path is a file
