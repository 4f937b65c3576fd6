"""The calibration path end to end on both backends: suggestions -> timings of a device the service cannot run
on -> a calibrated table version (per batch size, with provenance) -> search and the Pareto front use it."""
from __future__ import annotations

import numpy as np

from bench.calib_devices import DEVICES, device_table, timings as measure

import pytest

SPEC = "ofa_mbv3_cifar10"
SEARCH = {"population": 16, "generations": 5, "seed": 0}


@pytest.fixture(autouse=True)
def _fresh_table_caches(shared_store):
    """Table ids restart with every test database; the shared store must not answer from another one's (nor
    leave these tests' tables, some of them scaled, to the tests after them)."""
    for eng in shared_store.engines.values():
        eng.forget_tables()
    yield
    for eng in shared_store.engines.values():
        eng.forget_tables()


def _timed(spec, dev, configs, seed):
    """(config dicts, ms) as a user would post them, from a synthetic device."""
    from ofa_core.spec import SubnetConfig, encode_batch
    true = device_table(dev, spec, seed)
    cfgs = [SubnetConfig.from_dict(spec, c) for c in configs]
    y = measure(dev, true, encode_batch(cfgs), np.random.default_rng(seed))
    return [{"config": c.to_dict(), "latency_ms": float(v)} for c, v in zip(cfgs, y)], true


def _table_id(env, name, version):
    from service.devices import repository as repo
    with env.db.session() as s:
        d = repo.get_by_name(s, name)
        return d.id, repo.table_version(s, d, version).id


def test_calibration_from_timings_alone_to_search_and_front(env):
    from ofa_core.spec import SubnetConfig, get_spec
    from workers import runner
    spec = get_spec(SPEC)
    # 1. a device that does not exist yet: suggestions from the cost model
    r = env.client.get(f"/devices/phone/timings/suggest?n=12&supernet={SPEC}")
    assert r.status_code == 200, r.text
    sug = r.json()
    assert sug["n_timings"] == 0 and sug["table_version"] is None and len(sug["configs"]) == 12
    assert env.client.get("/devices/phone/timings/suggest?n=5").status_code == 404
    # 2. time them (plus random ones) on the device, create it from the timings alone
    rng = np.random.default_rng(0)
    extra = [SubnetConfig.from_encoded(spec, e).to_dict() for e in spec.sample_encoded(28, rng)]
    dev = DEVICES["launch-bound (GPU, batch 1)"]
    body, true = _timed(spec, dev, [c["config"] for c in sug["configs"]] + extra, 0)
    r = env.client.post("/devices/phone/timings", json={"timings": body}, headers=env.h)
    assert r.status_code == 404
    r = env.client.post("/devices/phone/timings?create=true", json={"timings": body, "supernet": SPEC,
                                                                      "description": "a phone"}, headers=env.h)
    assert r.status_code == 201, r.text
    d = r.json()
    v1 = d["versions"][0]
    assert d["kind"] == "calibrated" and v1["source"] == "calibrated" and v1["batch_size"] == 1
    prov = v1["provenance"]
    assert prov["n_timings"] == 40 and prov["prior"] == "cost-model" and prov["model"] == "hierarchical-gp"
    assert prov["cv"]["folds"] == 5 and prov["cv"]["share_within_10"] >= 0.7
    # the stored table predicts held-out configs of the device
    from ofa_core.latency import LatencyTable
    doc = env.client.get("/devices/phone/latency-table?format=json").json()
    table = LatencyTable(spec, doc["resolutions"])
    te = spec.sample_encoded(300, rng)
    assert np.mean(np.abs(table.predict(te) / true.predict(te) - 1) <= 0.10) >= 0.8
    # 3. the search uses it: budget between the table's extremes, answer within it by the table
    lo, hi = table.minimum()[0], float(table.predict(spec.max_config(32).encode()[None])[0])
    budget = lo + 0.4 * (hi - lo)
    r = env.client.post("/specialize", json={"device": "phone", "constraints": {"latency_ms": budget},
                                             "options": SEARCH, "use_pareto": False}, headers=env.h)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["table_version"] == 1 and job["request"]["batch_size"] == 1
    assert env.run_job(job["id"]) == "succeeded"
    res = env.client.get(f"/jobs/{job['id']}").json()["result"]
    want = float(table.predict(SubnetConfig.from_dict(spec, res["config"]).encode()[None])[0])
    assert abs(res["predicted_latency_ms"] - want) < 1e-6 * want and want <= budget
    # 4. and the Pareto front of the calibrated version
    ids = _table_id(env, "phone", 1)
    assert runner.compute_front(env.db, env.store, env.settings, *ids, SPEC) == "stored"
    front = env.client.get("/devices/phone").json()["pareto_front"]
    assert front and all(p["latency_ms"] >= lo - 1e-9 for p in front)
    for p in front:
        got = float(table.predict(SubnetConfig.from_dict(spec, p["config"]).encode()[None])[0])
        assert abs(p["latency_ms"] - got) < 1e-6 * got


