"""Service benchmark on PostgreSQL + Redis with a real uvicorn server and 2 real Celery workers (loopback).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_service.py [--fresh 5] [--downloads 10]

Prints: POST /specialize answered from cache / the Pareto front (p50); a fresh search end to end (p50) on the
default supernet; checkpoint download MB/s; 200 concurrent POSTs (20 distinct x 10) against 2 workers: errors,
lost jobs, searches per distinct request (must be 1 each).

Uses the committed default supernet weights/predictor when present, else a freshly initialised supernet and a
small synthetic predictor (as in the tests); the device table is synthetic (complete, deterministic).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "service"))

import httpx  # noqa: E402
import psycopg  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def p50(xs):
    return statistics.median(xs) if xs else float("nan")


def wait_job(c: httpx.Client, jid: str, timeout: float = 300) -> dict:
    t_end = time.time() + timeout
    while time.time() < t_end:
        j = c.get(f"/jobs/{jid}").json()
        if j["status"] in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(0.05)
    return j


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh", type=int, default=5, help="fresh end-to-end searches")
    ap.add_argument("--downloads", type=int, default=10)
    ap.add_argument("--population", type=int, default=100)
    ap.add_argument("--generations", type=int, default=100)
    args = ap.parse_args()

    from ofa_core.spec import get_spec
    from ofa_service_assets import make_assets, synthetic_table
    spec = get_spec("ofa_mbv3_cifar10")
    tmp = tempfile.mkdtemp(prefix="ofa_bench_")
    if spec.weights_path and os.path.exists(spec.weights_path) and spec.predictor_path and os.path.exists(spec.predictor_path):
        weights, predictor, origin = spec.weights_path, spec.predictor_path, "committed assets"
    else:
        weights, predictor = make_assets(tmp)
        origin = "fresh supernet + synthetic predictor (committed assets not present)"
    dbname = f"ofa_bench_{os.getpid()}"
    admin = psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{dbname}"')
    queue = f"ofa_bench_{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "OFA_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{dbname}",
           "OFA_BROKER_URL": "redis://127.0.0.1:6379/0", "OFA_TASK_QUEUE": queue,
           "OFA_WEIGHTS": json.dumps({"ofa_mbv3_cifar10": weights}),
           "OFA_PREDICTORS": json.dumps({"ofa_mbv3_cifar10": predictor}),
           "OFA_SUPERNETS": json.dumps(["ofa_mbv3_cifar10"]), "OFA_LOG_LEVEL": "WARNING",
           "OFA_DEFAULT_POPULATION": str(args.population), "OFA_DEFAULT_GENERATIONS": str(args.generations),
           # throughput, not the compute policy: no per-client rate limit, anonymous searches allowed
           "OFA_RATE_LIMIT_SEARCHES": "0", "OFA_SEARCH_AUTH": "none"}
    procs = []
    try:
        subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        key = subprocess.run([sys.executable, "-m", "service.cli", "create-api-key"], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "service.app:app_factory",
                                       "--port", str(port), "--log-level", "warning", "--no-access-log"],
                                      cwd=ROOT, env=env, stderr=subprocess.DEVNULL))
        for i in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                                           queue, "--pool", "solo", "-n", f"bench{i}@%h", "--without-gossip",
                                           "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        c = httpx.Client(base_url=base, timeout=60)
        for _ in range(300):
            try:
                if c.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        print(f"setup: PostgreSQL db {dbname}, Redis broker, 2 workers (solo), supernet weights: {origin}")
        r = c.post("/devices?name=bench-dev", content=json.dumps(synthetic_table()),
                   headers={"X-API-Key": key, "content-type": "application/json"})
        assert r.status_code == 201, r.text
        t0 = time.time()
        while not c.get("/devices/bench-dev").json()["pareto_front"]:
            time.sleep(0.1)
        front = c.get("/devices/bench-dev").json()["pareto_front"]
        print(f"pareto front: {len(front)} points, computed by a worker in {time.time() - t0:.2f} s after the upload")

        # 1) fresh searches, end to end (POST -> worker -> succeeded)
        fresh = []
        for i in range(args.fresh):
            body = {"device": "bench-dev", "constraints": {"latency_ms": 1.5 + 0.1 * i}, "use_pareto": False,
                    "options": {"seed": 1000 + i}}
            t = time.perf_counter()
            r = c.post("/specialize", json=body)
            j = wait_job(c, r.json()["id"])
            fresh.append(time.perf_counter() - t)
            assert j["status"] == "succeeded", j
        print(f"fresh search end to end (population {args.population}, {args.generations} generations): "
              f"p50 {p50(fresh) * 1000:.0f} ms over {len(fresh)}")

        # 2) answers from the Pareto front and from the cache
        lat = [front[i % len(front)]["latency_ms"] + 1e-9 for i in range(50)]
        tp = []
        for i, b in enumerate(lat):
            t = time.perf_counter()
            r = c.post("/specialize", json={"device": "bench-dev", "constraints": {"latency_ms": b * (1 + 1e-6 * i)}})
            tp.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["source"] == "pareto", r.text
        tc = []
        for i in range(50):
            body = {"device": "bench-dev", "constraints": {"latency_ms": 1.5}, "use_pareto": False,
                    "options": {"seed": 1000}}
            t = time.perf_counter()
            r = c.post("/specialize", json=body)
            tc.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        print(f"POST /specialize from Pareto front: p50 {p50(tp) * 1000:.1f} ms; from cache: p50 {p50(tc) * 1000:.1f} ms")

        # 3) checkpoint download
        sid = r.json()["result"]["subnet_id"]
        c.get(f"/subnets/{sid}/checkpoint").raise_for_status()    # first build
        total, t = 0, time.perf_counter()
        for _ in range(args.downloads):
            with c.stream("GET", f"/subnets/{sid}/checkpoint") as resp:
                for chunk in resp.iter_bytes():
                    total += len(chunk)
        dt = time.perf_counter() - t
        print(f"checkpoint download (safetensors, {total / args.downloads / 1e6:.2f} MB): "
              f"{total / dt / 1e6:.1f} MB/s on loopback")

        # 4) 200 concurrent POSTs: 20 distinct x 10
        bodies = [{"device": "bench-dev", "constraints": {"latency_ms": 1.2 + 0.05 * k}, "use_pareto": False,
                   "options": {"seed": 5000 + k, "population": 32, "generations": 20}} for k in range(20)]
        reqs = [bodies[i % 20] for i in range(200)]
        errors, ids = [], {}

        def post(i_body):
            i, body = i_body
            try:
                rr = httpx.post(base + "/specialize", json=body, timeout=60)
                if rr.status_code not in (200, 202):
                    errors.append(rr.status_code)
                    return
                ids.setdefault(i % 20, set()).add(rr.json()["id"])
            except Exception as e:
                errors.append(type(e).__name__)
        t = time.perf_counter()
        with ThreadPoolExecutor(200) as ex:
            list(ex.map(post, enumerate(reqs)))
        t_post = time.perf_counter() - t
        all_ids = {j for s in ids.values() for j in s}
        final = {j: wait_job(c, j, 600) for j in all_ids}
        t_all = time.perf_counter() - t
        lost = [j for j, v in final.items() if v["status"] != "succeeded"]
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={dbname}") as conn:
            rows = conn.execute("SELECT request_hash, count(*), sum(attempts) FROM jobs WHERE id = ANY(%s) "
                                "GROUP BY request_hash", (list(all_ids),)).fetchall()
        per = sorted(int(r[2]) for r in rows)
        print(f"200 concurrent POSTs (20 distinct x 10) against 2 workers: {len(errors)} errors, {len(lost)} lost jobs, "
              f"{len(all_ids)} jobs for 20 distinct requests, searches per distinct request: min {min(per)} max {max(per)} "
              f"(all POSTs answered in {t_post:.2f} s, all searches done in {t_all:.2f} s)")
        return 0 if not errors and not lost and len(all_ids) == 20 and set(per) == {1} else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    sys.exit(main())
