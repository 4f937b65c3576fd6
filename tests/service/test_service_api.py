"""API behaviour on both backends: errors, auth, idempotency, Range downloads, SSE, devices, Pareto answers."""
from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
from ofa_service_testlib import SHARED
from ofa_service_assets import synthetic_table

SEARCH = {"population": 16, "generations": 5, "seed": 0}


def post_spec(env, device="dev", latency=3.0, **kw):
    body = {"device": device, "constraints": {"latency_ms": latency}, "options": dict(SEARCH), **kw}
    return env.client.post("/specialize", json=body, headers=env.h)


def finished_job(env, device="dev", latency=3.0, **kw):
    r = post_spec(env, device, latency, **kw)
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{jid}"
    assert env.run_job(jid) == "succeeded"
    return env.client.get(f"/jobs/{jid}").json()


def test_health_and_metrics(env):
    assert env.client.get("/healthz").json() == {"status": "ok"}
    r = env.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"] == "ok"
    text = env.client.get("/metrics").text
    assert "ofa_http_requests_total" in text
    assert 'route="/healthz"' in text      # requests are labelled by their route template
    assert "/specialize" in env.client.get("/openapi.json").json()["paths"]


def test_write_requires_api_key(env):
    body = json.dumps(synthetic_table())
    for headers in ({}, {"X-API-Key": "nope"}, {"Authorization": "Bearer wrong"}):
        r = env.client.post("/devices?name=x", content=body, headers={**headers, "content-type": "application/json"})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
    r = env.client.post("/devices?name=x", content=body,
                        headers={"Authorization": f"Bearer {env.key}", "content-type": "application/json"})
    assert r.status_code == 201
    assert env.client.put("/devices/x", content=body, headers={"content-type": "application/json"}).status_code == 401


def test_errors(env):
    env.add_device("dev")
    r = env.client.post("/specialize", json={"device": "ghost", "constraints": {"latency_ms": 1}})
    assert r.status_code == 404 and "ghost" in r.json()["error"]["message"]
    r = env.client.post("/specialize", json={"supernet": "nope", "device": "dev", "constraints": {"latency_ms": 1}})
    assert r.status_code == 404 and r.json()["error"]["supernet"] == "nope"
    assert env.client.get("/devices/ghost").status_code == 404
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": "fast"}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "constraints.latency_ms"
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": 1}, "options": {"population": 1}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "options.population"
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "constraints"
    # infeasible: states the smallest achievable value of every metric
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": 0.01, "macs": 10}})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "infeasible_constraints"
    assert set(err["minima"]) == {"latency_ms", "macs", "params", "peak_memory_bytes"}
    assert err["minima"]["latency_ms"] > 0.01 and set(err["violated"]) == {"latency_ms", "macs"}
    # the smallest achievable figures, sent back as budgets (JSON floats of a float sum), admit that sub-network
    for m in ("latency_ms", "macs"):
        r = env.client.post("/specialize", json={"device": "dev", "constraints": {m: err["minima"][m]},
                                                 "options": {"population": 8, "generations": 2}, "use_pareto": False})
        assert r.status_code == 202, r.text
    assert env.client.get("/jobs/nope").status_code == 404
    assert env.client.get("/subnets/nope").status_code == 404


