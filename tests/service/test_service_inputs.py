"""Input that cannot hurt the service, job lifecycle rules and HTTP conformance (issue 13), on both backends."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from ofa_service_assets import synthetic_table

BODY = {"device": "dev", "constraints": {"latency_ms": 3.0}, "options": {"seed": 0}, "use_pareto": False}


def _field(r):
    assert r.status_code == 422, (r.status_code, r.text[:300])
    return r.json()["error"]["field"]


def test_bad_numbers_and_names_are_422_naming_the_field(env):
    env.add_device("dev")
    c, h = env.client, env.h
    cases = {
        "constraints.latency_ms": [1e309, True, "Infinity", -1, 1e7],
        "constraints.macs": [2.7, 1e20, True],
        "options.population": [2.7, True, 1e20],
        "options.seed": [2**63],
        "device": ["..", "a\nb", "a\\b", "a\x00b", "x" * 200],
    }
    for field, values in cases.items():
        for v in values:
            body = json.loads(json.dumps(BODY))
            node, key = (body, field) if "." not in field else (body[field.split(".")[0]], field.split(".")[1])
            node[key] = v
            r = c.post("/specialize", content=json.dumps(body), headers={**h, "content-type": "application/json"})
            assert _field(r).startswith(field), (field, v, r.text[:200])
    raw = '{"device": "dev", "constraints": {"latency_ms": Infinity}}'      # non-standard JSON literals
    assert _field(c.post("/specialize", content=raw, headers={**h, "content-type": "application/json"})) \
        .startswith("constraints.latency_ms")


def test_nul_and_huge_ints_in_paths_and_queries(env):
    env.add_device("dev")
    c = env.client
    assert _field(c.get("/devices/a%00b")) == "path"
    assert _field(c.get("/jobs/a%00b")) == "path"
    assert _field(c.get("/devices?q=a%00b")) == "q"
    assert _field(c.get(f"/devices?offset={2**63}")) == "offset"
    assert _field(c.get(f"/devices/dev/latency-table?version={2**31}")) == "version"
    assert c.get("/devices/dev/latency-table?version=1").status_code == 200


def _upload(env, name, table, ct="application/json"):
    body = table if isinstance(table, str) else json.dumps(table)
    return env.client.post(f"/devices?name={name}", content=body, headers={**env.h, "content-type": ct})


def test_tables_that_overflow_or_cannot_be_stored_are_refused(env):
    t = synthetic_table()
    first = next(iter(t["resolutions"]["32"]))
    for mutate, word in ((lambda e: e.update(mean=1e308), "out of range"), (lambda e: e.update(count=1e20), "count"),
                         (lambda e: e.update(count=2.7), "whole number"), (lambda e: e.update(mean=True), "mean")):
        bad = json.loads(json.dumps(t))
        mutate(bad["resolutions"]["32"][first])
        r = _upload(env, "bad", bad)
        assert r.status_code == 422 and word in r.json()["error"]["message"], r.text[:300]
    long_key = json.loads(json.dumps(t))
    long_key["resolutions"]["32"]["K" * 600] = {"mean": 1, "std": 0, "count": 1}
    assert "at most 512" in _upload(env, "bad", long_key).json()["error"]["message"]
    nul_key = json.loads(json.dumps(t))
    nul_key["resolutions"]["32"]["a\x00b"] = {"mean": 1, "std": 0, "count": 1}
    assert "control character" in _upload(env, "bad", nul_key).json()["error"]["message"]
    r = _upload(env, "bad", json.dumps(t).replace("0.001}", "NaN}", 1))
    assert r.status_code == 422 and "NaN" in r.json()["error"]["message"]
    dup = '{"resolutions": {"32": {}, "32": {}}}'
    assert "duplicate key" in _upload(env, "bad", dup).json()["error"]["message"]
    conv = next(k for k in t["resolutions"]["32"] if k.startswith("Conv-input"))
    ydup = f"'{conv}':\n  mean: 1\n  mean: 2\n"
    r = _upload(env, "bad", ydup, "application/yaml")
    assert r.status_code == 422 and "duplicate key" in r.json()["error"]["message"] and r.json()["error"]["line"] == 3
    assert _upload(env, "..", t).json()["error"]["field"] == "name"
    r = env.client.post("/devices?name=ok1&description=" + "d" * 3000, content=json.dumps(t),
                        headers={**env.h, "content-type": "application/json"})
    assert _field(r) == "description"
    assert env.client.get("/devices").json()["total"] == 0                  # nothing half-written


def test_search_policy_rate_limit_and_owner_only_cancel(env):
    from service.auth.service import create_api_key
    env.add_device("dev")
    c = env.client
    big = {**BODY, "options": {"population": 64, "generations": 5, "seed": 1}}
    r = c.post("/specialize", json=big)
    assert r.status_code == 401 and "options.population" in r.json()["error"]["message"]
    assert c.post("/specialize", json=big, headers=env.h).status_code == 202
    jid = c.post("/specialize", json=BODY, headers=env.h).json()["id"]      # default options: anonymous is fine
    other = {"X-API-Key": create_api_key(env.db, "other")}
    assert c.delete(f"/jobs/{jid}").status_code == 401
    assert c.delete(f"/jobs/{jid}", headers=other).status_code == 403
    assert c.delete(f"/jobs/{jid}", headers=env.h).json()["status"] == "cancelled"
    env.app.state.settings.search_auth = "all"
    assert c.post("/specialize", json=BODY).status_code == 401
    env.app.state.settings.search_auth = "beyond_defaults"
    from service.ratelimit import RateLimiter
    env.app.state.settings.rate_limit_searches = 3
    env.app.state.rate_limiter = RateLimiter(env.app.state.settings)
    codes = [c.post("/specialize", json={**BODY, "options": {"seed": 10 + i}}).status_code for i in range(4)]
    assert codes[:3] == [202] * 3 and codes[3] == 429, codes
    r = c.post("/specialize", json=BODY)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.post("/specialize", json={**BODY, "options": {"seed": 99}}, headers=env.h).status_code == 202  # per key


def _age(env, jid, seconds, **values):
    sets = ", ".join(["heartbeat_at = :t"] + [f"{k} = :{k}" for k in values])
    with env.db.engine.begin() as c:
        c.execute(text(f"UPDATE jobs SET {sets} WHERE id = :i"),
                  {"t": dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds), "i": jid, **values})


def _status(env, jid):
    return env.client.get(f"/jobs/{jid}").json()


def test_sweeper_recovers_expired_and_orphaned_jobs_with_bounded_attempts(env):
    from workers.lease import LeaseHeld
    from workers.sweeper import sweep
    env.add_device("dev")
    s = env.app.state.settings
    lease = s.job_lease_s
    ids = [env.client.post("/specialize", json={**BODY, "options": {"seed": i}}, headers=env.h).json()["id"]
           for i in range(4)]
    a, b, c, d = ids
    _age(env, a, lease + 5, status="running", attempts=1, lease_token="1-x")           # its worker died
    _age(env, b, lease + 5, status="running", attempts=s.job_max_attempts, lease_token="1-y")
    _age(env, c, lease + 5)                                                             # orphaned queued
    _age(env, d, 0, status="running", attempts=1, lease_token="1-z")                   # live lease
    counts = sweep(env.db, env.app.state.celery, s)
    assert counts["requeued"] == 1 and counts["republished"] == 1 and counts["failed"] == 1, counts
    assert _status(env, a)["status"] == "queued" and _status(env, c)["status"] == "queued"
    err = _status(env, b)["error"]
    assert _status(env, b)["status"] == "failed" and err["code"] == "worker_lost"
    assert sweep(env.db, env.app.state.celery, s)["republished"] == 0                  # not again within a lease
    assert env.run_job(a) == "succeeded"
    with pytest.raises(LeaseHeld):                 # a redelivery of a job a live worker holds is retried, not dropped
        env.run_job(d)
    _age(env, d, lease + 5)                        # ... and taken over once that lease expired
    assert env.run_job(d) == "succeeded"
    # a job whose worker died is cancelled at once; the identical POST then gets a new job
    e = env.client.post("/specialize", json={**BODY, "options": {"seed": 50}}, headers=env.h).json()["id"]
    _age(env, e, lease + 5, status="running", attempts=1, lease_token="1-w")
    assert env.client.delete(f"/jobs/{e}", headers=env.h).json()["status"] == "cancelled"
    r = env.client.post("/specialize", json={**BODY, "options": {"seed": 50}}, headers=env.h)
    assert r.status_code == 202 and r.json()["id"] != e


def test_identical_post_republishes_an_orphan(env):
    env.add_device("dev")
    jid = env.client.post("/specialize", json=BODY).json()["id"]
    _age(env, jid, env.app.state.settings.job_lease_s + 5)
    with env.db.engine.connect() as c:
        before = c.execute(text("SELECT heartbeat_at FROM jobs WHERE id = :i"), {"i": jid}).scalar()
    assert env.client.post("/specialize", json=BODY).json()["id"] == jid
    with env.db.engine.connect() as c:
        after = c.execute(text("SELECT heartbeat_at FROM jobs WHERE id = :i"), {"i": jid}).scalar()
    assert after != before                                  # published again (and marked so)


def test_http_conformance_range_head_etag_allow(env):
    env.add_device("dev")
    jid = env.client.post("/specialize", json=BODY).json()["id"]
    assert env.run_job(jid) == "succeeded"
    sid = _status(env, jid)["result"]["subnet_id"]
    url = f"/subnets/{sid}/checkpoint"
    c = env.client
    full = c.get(url)
    etag, size = full.headers["etag"], len(full.content)
    assert c.get(url, headers={"Range": "bytes=100-50"}).status_code == 200          # invalid: ignored
    assert c.get(url, headers={"Range": "bytes=" + "9" * 30 + "-"}).status_code == 200
    h = c.head(url, headers={"Range": "bytes=0-9"})
    g = c.get(url, headers={"Range": "bytes=0-9"})
    assert h.status_code == g.status_code == 206 and h.headers["content-range"] == g.headers["content-range"]
    assert h.headers["content-length"] == "10" and g.content == full.content[:10]
    assert c.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
    for inm in (f"W/{etag}", "*", f'"x", {etag}'):
        assert c.get(url, headers={"If-None-Match": inm}).status_code == 304, inm
    r = c.put(f"/jobs/{jid}")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}
    r = c.patch("/devices")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_jointly_infeasible_constraints_name_them(env):
    env.add_device("dev")
    eng = env.store.get("ofa_mbv3_cifar10")
    from service.devices import repository as repo
    with env.db.session() as s:
        d, t = repo.with_current_table(s, "dev")
        minima = eng.minima(eng.efficiency(t.id, lambda: repo.load_entries(s, t.id)))
    body = {"device": "dev", "constraints": {"latency_ms": minima["latency_ms"] * 1.0001,
                                             "params": int(minima["params"]) + 1,
                                             "macs": int(minima["macs"]) + 1}, "use_pareto": False}
    r = env.client.post("/specialize", json=body)
    if r.status_code == 422:                       # the smallest of each is not one network: jointly infeasible
        err = r.json()["error"]
        assert err["violated"] and "no sub-network meets ;" not in err["message"], err
    else:
        assert r.status_code == 202


def test_api_key_cli_lists_and_revokes_without_revealing_the_secret(env):
    from service.auth.service import create_api_key, list_api_keys, revoke_api_key
    key = create_api_key(env.db, "cli")
    row = [k for k in list_api_keys(env.db) if k["name"] == "cli"][0]
    secret = key[len(row["prefix"]) + 1:]
    assert key.startswith(row["prefix"] + "_") and row["prefix"][4:] not in secret
    assert env.client.delete("/jobs/nope", headers={"X-API-Key": key}).status_code == 404
    assert revoke_api_key(env.db, row["prefix"]) == 1
    assert env.client.delete("/jobs/nope", headers={"X-API-Key": key}).status_code == 401


def test_key_commands(sqlite_env):
    import os
    import subprocess
    import sys
    from ofa_service_testlib import ROOT
    env = {**os.environ, "OFA_DATABASE_URL": sqlite_env.settings.database_url, "OFA_VAR_DIR": sqlite_env.settings.var_dir}
    run = lambda *a: subprocess.run([sys.executable, "-m", "service.cli", *a], cwd=ROOT, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=120)
    key = run("create-api-key", "--name", "ops").stdout.strip()
    listed = run("list-api-keys").stdout
    prefix = "_".join(key.split("_")[:2])                          # ofa_<id>; the secret may hold "_"
    assert prefix in listed and "ops" in listed and key not in listed and key[len(prefix):] not in listed
    assert run("revoke-api-key", prefix).returncode == 0
    assert "revoked" in run("list-api-keys").stdout
    assert run("revoke-api-key", prefix).returncode == 1               # nothing active left to revoke
    assert sqlite_env.client.delete("/jobs/x", headers={"X-API-Key": key}).status_code == 401
