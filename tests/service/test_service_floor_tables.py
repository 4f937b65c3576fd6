"""Accuracy floor semantics (search, Pareto answers, 422), latency-table uploads through ofa_core.latency, OpenAPI."""
from __future__ import annotations

import json
import os

from ofa_service_assets import SPEC, synthetic_table
from ofa_service_testlib import SHARED

SEARCH = {"population": 16, "generations": 5, "seed": 0}


def specialize(env, latency=3.0, **kw):
    return env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": latency},
                                                "options": dict(SEARCH), "use_pareto": False, **kw})


def run(env, r):
    assert r.status_code == 202, r.text
    assert env.run_job(r.json()["id"]) == "succeeded"
    return env.client.get(f"/jobs/{r.json()['id']}").json()["result"]


def test_accuracy_floor_gives_the_fastest_subnet_meeting_it(sqlite_env):
    env = sqlite_env
    env.add_device("dev")
    best = run(env, specialize(env))                                # no floor: the most accurate within 3 ms
    floor = best["predicted_accuracy"] - 0.03
    fast = run(env, specialize(env, accuracy_floor=floor))           # floor: the fastest reaching it
    assert fast["predicted_accuracy"] >= floor
    assert fast["predicted_latency_ms"] < best["predicted_latency_ms"]
    assert fast["predicted_latency_ms"] <= 3.0
    # an unreachable floor: 422 before anything is queued, stating the best achievable accuracy
    r = specialize(env, accuracy_floor=0.99)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "infeasible_constraints" and err["violated"] == ["accuracy_floor"]
    assert err["best_accuracy"] < 0.99 and f"{err['best_accuracy']:.4f}" in err["message"]
    assert "accuracy_floor 0.99" in err["message"]
    assert set(err["minima"]) == {"latency_ms", "macs", "params", "peak_memory_bytes"}


def test_worker_reports_an_unreachable_floor(sqlite_env):
    """ofa_core's InfeasibleError in the worker fails the job with the same error body as the 422."""
    env = sqlite_env
    env.add_device("dev")
    r = specialize(env, accuracy_floor=0.5)
    assert r.status_code == 202, r.text
    jid = r.json()["id"]
    from service.jobs import repository as job_repo
    with env.db.session() as s:                                     # the floor became unreachable meanwhile
        job = job_repo.get(s, jid)
        job.request = {**job.request, "accuracy_floor": 0.99}
    assert env.run_job(jid) == "failed"
    err = env.client.get(f"/jobs/{jid}").json()["error"]
    assert err["code"] == "infeasible_constraints" and err["violated"] == ["accuracy_floor"]
    assert 0 < err["best_accuracy"] < 0.99 and "best achievable predicted accuracy" in err["message"]


def test_pareto_answers_respect_the_floor(sqlite_env):
    from service.devices import repository as repo
    from workers import runner
    env = sqlite_env
    env.add_device("dev")
    with env.db.session() as s:
        dev = repo.get_by_name(s, "dev")
        ids = (dev.id, repo.current_table(s, dev).id)
    assert runner.compute_front(env.db, env.store, env.settings, ids[0], ids[1], SPEC) == "stored"
    front = env.client.get("/devices/dev").json()["pareto_front"]
    assert len(front) >= 3
    budget = front[-1]["latency_ms"] + 1e-6
    floor = front[len(front) // 2]["accuracy"]
    want = min((p for p in front if p["accuracy"] >= floor), key=lambda p: p["latency_ms"])
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": budget},
                                             "accuracy_floor": floor})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert r.json()["source"] == "pareto"
    assert res["config"] == want["config"] and res["predicted_latency_ms"] == want["latency_ms"]
    # without a floor the front answers with its most accurate point within the budget
    r = env.client.post("/specialize", json={"device": "dev", "constraints": {"latency_ms": budget}})
    assert r.status_code == 200 and r.json()["result"]["predicted_accuracy"] == max(p["accuracy"] for p in front)


