"""Served sub-networks carry recalibrated BN statistics (issue 10): measured accuracy in results, uncalibrated
statistics never served while calibrated ones are pending, statistics stored durably, and the uncalibrated case
said so. On SQLite + the serverless broker and on PostgreSQL + Redis (the `env` fixture)."""
from __future__ import annotations

import io
import json

import pytest
import torch

from ofa_core.bn import apply_bn_stats
from ofa_core.export import load_safetensors_checkpoint
from ofa_core.extract import extract_state_dict
from ofa_core.imagepack import load_image_set
from ofa_core.measure import BNRecipe, measure_subnet
from ofa_core.spec import SubnetConfig

FORMATS = ("safetensors", "pt", "torchscript", "onnx")
SPEC = "ofa_mbv3_cifar10"


def _search(env, device="dev", budget=3.0, seed=3):
    env.add_device(device)
    r = env.client.post("/specialize", json={"device": device, "constraints": {"latency_ms": budget},
                                             "options": {"population": 16, "generations": 3, "seed": seed},
                                             "use_pareto": False})
    assert r.status_code == 202, r.text
    assert env.run_job(r.json()["id"]) == "succeeded"
    return env.client.get(f"/jobs/{r.json()['id']}").json()


def _independent(env, config):
    """Recalibrate and measure with ofa_core directly on the configured image files."""
    eng = env.store.get(SPEC)
    cfg = SubnetConfig.from_dict(eng.spec, config)
    calib = load_image_set(env.settings.calibration_data[SPEC])
    evaluation = load_image_set(env.settings.evaluation_data[SPEC])
    return cfg, measure_subnet(eng.supernet, cfg, calib, evaluation, BNRecipe())


def _running_stats(sd):
    return {k: v for k, v in sd.items() if k.endswith(("running_mean", "running_var"))}


