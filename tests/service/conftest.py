"""Fixtures for the service tests: real PostgreSQL + Redis (unreachable = FAIL, never skip) and the embedded
default (SQLite + the serverless SQLAlchemy kombu transport)."""
from __future__ import annotations

import json
import os
import sys
import uuid

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from ofa_service_assets import make_assets, synthetic_table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared", "data", "ofa-reference")
PG_HOST = os.environ.get("OFA_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("OFA_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("OFA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    return make_assets(str(d))


@pytest.fixture(scope="session")
def pg_url():
    """A fresh database ofa_test_<pid> for this session, dropped afterwards. Unreachable PostgreSQL fails."""
    import psycopg
    name = f"ofa_test_{RUN}"
    try:
        admin = psycopg.connect(f"host={PG_HOST} user={PG_USER} dbname=postgres connect_timeout=5", autocommit=True)
    except Exception as e:  # must fail, not skip: CI has to exercise PostgreSQL
        pytest.fail(f"PostgreSQL at {PG_HOST}:5432 is unreachable: {e}")
    admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:5432/{name}"
    admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


@pytest.fixture(scope="session")
def redis_url():
    import redis
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as e:
        pytest.fail(f"Redis at {REDIS_URL} is unreachable: {e}")
    return REDIS_URL


@pytest.fixture(scope="session")
def settings_factory(assets, tmp_path_factory):
    from service.settings import Settings
    w, p = assets

    def make(backend: str, db_url: str | None = None, broker_url: str | None = None, **kw) -> Settings:
        d = tmp_path_factory.mktemp(f"var_{backend}")
        base = dict(var_dir=str(d), task_queue=f"ofa_test_{RUN}_{uuid.uuid4().hex[:6]}",
                    weights={"ofa_mbv3_cifar10": w},
                    predictors={"ofa_mbv3_cifar10": p,
                                "ofa_mbv3_d234_e346_k357_w1.2": os.path.join(SHARED, "acc_predictor.pth")},
                    log_level="WARNING", pareto_points=8, pareto_population=16, pareto_generations=5,
                    default_population=16, default_generations=5, sse_poll_s=0.05, broker_publish_timeout_s=1.0)
        if backend == "sqlite":
            base["database_url"] = db_url or f"sqlite:///{d}/ofa.sqlite"
            base["broker_url"] = broker_url or f"sqla+sqlite:///{d}/broker.sqlite"
        else:
            base["database_url"] = db_url
            base["broker_url"] = broker_url
        base.update(kw)
        return Settings(**base)
    return make


@pytest.fixture(scope="session")
def shared_store(settings_factory):
    from service.supernets.store import SupernetStore
    return SupernetStore(settings_factory("sqlite")).load()


@pytest.fixture(scope="session")
def migrated_pg(pg_url):
    from service.db.migrate import upgrade
    upgrade(pg_url)
    return pg_url


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
    app = create_app(settings, store=store)
    client = TestClient(app)
    client.__enter__()
    return Env(settings, app, client, create_api_key(app.state.db, "test"))


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, settings_factory, shared_store):
    """The API on the embedded default (SQLite + serverless broker) and on PostgreSQL + Redis."""
    if request.param == "sqlite":
        s = settings_factory("sqlite")
    else:
        s = settings_factory("postgres", request.getfixturevalue("migrated_pg"), request.getfixturevalue("redis_url"))
    e = _make_env(s, shared_store)
    yield e
    e.client.__exit__(None, None, None)
    if request.param == "postgres":  # keep the session database but free names for the next test
        from sqlalchemy import text
        with e.db.engine.begin() as c:
            c.execute(text("TRUNCATE jobs, subnets, pareto_fronts, latency_entries, latency_tables, devices, api_keys "
                           "RESTART IDENTITY CASCADE"))
    e.db.dispose()


@pytest.fixture
def sqlite_env(settings_factory, shared_store):
    e = _make_env(settings_factory("sqlite"), shared_store)
    yield e
    e.client.__exit__(None, None, None)
