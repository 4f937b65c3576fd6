"""Shared helpers of the service tests (imported by conftest and the tests; unique module name on purpose)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from ofa_service_assets import make_assets, synthetic_table  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "data", "ofa-reference")
PG_HOST = os.environ.get("OFA_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("OFA_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("OFA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"

class Env:
    def __init__(self, settings, app, client, key):
        self.settings, self.app, self.client, self.key = settings, app, client, key
        self.h = {"X-API-Key": key}

    @property
    def db(self):
        return self.app.state.db

    @property
    def store(self):
        return self.app.state.store

    def add_device(self, name: str, table: dict | None = None, supernet: str | None = None):
        q = f"/devices?name={name}" + (f"&supernet={supernet}" if supernet else "")
        r = self.client.post(q, content=json.dumps(table or synthetic_table()),
                             headers={**self.h, "content-type": "application/json"})
        assert r.status_code == 201, r.text
        return r.json()

    def run_job(self, job_id: str) -> str:
        from workers import runner
        return runner.run_search(self.db, self.store, self.settings, job_id)


def _make_env(settings, store):
    from fastapi.testclient import TestClient
    from service.app import create_app
    from service.auth.service import create_api_key
    from service.db.migrate import upgrade
    if settings.database_url.startswith("sqlite"):
        upgrade(settings.database_url)
    for eng in store.engines.values():   # a new database reuses table ids: the shared store's caches are by id
        eng.forget_tables()
    app = create_app(settings, store=store)
    client = TestClient(app)
    client.__enter__()
    return Env(settings, app, client, create_api_key(app.state.db, "test"))


def start_worker(settings) -> subprocess.Popen:
    """A real Celery worker process (solo pool, 1 thread) on the settings' database, broker and queue, with small
    Pareto-front settings."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OFA_DATABASE_URL": settings.database_url,
           "OFA_BROKER_URL": settings.broker_url, "OFA_TASK_QUEUE": settings.task_queue,
           "OFA_WEIGHTS": json.dumps(settings.weights), "OFA_PREDICTORS": json.dumps(settings.predictors),
           "OFA_SUPERNETS": json.dumps(["ofa_mbv3_cifar10"]), "OFA_LOG_LEVEL": "WARNING",
           "OFA_CALIBRATION_DATA": json.dumps(settings.calibration_data),
           "OFA_EVALUATION_DATA": json.dumps(settings.evaluation_data),
           "OFA_PARETO_POINTS": "8", "OFA_PARETO_POPULATION": "16", "OFA_PARETO_GENERATIONS": "5",
           "OFA_PARETO_REFINE_BUDGETS": "2", "OFA_PARETO_REFINE_POPULATION": "16", "OFA_PARETO_REFINE_GENERATIONS": "3"}
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                             settings.task_queue, "--pool", "solo", "--concurrency", "1", "--without-gossip",
                             "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_job(env, job_id: str, worker: subprocess.Popen, timeout: float = 120.0) -> dict:
    """Poll GET /jobs/{id} until the job is finished (or `timeout`), failing at once if the worker died."""
    deadline = time.time() + timeout
    while True:
        job = env.client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.time() > deadline:
            return job
        assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
        time.sleep(0.2)


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a worker started by a test: SIGTERM (a warm shutdown), SIGKILL if it is still there after `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