def test_batch_sizes_accumulated_timings_and_suggestions(env):
    from ofa_core.spec import SubnetConfig, get_spec
    spec = get_spec(SPEC)
    env.add_device("gpu")                                   # an uploaded batch-1 table
    rng = np.random.default_rng(1)
    cfgs = [SubnetConfig.from_encoded(spec, e).to_dict() for e in spec.sample_encoded(30, rng)]
    dev = DEVICES["throughput (GPU, batch 64)"]
    body, _ = _timed(spec, dev, cfgs, 1)
    r = env.client.post("/devices/gpu/timings", json={"timings": body[:20], "batch_size": 64}, headers=env.h)
    assert r.status_code == 201, r.text
    v2 = r.json()["versions"][-1]
    assert v2["batch_size"] == 64 and v2["provenance"]["n_timings"] == 20
    # no uncalibrated batch-64 table: the cost model is the only prior
    assert [p["prior"] for p in v2["provenance"]["priors_tried"]] == ["cost-model"]
    r = env.client.post("/devices/gpu/timings", json={"timings": body[20:]}, headers=env.h)
    v3 = r.json()["versions"][-1]                           # batch size default: the current version's (64)
    assert v3["batch_size"] == 64 and v3["provenance"]["n_timings"] == 30 and v3["provenance"]["n_new"] == 10 and v3["version"] == 3
    # batch-1 timings calibrate against the uploaded batch-1 table (both priors tried, the better kept)
    body1, _ = _timed(spec, DEVICES["compute-bound (mobile CPU)"], cfgs[:12], 2)
    r = env.client.post("/devices/gpu/timings", json={"timings": body1, "batch_size": 1}, headers=env.h)
    v4 = r.json()["versions"][-1]
    assert v4["batch_size"] == 1 and v4["provenance"]["n_timings"] == 12
    assert [p["prior"] for p in v4["provenance"]["priors_tried"]] == ["cost-model", "version 1 (uploaded)"]
    # the search picks the table of the requested batch size
    req = {"device": "gpu", "constraints": {"latency_ms": 1e5}, "options": SEARCH, "use_pareto": False}
    j = env.client.post("/specialize", json={**req, "batch_size": 64}, headers=env.h).json()
    assert j["table_version"] == 3 and j["request"]["batch_size"] == 64
    j = env.client.post("/specialize", json=req, headers=env.h).json()
    assert j["table_version"] == 4 and j["request"]["batch_size"] == 1
    r = env.client.post("/specialize", json={**req, "batch_size": 3}, headers=env.h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "batch_size" and "[1, 64]" in r.text
    # suggestions condition on the stored timings of that batch size and avoid configs already timed
    r = env.client.get("/devices/gpu/timings/suggest?n=6&batch_size=64")
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["n_timings"] == 30 and s["table_version"] == 3 and len(s["configs"]) == 6
    timed = {str(c) for c in cfgs}
    assert not {str(c["config"]) for c in s["configs"]} & timed
    assert all(c["predicted_latency_ms"] > 0 for c in s["configs"])


def test_timings_errors_are_named(env):
    env.add_device("dev")
    good = {"config": {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 32}, "latency_ms": 1.0}
    cases = [({"timings": [good, {**good, "config": {**good["config"], "r": 30}}]}, "timings[1].config.r"),
             ({"timings": [good], "batch_size": 0}, "batch_size"),
             ({"timings": [good], "resolutions": [40]}, "resolutions"),
             ({"timings": []}, "timings")]
    for body, field in cases:
        r = env.client.post("/devices/dev/timings", json=body, headers=env.h)
        assert r.status_code == 422, (body, r.text)
        if field:
            assert r.json()["error"]["field"] == field, r.json()
    r = env.client.post("/devices/new/timings?create=true", json={"timings": [good], "resolutions": [40]},
                        headers=env.h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "resolutions"
    r = env.client.post("/devices/dev/timings?create=true", json={"timings": [good], "supernet": "nope"},
                        headers=env.h)
    assert r.status_code == 422 and r.json()["error"]["field"] == "supernet"
    assert env.client.get("/devices/dev/timings/suggest?n=0").status_code == 422
    assert env.client.get("/devices/dev/timings/suggest?n=5&supernet=nope").status_code == 422
    assert env.client.post("/devices/x/timings?create=true", json={"timings": [good]}).status_code == 401


def test_uploaded_tables_state_their_batch_size(env):
    import json as _json
    from ofa_service_assets import synthetic_table
    r = env.client.post("/devices?name=b8&batch_size=8", content=_json.dumps(synthetic_table(8.0)),
                        headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["versions"][0]["batch_size"] == 8
    r = env.client.put("/devices/b8", content=_json.dumps(synthetic_table()),
                       headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 200 and r.json()["versions"][-1]["batch_size"] == 1
    r = env.client.put("/devices/b8?batch_size=0", content=_json.dumps(synthetic_table()),
                       headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "batch_size"
    # the search at batch 8 uses version 1; without batch_size the current (batch 1) version
    req = {"device": "b8", "constraints": {"latency_ms": 1e5}, "options": SEARCH, "use_pareto": False}
    assert env.client.post("/specialize", json={**req, "batch_size": 8}, headers=env.h).json()["table_version"] == 1
    assert env.client.post("/specialize", json=req, headers=env.h).json()["table_version"] == 2