def test_front_answer_semantics():
    from service.jobs.service import front_answer
    pts = [{"latency_ms": 1.0, "macs": 10, "accuracy": 0.60}, {"latency_ms": 2.0, "macs": 30, "accuracy": 0.70},
           {"latency_ms": 3.0, "macs": 20, "accuracy": 0.80}]
    assert front_answer(pts, {"latency_ms": 2.5}, None)["accuracy"] == 0.70
    assert front_answer(pts, {"latency_ms": 5}, 0.65)["latency_ms"] == 2.0
    assert front_answer(pts, {"latency_ms": 5, "macs": 25}, 0.65)["latency_ms"] == 3.0
    assert front_answer(pts, {"latency_ms": 2.5}, 0.75) is None


def test_table_uploads_through_ofa_core(sqlite_env):
    env = sqlite_env
    h = {**env.h, "content-type": "application/yaml"}
    # the published per-resolution YAML: an entry error names the key and the line (ofa_core.latency)
    yaml_text = "".join(f"{k}:\n  count: 10\n  mean: {v['mean']}\n  std: 0.001\n"
                        for k, v in synthetic_table()["resolutions"]["32"].items())
    lines = yaml_text.splitlines()
    key, lines[4 * 5 + 2] = lines[4 * 5][:-1], "  mean: -1"          # the 6th entry's mean, its key on line 21
    bad = "\n".join(lines) + "\n"
    r = env.client.post("/devices?name=bad", content=bad, headers=h)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["key"] == key and err["line"] == 4 * 5 + 1 and "non-negative" in err["message"]
    # a body naming a file on the server is text, never a path to read
    path = os.path.join(SHARED, "note10", "160_lookup_table.yaml")
    r = env.client.post("/devices?name=bad&supernet=ofa_mbv3_d234_e346_k357_w1.2", content=path, headers=h)
    assert r.status_code == 422 and "expanded_conv" not in r.text
    # an input size the supernet cannot run names it
    t = synthetic_table()
    t["resolutions"]["200"] = t["resolutions"]["32"]
    r = env.client.post("/devices?name=bad", content=json.dumps(t), headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["key"] == "resolutions.200", r.text
    assert "any integer from 8 to 128" in r.json()["error"]["message"]
    # ofa_core's own JSON format (LatencyTable.to_json) imports as the same table
    from ofa_core.latency import LatencyTable
    core = LatencyTable(SPEC, {int(r_): t_ for r_, t_ in synthetic_table()["resolutions"].items()}).to_json()
    a = env.add_device("plain")
    r = env.client.post("/devices?name=core", content=core, headers={**env.h, "content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["versions"][0]["sha256"] == a["versions"][0]["sha256"]


def test_openapi_documents_every_endpoint(sqlite_env):
    spec = sqlite_env.client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
            for c in op.get("requestBody", {}).get("content", {}).values():
                assert "example" in c or "examples" in c or "$ref" in c.get("schema", {}), (method, path)
    timings = spec["paths"]["/devices/{name}/timings"]["post"]["requestBody"]["content"]["application/json"]
    assert timings["example"]["timings"][0]["latency_ms"] > 0
    err = spec["paths"]["/specialize"]["post"]["responses"]["422"]["content"]["application/json"]["example"]
    assert err["error"]["code"] == "infeasible_constraints"


def test_tables_may_price_input_sizes_off_the_grid(sqlite_env):
    """A device table may have entries for any input size the supernet runs; the search uses those the
    predictor encodes, and a table with none of them is a clear 422 naming the device."""
    from ofa_core.latency import required_operator_keys
    from ofa_core.spec import get_spec
    env = sqlite_env
    t = synthetic_table()
    t["resolutions"]["36"] = {k: {"count": 10, "mean": 0.001, "std": 0.0}
                              for k in required_operator_keys(get_spec(SPEC), 36)}
    env.add_device("wide", t)
    body = {"device": "wide", "constraints": {"latency_ms": 1e5}, "options": dict(SEARCH), "use_pareto": False}
    assert run(env, env.client.post("/specialize", json=body))["config"]["r"] in (24, 28, 32)
    env.add_device("only36", {"resolutions": {"36": t["resolutions"]["36"]}})
    r = env.client.post("/specialize", json={**body, "device": "only36"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "device" and "none of which the accuracy predictor" in r.text
