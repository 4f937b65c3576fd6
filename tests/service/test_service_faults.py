"""Fault injection on loopback, on both backends (embedded SQLite + SQL broker; PostgreSQL + Redis): SIGKILL a worker
mid-search (pool child, whole worker) and mid-verify, SIGKILL the API during concurrent POSTs (between commit and publish), a
broker that loses its data and comes back, a hung broker, the YAML alias bomb. Real processes, no mocks; every wait
is bounded. The figures (kills / jobs finished / time to recovery, orphans, /healthz p99, memory growth) are
printed at the end of the run."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest
from sqlalchemy import text

import ofa_faultlib as F
from ofa_service_testlib import _make_env

TERMINAL = ("succeeded", "failed", "cancelled")
LONG = {"population": 1000, "generations": 600, "seed": 0}     # a few seconds of search: killed mid-way


def _settings(backend, request, settings_factory, **kw):
    kw.setdefault("job_lease_s", F.LEASE_S)
    if backend == "postgres":
        return settings_factory("postgres", request.getfixturevalue("migrated_pg"),
                                request.getfixturevalue("redis_url"), **kw)
    return settings_factory("sqlite", **kw)


def _close(env, backend):
    env.client.__exit__(None, None, None)
    if backend == "postgres":
        with env.db.engine.begin() as c:
            c.execute(text("TRUNCATE jobs, subnets, pareto_fronts, latency_entries, latency_tables, devices, "
                           "api_keys RESTART IDENTITY CASCADE"))
    env.db.dispose()


def _job_row(env, jid):
    with env.db.engine.connect() as c:
        return c.execute(text("SELECT status, lease_token, attempts, generation FROM jobs WHERE id = :i"),
                         {"i": jid}).one()


def _holder(row) -> int | None:
    return int(row.lease_token.split("-")[0]) if row.lease_token else None


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("target", ["pool-child", "whole-worker"])
def test_sigkill_worker_mid_search_loses_no_job(backend, target, request, settings_factory, shared_store):
    s = _settings(backend, request, settings_factory)
    env = _make_env(s, shared_store)
    workers = []
    try:
        env.add_device("dev")
        workers = [F.start_worker(s, pool="prefork")] if target == "pool-child" else \
            [F.start_worker(s), F.start_worker(s)]                   # two workers: the other one takes over
        r = env.client.post("/specialize", headers=env.h, json={"device": "dev", "constraints": {"latency_ms": 3.0},
                                                                "options": LONG, "use_pareto": False})
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        row = F.wait_for(lambda: (lambda x: x if x.status == "running" and x.generation > 0 else None)(
            _job_row(env, jid)), 120, what="the search to run")
        victim = _holder(row)
        if target == "pool-child":
            assert victim in F.children(workers[0].pid)
        else:
            assert victim in [w.pid for w in workers]
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        F.figure("kills injected", 1)
        row = F.wait_for(lambda: (lambda x: x if x.status in TERMINAL or (x.status == "running" and _holder(x)
                                                                             not in (None, victim)) else None)(
            _job_row(env, jid)), F.LEASE_S + 60, what="another worker to take the job over")
        recovery = time.monotonic() - t_kill
        F.figure(f"time to recovery after a kill (s) [{backend}]", round(recovery, 2))
        row = F.wait_for(lambda: (lambda x: x if x.status in TERMINAL else None)(_job_row(env, jid)), 120,
                         what="the job to finish")
        assert row.status == "succeeded" and row.attempts >= 2, row
        F.figure("jobs finished after a kill", 1)
        assert recovery < F.LEASE_S + 30
        # its SSE stream ends with the result
        with env.client.stream("GET", f"/jobs/{jid}/events") as ev:
            body = ev.read().decode()
        assert "event: result" in body
    finally:
        for w in workers:
            F.stop(w)
        _close(env, backend)


def _verify_state(env, jid):
    """(status, lease holder pid, attempts, the job's verify-phase state or None)."""
    with env.db.engine.connect() as c:
        row = c.execute(text("SELECT status, lease_token, attempts, best FROM jobs WHERE id = :i"), {"i": jid}).one()
    best = json.loads(row.best) if isinstance(row.best, str) else row.best
    return row.status, _holder(row), row.attempts, (best if (best or {}).get("phase") == "verify" else None)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_worker_mid_verify_resumes_from_its_candidates(backend, request, settings_factory, shared_store):
    """A worker SIGKILLed while it measures a verify job's candidates: another worker takes the job over, resumes
    from the candidates stored in the job (no new search), measures each sub-network once and answers."""
    from sqlalchemy import func, select
    from service.db.models import SubnetCalibration
    s = _settings(backend, request, settings_factory)
    env = _make_env(s, shared_store)
    data = {"OFA_CALIBRATION_DATA": json.dumps(s.calibration_data), "OFA_EVALUATION_DATA": json.dumps(s.evaluation_data)}
    workers = []
    try:
        env.add_device("dev")
        workers = [F.start_worker(s, **data), F.start_worker(s, **data)]
        r = env.client.post("/specialize", headers=env.h, json={
            "device": "dev", "constraints": {"latency_ms": 3.0}, "verify": True, "use_pareto": False,
            "options": {"population": 16, "generations": 3, "seed": 1, "verify_top_k": 4}})
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        st = F.wait_for(lambda: (lambda x: x if x[0] == "running" and x[3] is not None else None)(
            _verify_state(env, jid)), 180, what="the verify phase to start")
        victim, first = st[1], [c["subnet_id"] for c in st[3]["list"]]
        assert victim in [w.pid for w in workers] and len(first) == 4
        os.kill(victim, signal.SIGKILL)
        F.figure("kills injected", 1)
        st = F.wait_for(lambda: (lambda x: x if x[0] in TERMINAL else None)(_verify_state(env, jid)),
                        F.LEASE_S + 240, what="the job to finish after the kill")
        job = env.client.get(f"/jobs/{jid}").json()
        assert job["status"] == "succeeded" and st[2] >= 2, (job, [F.log_tail(w) for w in workers])
        F.figure("jobs finished after a kill", 1)
        ver = job["result"]["verification"]
        assert [c["subnet_id"] for c in ver["candidates"]] == first           # the stored candidates, not a new search
        assert ver["chosen"] == job["result"]["subnet_id"] and job["result"]["measured_accuracy"] is not None
        with env.db.session() as sess:                                        # each sub-network measured once
            n = sess.scalar(select(func.count()).select_from(SubnetCalibration)
                            .where(SubnetCalibration.subnet_id.in_(first)))
        assert n == 4
    finally:
        for w in workers:
            F.stop(w)
        _close(env, backend)


def _post_many(base: str, n: int, kill_after: int, api) -> int:
    """n concurrent POSTs (distinct requests); SIGKILL the API once `kill_after` have been answered."""
    answered, lock = [0], threading.Lock()

    def one(i):
        try:
            httpx.post(f"{base}/specialize", timeout=20, json={"device": "dev", "constraints": {"latency_ms": 3.0},
                                                               "options": {"seed": i}, "use_pareto": False})
        except httpx.HTTPError:
            return
        with lock:
            answered[0] += 1
            if answered[0] == kill_after:
                os.killpg(api.pid, signal.SIGKILL)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    return answered[0]


def _count(env, status: str) -> int:
    with env.db.engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM jobs WHERE status = :s"), {"s": status}).scalar())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_api_killed_between_commit_and_publish_leaves_no_orphan(backend, request, settings_factory, shared_store):
    s = _settings(backend, request, settings_factory)
    env = _make_env(s, shared_store)
    port = F.free_port()
    api, worker = F.start_api(s, port), None
    try:
        env.add_device("dev")
        base = f"http://127.0.0.1:{port}"
        F.wait_for(lambda: _up(base), 60, 0.2, "the API")
        worker = F.start_worker(s)
        warm = httpx.post(f"{base}/specialize", timeout=20, json={"device": "dev", "constraints": {"latency_ms": 3.0},
                                                                   "options": {"seed": 999}, "use_pareto": False})
        F.wait_for(lambda: _count(env, "succeeded") == 1, 90, 0.2, "the worker to be ready")   # warm: it consumes
        assert warm.status_code == 202
        _post_many(base, 50, 15, api)
        api.wait(timeout=10)
        try:
            F.wait_for(lambda: _count(env, "queued") == 0 and _count(env, "running") == 0,
                       F.LEASE_S + 60, 0.2, "the sweeper to publish the orphans")
        except AssertionError:
            with env.db.engine.connect() as c:
                rows = c.execute(text("SELECT status, count(*), min(heartbeat_at), max(attempts) FROM jobs "
                                      "GROUP BY status")).all()
            raise AssertionError(f"{rows}; worker alive: {worker.poll() is None}\n{F.log_tail(worker)}") from None
        F.figure(f"orphaned jobs after the sweeper's period [{backend}]", _count(env, "queued"))
        assert _count(env, "failed") == 0
        # the warm worker starts a published job at once; one that started a lease or more after it was created
        # had no message (committed, then the API died before publishing) until the sweeper published it
        from sqlalchemy import select
        from service.db.models import Job
        with env.db.session() as sess:
            rows = sess.execute(select(Job.created_at, Job.started_at)).all()
        late = sum(1 for created, started in rows if (started - created).total_seconds() >= F.LEASE_S * 0.9)
        F.figure(f"jobs orphaned by the API kill, published by the sweeper [{backend}]", late)
    finally:
        F.stop(api, signal.SIGKILL)
        F.stop(worker)
        _close(env, backend)


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_broker_loses_its_data_and_comes_back(settings_factory, shared_store, request):
    """Redis stopped (SIGKILL, no persistence: every queued message lost) and restarted on the same port."""
    rd = F.PrivateRedis().start()
    s = settings_factory("postgres", request.getfixturevalue("migrated_pg"), rd.url, job_lease_s=F.LEASE_S)
    env = _make_env(s, shared_store)
    worker = None
    try:
        env.add_device("dev")
        body = {"device": "dev", "constraints": {"latency_ms": 3.0}, "use_pareto": False}
        jid = env.client.post("/specialize", json={**body, "options": {"seed": 1}}).json()["id"]
        rd.kill()                                                   # its message is gone with the broker
        r = env.client.post("/specialize", json={**body, "options": {"seed": 2}})
        assert r.status_code == 503 and r.headers["Retry-After"], r.text
        assert env.client.get("/healthz").status_code == 200
        rd.start()
        t0 = time.monotonic()
        worker = F.start_worker(s)
        F.wait_for(lambda: env.client.get(f"/jobs/{jid}").json()["status"] == "succeeded", F.LEASE_S + 90, 0.2,
                   "the lost job to be re-published and run")
        F.figure("time to run a job whose message the broker lost (s, incl. worker start)",
                 round(time.monotonic() - t0, 2))
        time.sleep(queue_breaker_s())
        r = env.client.post("/specialize", json={**body, "options": {"seed": 2}})
        assert r.status_code == 202, r.text
    finally:
        F.stop(worker)
        rd.kill()
        _close(env, "postgres")


def queue_breaker_s() -> float:
    from service.jobs.queue import BREAKER_S
    return BREAKER_S


def test_hung_broker_answers_503_fast_and_healthz_stays_fast(settings_factory, shared_store):
    hb = F.HungBroker()
    s = settings_factory("sqlite", broker_url=f"redis://127.0.0.1:{hb.port}/0", broker_publish_timeout_s=1.0)
    env = _make_env(s, shared_store)
    port = F.free_port()
    api = F.start_api(s, port)                      # its own process: the clients here do not share its GIL
    base = f"http://127.0.0.1:{port}"
    try:
        env.add_device("dev")                       # its Pareto front is not queued (broker hung): still 201
        F.wait_for(lambda: _up(base), 60, 0.2, "the API")
        health, posts, stop = [], [], threading.Event()

        def sample():
            with httpx.Client(base_url=base, timeout=30) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    health.append(time.perf_counter() - t)
                    time.sleep(0.01)

        def post(i):
            t = time.perf_counter()
            r = httpx.post(f"{base}/specialize", timeout=60, json={
                "device": "dev", "constraints": {"latency_ms": 3.0}, "options": {"seed": i}, "use_pareto": False})
            posts.append((r.status_code, r.headers.get("retry-after"), time.perf_counter() - t))

        sampler = threading.Thread(target=sample)
        sampler.start()
        time.sleep(1.5)                              # the same host's /healthz before the burst: the baseline
        baseline, health[:] = list(health), []
        ts = [threading.Thread(target=post, args=(i,)) for i in range(60)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=60)
        time.sleep(0.3)
        stop.set()
        sampler.join(timeout=30)
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert {p[0] for p in posts} == {503} and all(p[1] for p in posts), posts[:3]
        F.figure("POST /specialize to a hung broker: slowest 503 (s)", round(max(p[2] for p in posts), 3))
        F.figure("/healthz p99 while the broker hangs (ms)", round(F.p99(health) * 1000, 1))
        F.figure("/healthz p99 on the same host before (ms)", round(F.p99(baseline) * 1000, 1))
        assert max(p[2] for p in posts) < 10
        assert F.p99(health) < 1.0 and len(health) > 10
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok"
        with env.db.engine.connect() as c:           # nothing stays queued that no worker will see
            assert c.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar() == 0
    finally:
        F.stop(api)
        _close(env, "sqlite")
        hb.close()


def alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines.append(f"Conv-input:32x32x3-output:16x16x8: {{mean: *a{levels - 1}, count: 1, std: 0}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_yaml_alias_bomb_costs_no_memory(backend, request, settings_factory, shared_store):
    s = _settings(backend, request, settings_factory)
    env = _make_env(s, shared_store)
    try:
        bomb = alias_bomb(9)                            # 10^9 elements if expanded
        before = F.rss_mb()
        sizes = []
        for path, ct in (("/devices?name=bomb", "application/yaml"), ("/devices?name=bomb2", "text/plain")):
            t = time.perf_counter()
            r = env.client.post(path, content=bomb, headers={**env.h, "content-type": ct})
            sizes.append(len(r.content))
            assert r.status_code == 422, r.text[:500]
            assert "alias" in r.json()["error"]["message"]
            assert time.perf_counter() - t < 5
        files = [("file", ("32_lookup_table.yaml", bomb.encode(), "application/yaml"))]
        r = env.client.post("/devices", data={"name": "bomb3"}, files=files, headers=env.h)
        assert r.status_code == 422 and len(r.content) < 4096
        r = env.client.post("/devices/nope/timings", content=bomb, headers=env.h)
        assert r.status_code in (404, 422)
        growth = F.rss_mb() - before
        F.figure(f"API memory growth under the alias bomb (MB) [{backend}]", round(growth, 1))
        assert max(sizes) < 4096 and growth < 50
    finally:
        _close(env, backend)


def _serve(settings, port):
    import subprocess
    import sys
    from ofa_service_testlib import ROOT
    env = F.service_env(settings, OFA_VAR_DIR=settings.var_dir)
    return subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-profile", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_ofa_serve_stops_its_worker(how, settings_factory):
    """SIGTERM (kill, systemd, containers) stops `ofa serve` and its worker as Ctrl-C does; a worker whose `ofa
    serve` was SIGKILLed exits too (no orphaned workers piling up on the queue)."""
    s = settings_factory("sqlite")
    port = F.free_port()
    serve = _serve(s, port)
    try:
        F.wait_for(lambda: _up(f"http://127.0.0.1:{port}"), 120, 0.2, "ofa serve")
        worker = F.wait_for(lambda: F.children(serve.pid), 30, what="its worker")[0]
        os.kill(serve.pid, getattr(signal, how))
        serve.wait(timeout=30)
        F.wait_for(lambda: not F.alive(worker), 30, 0.1, f"the worker to exit after {how}")
        if how == "SIGTERM":
            assert serve.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    finally:
        F.stop(serve, signal.SIGKILL)