def test_table_upload_errors(env):
    h = {**env.h, "content-type": "application/yaml"}
    big = b"x: 1\n" * (env.settings.max_table_bytes // 5 + 10)
    r = env.client.post("/devices?name=big", content=big, headers=h)
    assert r.status_code == 413
    r = env.client.post("/devices?name=bad", content=b"Conv-input:32x32x3-output:16x16x8:\n  mean: [oops\n", headers=h)
    assert r.status_code == 422 and r.json()["error"]["line"] is not None
    t = synthetic_table()
    key = sorted(t["resolutions"]["32"])[3]
    t["resolutions"]["32"][key]["mean"] = "slow"
    r = env.client.post("/devices?name=bad", content=json.dumps(t), headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["key"] == key
    t = synthetic_table()
    missing = sorted(t["resolutions"]["28"])[7]
    del t["resolutions"]["28"][missing]
    r = env.client.post("/devices?name=bad", content=json.dumps(t), headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 422 and missing in r.json()["error"]["message"], r.text
    assert env.client.get("/devices/bad").status_code == 404   # nothing half-written


def test_devices_versions_and_listing(env):
    for n in ("alpha", "beta", "gamma"):
        env.add_device(n)
    page = env.client.get("/devices?limit=2").json()
    assert page["total"] == 3 and [d["name"] for d in page["items"]] == ["alpha", "beta"]
    assert [d["name"] for d in env.client.get("/devices?limit=2&offset=2").json()["items"]] == ["gamma"]
    assert [d["name"] for d in env.client.get("/devices?q=et").json()["items"]] == ["beta"]
    assert env.client.get("/devices?supernet=ofa_mbv3_d234_e346_k357_w1.2").json()["total"] == 0
    r = env.client.post("/devices?name=alpha", content=json.dumps(synthetic_table()),
                        headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 409
    job = finished_job(env, "alpha")
    r = env.client.put("/devices/alpha", content=json.dumps(synthetic_table(2.0)),
                       headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 200 and r.json()["current_version"] == 2
    assert env.client.get(f"/jobs/{job['id']}").json()["table_version"] == 1     # old jobs keep their version
    y = env.client.get("/devices/alpha/latency-table?format=yaml")
    j = env.client.get("/devices/alpha/latency-table?format=json&version=1")
    assert y.headers["x-table-version"] == "2" and "resolutions" in j.json()
    # round trip: the exported table re-imports as an equal table
    r = env.client.post("/devices?name=copy", content=y.content, headers={**env.h, "content-type": "application/yaml"})
    assert r.status_code == 201 and r.json()["versions"][0]["sha256"] == env.client.get("/devices/alpha").json()["versions"][1]["sha256"]
    # whole-network timings -> a calibrated version
    cfg = job["result"]["config"]
    r = env.client.post("/devices/alpha/timings", json={"timings": [{"config": cfg, "latency_ms": 2 * job["result"]["predicted_latency_ms"]}]},
                        headers=env.h)
    assert r.status_code == 201, r.text
    assert r.json()["current_version"] == 3 and r.json()["versions"][-1]["source"] == "calibrated"
    assert r.json()["versions"][-1]["provenance"]["method"] == "ofa_core.calibrate"
    r = env.client.post("/devices/alpha/timings", json={"timings": [{"config": {"ks": [1]}, "latency_ms": 1}]}, headers=env.h)
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("timings[0].config")


def test_multipart_published_tables(env):
    files = [("file", (f, open(os.path.join(SHARED, "note10", f), "rb").read(), "application/yaml"))
             for f in sorted(os.listdir(os.path.join(SHARED, "note10")))]
    r = env.client.post("/devices", files=files, data={"name": "note10", "supernet": "ofa_mbv3_d234_e346_k357_w1.2"},
                        headers=env.h)
    assert r.status_code == 201, r.text
    assert r.json()["versions"][0]["resolutions"] == [160, 176, 192, 208, 224]
    # search works on a supernet registered without weights; its checkpoints answer 409 naming the file
    r = env.client.post("/specialize", json={"supernet": "ofa_mbv3_d234_e346_k357_w1.2", "device": "note10",
                                             "constraints": {"latency_ms": 25}, "options": SEARCH})
    assert r.status_code == 202, r.text
    assert env.run_job(r.json()["id"]) == "succeeded"
    res = env.client.get(f"/jobs/{r.json()['id']}").json()["result"]
    assert res["predicted_latency_ms"] <= 25 and 0.7 < res["predicted_accuracy"] < 0.9
    r = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint")
    assert r.status_code == 409 and "OFA_MBV3_W12_WEIGHTS" in r.json()["error"]["message"]
    assert env.client.get(f"/subnets/{res['subnet_id']}/net.config").status_code == 200
    # "supernet" defaults to the device's supernet; naming another one is a 422 on the device
    r = env.client.post("/specialize", json={"device": "note10", "constraints": {"latency_ms": 25}, "options": SEARCH})
    assert r.status_code in (200, 202) and r.json()["supernet"] == "ofa_mbv3_d234_e346_k357_w1.2", r.text
    r = env.client.post("/specialize", json={"supernet": "ofa_mbv3_cifar10", "device": "note10",
                                             "constraints": {"latency_ms": 25}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "device"


def test_idempotency_and_duplicate_delivery(env):
    env.add_device("dev")
    a, b = post_spec(env), post_spec(env)
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    jid = a.json()["id"]
    assert env.run_job(jid) == "succeeded"
    assert env.run_job(jid) == "succeeded"            # delivered twice: one result
    c = post_spec(env)
    assert c.status_code == 200 and c.json()["id"] == jid and c.json()["result"]["subnet_id"]
    d = post_spec(env, options={"population": 16, "generations": 5, "seed": 1})
    assert d.status_code == 202 and d.json()["id"] != jid


def test_cancel(env):
    env.add_device("dev")
    jid = post_spec(env).json()["id"]
    assert env.client.delete(f"/jobs/{jid}").status_code == 401       # cancelling needs a key
    r = env.client.delete(f"/jobs/{jid}", headers=env.h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert env.run_job(jid) == "cancelled"            # the worker skips it
    r = post_spec(env)                                # a cancelled job does not block a new one
    assert r.status_code == 202 and r.json()["id"] != jid


def test_broker_unreachable_leaves_nothing_queued(settings_factory, shared_store):
    from ofa_service_testlib import _make_env
    s = settings_factory("sqlite", broker_url="redis://127.0.0.1:1/0")
    e = _make_env(s, shared_store)
    try:
        e.add_device("dev")
        r = post_spec(e)
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable"
        from sqlalchemy import text
        with e.db.engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar() == 0
        assert e.client.get("/readyz").status_code == 503
    finally:
        e.client.__exit__(None, None, None)


def test_checkpoint_range_and_etag(env):
    env.add_device("dev")
    sid = finished_job(env)["result"]["subnet_id"]
    full = env.client.get(f"/subnets/{sid}/checkpoint?format=safetensors")
    assert full.status_code == 200
    body = full.content
    assert int(full.headers["content-length"]) == len(body)
    assert full.headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert f"{sid}.safetensors" in full.headers["content-disposition"]
    head = env.client.head(f"/subnets/{sid}/checkpoint?format=safetensors")   # size and ETag before downloading
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(body)) and head.headers["etag"] == full.headers["etag"]
    parts = []
    for start in range(0, len(body), 400_000):
        r = env.client.get(f"/subnets/{sid}/checkpoint", headers={"Range": f"bytes={start}-{start + 399_999}"})
        assert r.status_code == 206 and r.headers["content-range"].endswith(f"/{len(body)}")
        parts.append(r.content)
    assert b"".join(parts) == body
    r = env.client.get(f"/subnets/{sid}/checkpoint", headers={"Range": "bytes=-100"})
    assert r.status_code == 206 and r.content == body[-100:]
    r = env.client.get(f"/subnets/{sid}/checkpoint", headers={"Range": f"bytes={len(body)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(body)}"
    r = env.client.get(f"/subnets/{sid}/checkpoint", headers={"If-None-Match": full.headers["etag"]})
    assert r.status_code == 304
    r = env.client.get(f"/subnets/{sid}/checkpoint", headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == len(body)
    pt = env.client.get(f"/subnets/{sid}/checkpoint?format=pt")
    assert pt.status_code == 200 and pt.headers["etag"] == f'"{hashlib.sha256(pt.content).hexdigest()}"'
    assert env.client.get(f"/subnets/{sid}/checkpoint?format=tflite").status_code == 422
    nc = env.client.get(f"/subnets/{sid}/net.config").json()
    assert nc["name"] == "MobileNetV3" and nc["classifier"]["out_features"] == 10


def test_sse_progress_then_result(env):
    env.add_device("dev")
    jid = post_spec(env, options={"population": 16, "generations": 30, "seed": 3}).json()["id"]
    events = []
    worker = threading.Timer(0.3, env.run_job, args=(jid,))
    worker.start()
    with env.client.stream("GET", f"/jobs/{jid}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        ev = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                events.append((ev, json.loads(line[6:])))
    worker.join()
    kinds = [k for k, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "result", kinds
    assert "progress" in kinds
    gens = [d["generation"] for k, d in events if k == "progress"]
    assert gens == sorted(set(gens)) and gens[-1] == 30     # in order, no repeats, the last generation included
    assert events[-1][1]["result"]["subnet_id"]
    # a late client gets the current state first, then the result at once
    with env.client.stream("GET", f"/jobs/{jid}/events") as r:
        text = r.read().decode()
    assert text.index("event: state") < text.index("event: result")


def test_pareto_front_answers(env):
    from workers import runner
    d = env.add_device("dev")
    from service.devices import repository as repo
    with env.db.session() as s:
        dev = repo.get_by_name(s, "dev")
        ids = (dev.id, repo.current_table(s, dev).id)
    assert runner.compute_front(env.db, env.store, env.settings, ids[0], ids[1], "ofa_mbv3_cifar10") == "stored"
    assert runner.compute_front(env.db, env.store, env.settings, ids[0], ids[1], "ofa_mbv3_cifar10") == "exists"
    front = env.client.get("/devices/dev").json()["pareto_front"]
    assert front and all(a["latency_ms"] <= b["latency_ms"] for a, b in zip(front, front[1:]))
    budget = front[len(front) // 2]["latency_ms"] + 1e-6
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": budget}})
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "pareto" and r.json()["result"]["predicted_latency_ms"] <= budget
    r2 = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": budget}, "use_pareto": False})
    assert r2.status_code == 202


def test_a_front_of_another_supernet_version_is_stale(env):
    """A stored front computed by other weights or another predictor (another supernet version) is neither shown
    nor answered from; the sweeper requests a new one (once per FRONT_REPUBLISH_S), which replaces it."""
    from sqlalchemy import update
    from service.db.models import ParetoFront
    from service.devices import repository as repo
    from workers import runner
    from workers.sweeper import FRONT_REPUBLISH_S, sweep_fronts
    env.add_device("dev")
    with env.db.session() as s:
        dev = repo.get_by_name(s, "dev")
        ids = (dev.id, repo.current_table(s, dev).id)
    assert runner.compute_front(env.db, env.store, env.settings, *ids, "ofa_mbv3_cifar10") == "stored"
    front = env.client.get("/devices/dev").json()["pareto_front"]
    budget = front[len(front) // 2]["latency_ms"]
    with env.db.session() as s:
        s.execute(update(ParetoFront).values(supernet_version="0-older"))
    env.store.get("ofa_mbv3_cifar10").forget_tables()        # as a process started with the new version
    assert env.client.get("/devices/dev").json()["pareto_front"] is None
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": budget}})
    assert r.status_code == 202 and r.json()["source"] == "search", r.text
    published, celery = {}, env.app.state.celery
    assert sweep_fronts(env.db, celery, env.settings, published, now=1000.0) == 1
    assert sweep_fronts(env.db, celery, env.settings, published, now=1001.0) == 0        # being computed
    assert sweep_fronts(env.db, celery, env.settings, published, now=1001.0 + FRONT_REPUBLISH_S) == 1
    assert runner.compute_front(env.db, env.store, env.settings, *ids, "ofa_mbv3_cifar10") == "stored"
    assert env.client.get("/devices/dev").json()["pareto_front"] == front
    assert sweep_fronts(env.db, celery, env.settings, {}) == 0
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": budget * 1.0001}})
    assert r.status_code == 200 and r.json()["source"] == "pareto"


def test_supernets(env):
    items = {s["name"]: s for s in env.client.get("/supernets").json()["items"]}
    assert items["ofa_mbv3_cifar10"]["has_weights"] and items["ofa_mbv3_cifar10"]["default"]
    assert not items["ofa_mbv3_d234_e346_k357_w1.2"]["has_weights"]
    assert items["ofa_mbv3_d234_e346_k357_w1.2"]["search_ready"]