def test_search_result_is_measured_and_downloads_are_recalibrated(env):
    job = _search(env)
    res = job["result"]
    cfg, m = _independent(env, res["config"])
    assert res["bn_calibrated"] is True and res["pending"] == []
    assert res["measured_images"] == 200 and res["measured_accuracy"] == m.accuracy
    sub = env.client.get(f"/subnets/{res['subnet_id']}").json()
    assert sub["measured_accuracy"] == m.accuracy and sub["predicted_accuracy"] is not None
    assert sub["bn_calibrated"] is True and sub["bn_calibration"]["calibration_images"] == 200
    r = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format=safetensors")
    assert r.status_code == 200 and r.headers["x-bn-calibrated"] == "true"
    sd, meta = load_safetensors_checkpoint(r.content)
    assert meta["bn_calibrated"] == "true" and json.loads(meta["bn_calibration"])["n_images"] == 200
    sliced = _running_stats(extract_state_dict(env.store.get(SPEC).supernet, cfg))
    got = _running_stats(sd)
    assert set(got) == set(m.stats) == set(sliced)
    for k in got:
        torch.testing.assert_close(got[k], m.stats[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(got[k], sliced[k]) for k in got)    # not the supernet's statistics
    pt = torch.load(io.BytesIO(env.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format=pt").content),
                    weights_only=True)
    assert pt["metadata"]["bn_calibrated"] == "true"
    for k in got:
        assert torch.equal(pt["state_dict"][k], got[k])


@pytest.fixture
def private_env(env):
    """`env` with a store of its own: the shared store caches Pareto fronts by table id, which every fresh test
    database reuses."""
    from ofa_service_testlib import _make_env
    from service.supernets.store import SupernetStore
    e = _make_env(env.settings, SupernetStore(env.settings).load())
    yield e
    e.client.__exit__(None, None, None)


def test_uncalibrated_statistics_are_never_served(private_env):
    """A Pareto answer is given at once; until a worker has recalibrated its sub-network every format (and
    HEAD) answers 503 with Retry-After, and the result lists the pending fields; afterwards the downloads carry
    the recalibrated statistics and the job's result its measured accuracy."""
    from service.calibration.service import calibrate_by_id
    env = private_env
    from service.devices import repository as repo
    from workers import runner
    env.add_device("pd")
    with env.db.session() as s:
        dev = repo.get_by_name(s, "pd")
        ids = (dev.id, repo.current_table(s, dev).id)
    assert runner.compute_front(env.db, env.store, env.settings, ids[0], ids[1], SPEC) == "stored"
    front = env.client.get("/devices/pd").json()["pareto_front"]
    r = env.client.post("/specialize", json={"device": "pd", "constraints": {"latency_ms": front[-1]["latency_ms"]}})
    assert r.status_code == 200 and r.json()["source"] == "pareto", r.text
    jid, res = r.json()["id"], r.json()["result"]
    sid = res["subnet_id"]
    assert res["pending"] == ["bn_calibration", "measured_accuracy"] and res["measured_accuracy"] is None
    assert res["bn_calibrated"] is False
    for fmt in FORMATS:
        for method in ("GET", "HEAD"):
            d = env.client.request(method, f"/subnets/{sid}/checkpoint?format={fmt}")
            assert d.status_code == 503, (fmt, method, d.status_code)
            assert int(d.headers["retry-after"]) >= 1 and "x-content-sha256" not in d.headers
            if method == "GET":
                assert d.json()["error"]["code"] == "bn_calibration_pending"
    assert env.client.get(f"/subnets/{sid}").json()["pending"] == ["bn_calibration", "measured_accuracy"]
    assert calibrate_by_id(env.db, env.store, sid) == "ready"
    assert calibrate_by_id(env.db, env.store, sid) == "ready"            # idempotent: stored once
    job = env.client.get(f"/jobs/{jid}").json()
    cfg, m = _independent(env, res["config"])
    assert job["result"]["pending"] == [] and job["result"]["measured_accuracy"] == m.accuracy
    shas = set()
    for fmt in FORMATS:
        d = env.client.get(f"/subnets/{sid}/checkpoint?format={fmt}")
        assert d.status_code == 200 and d.headers["x-bn-calibrated"] == "true", fmt
        shas.add(d.headers["etag"])
    sd, _ = load_safetensors_checkpoint(env.client.get(f"/subnets/{sid}/checkpoint").content)
    for k, v in m.stats.items():
        torch.testing.assert_close(sd[k], v, rtol=1e-5, atol=1e-6)
    assert len(shas) == 4
    # a second Pareto answer with the same sub-network is measured at once (stored, not recomputed)
    r = env.client.post("/specialize", json={"device": "pd", "constraints": {"latency_ms": front[-1]["latency_ms"]},
                                             "options": {"seed": 1}})
    assert r.json()["result"]["subnet_id"] == sid and r.json()["result"]["measured_accuracy"] == m.accuracy


def test_statistics_survive_a_restart(sqlite_env):
    """A new API process (new store, same database) serves the same recalibrated bytes without recomputing."""
    from ofa_service_testlib import _make_env
    from service.supernets.store import SupernetStore
    env = sqlite_env
    res = _search(env)["result"]
    first = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format=onnx")
    store = SupernetStore(env.settings).load()
    env2 = _make_env(env.settings, store)
    try:
        again = env2.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format=onnx")
        assert again.status_code == 200 and again.headers["etag"] == first.headers["etag"]
        assert again.content == first.content
    finally:
        env2.client.__exit__(None, None, None)


@pytest.fixture
def uncalibrated_env(settings_factory):
    from ofa_service_testlib import _make_env
    from service.supernets.store import SupernetStore
    s = settings_factory("sqlite", calibration_data={SPEC: ""}, evaluation_data={SPEC: ""})
    e = _make_env(s, SupernetStore(s).load())
    yield e
    e.client.__exit__(None, None, None)


def test_without_calibration_data_it_says_so(uncalibrated_env):
    env = uncalibrated_env
    res = _search(env)["result"]
    assert res["bn_calibrated"] is False and res["measured_accuracy"] is None and res["pending"] == []
    assert res["bn_calibration"]["setting"] == "OFA_CALIBRATION_DATA"
    sub = env.client.get(f"/subnets/{res['subnet_id']}").json()
    assert sub["bn_calibrated"] is False and sub["bn_calibration"]["status"] == "not_configured"
    r = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint")
    assert r.status_code == 200 and r.headers["x-bn-calibrated"] == "false"
    assert r.headers["x-bn-calibration-setting"] == "OFA_CALIBRATION_DATA"
    sd, meta = load_safetensors_checkpoint(r.content)
    assert meta["bn_calibrated"] == "false" and meta["bn_calibration_setting"] == "OFA_CALIBRATION_DATA"
    eng = env.store.get(SPEC)
    cfg = SubnetConfig.from_dict(eng.spec, res["config"])
    for k, v in _running_stats(extract_state_dict(eng.supernet, cfg)).items():
        assert torch.equal(sd[k], v)
    assert env.client.get("/supernets/ofa_mbv3_cifar10").json()["bn_calibration"]["calibration"] is None


def test_apply_matches_served_safetensors(env):
    """The served file is the cut state dict with the stored statistics applied, nothing else changed."""
    res = _search(env, seed=5)["result"]
    eng = env.store.get(SPEC)
    cfg, m = _independent(env, res["config"])
    sd, _ = load_safetensors_checkpoint(env.client.get(f"/subnets/{res['subnet_id']}/checkpoint").content)
    want = apply_bn_stats(extract_state_dict(eng.supernet, cfg), m.stats)
    assert list(sd) == list(want)
    for k in want:
        if k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(sd[k], want[k], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(sd[k], want[k]), k


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_unusable_calibration_images_refuse_downloads(case, settings_factory, tmp_path):
    """Configured calibration images that do not exist or cannot be read: downloads answer 409 naming the
    problem, never the uncalibrated statistics; the supernet reports the load error."""
    from ofa_service_testlib import _make_env
    from service.supernets.store import SupernetStore
    bad = tmp_path / "broken.npz"
    if case == "corrupt":
        bad.write_bytes(b"not a zip")
    s = settings_factory("sqlite", calibration_data={SPEC: str(bad)})
    env = _make_env(s, SupernetStore(s).load())
    try:
        assert "calibration images" in env.client.get(f"/supernets/{SPEC}").json()["load_error"]
        res = _search(env)["result"]
        assert res["bn_calibrated"] is False and res["bn_calibration"]["status"] == "unavailable"
        r = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format=onnx")
        assert r.status_code == 409 and r.json()["error"]["code"] == "bn_calibration_failed"
        assert "OFA_CALIBRATION_DATA" in r.json()["error"]["message"]
    finally:
        env.client.__exit__(None, None, None)


def test_changed_evaluation_set_is_measured_again(sqlite_env, tmp_path):
    """Same calibration set, another evaluation set: the stored statistics are still served, measured_accuracy is
    pending until a worker measures on the new set (published again by the next request for it)."""
    from ofa_service_assets import make_image_sets
    from ofa_service_testlib import _make_env
    from service.calibration.service import calibrate_by_id, request
    from service.supernets.store import SupernetStore
    env = sqlite_env
    res = _search(env)["result"]
    assert res["measured_images"] == 200
    _, small_eval = make_image_sets(str(tmp_path), n_eval=100)
    s2 = env.settings.model_copy(update={"evaluation_data": {SPEC: small_eval}, "calibration_retry_s": 0.0})
    env2 = _make_env(s2, SupernetStore(s2).load())
    try:
        sub = env2.client.get(f"/subnets/{res['subnet_id']}").json()
        assert sub["bn_calibrated"] is True and sub["pending"] == ["measured_accuracy"]
        assert env2.client.get(f"/subnets/{res['subnet_id']}/checkpoint").headers["x-bn-calibrated"] == "true"
        with env2.db.session() as s:      # the answer's request publishes the task (a worker would run it)
            assert request(s, env2.store.get(SPEC), s2, env2.app.state.celery, res["subnet_id"]) is True
        assert calibrate_by_id(env2.db, env2.store, res["subnet_id"]) == "ready"
        sub = env2.client.get(f"/subnets/{res['subnet_id']}").json()
        assert sub["pending"] == [] and sub["measured_images"] == 100
    finally:
        env2.client.__exit__(None, None, None)
