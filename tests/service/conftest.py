"""Fixtures for the service tests: real PostgreSQL + Redis (unreachable = FAIL, never skip) and the embedded
default (SQLite + the serverless SQLAlchemy kombu transport)."""
from __future__ import annotations

import os
import sys
import uuid

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from ofa_service_assets import make_assets, synthetic_table  # noqa: E402,F401
from ofa_service_testlib import PG_HOST, PG_USER, REDIS_URL, RUN, SHARED, _make_env  # noqa: E402

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
    yield REDIS_URL
    r = redis.Redis.from_url(REDIS_URL)   # drop this session's queues (tasks nobody consumed)
    for k in list(r.scan_iter(f"*ofa_test_{RUN}*")):
        r.delete(k)


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    """(calibration, evaluation) .npz files of 200 images each, cut from the packaged ones."""
    from ofa_service_assets import make_image_sets
    return make_image_sets(str(tmp_path_factory.mktemp("image_sets")))


@pytest.fixture(scope="session")
def settings_factory(assets, image_sets, tmp_path_factory):
    from service.settings import Settings
    w, p = assets

    def make(backend: str, db_url: str | None = None, broker_url: str | None = None, **kw) -> Settings:
        d = tmp_path_factory.mktemp(f"var_{backend}")
        base = dict(var_dir=str(d), task_queue=f"ofa_test_{RUN}_{uuid.uuid4().hex[:6]}",
                    weights={"ofa_mbv3_cifar10": w},
                    predictors={"ofa_mbv3_cifar10": p,
                                "ofa_mbv3_d234_e346_k357_w1.2": os.path.join(SHARED, "acc_predictor.pth")},
                    log_level="WARNING", pareto_points=8, pareto_population=16, pareto_generations=5,
                    pareto_refine_budgets=2, pareto_refine_population=16, pareto_refine_generations=3,
                    default_population=16, default_generations=5, sse_poll_s=0.05, broker_publish_timeout_s=1.0,
                    calibration_data={"ofa_mbv3_cifar10": image_sets[0]},
                    evaluation_data={"ofa_mbv3_cifar10": image_sets[1]})
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


from ofa_live import live_service  # noqa: E402,F401  (session fixture: a running `ofa serve`)


def pytest_terminal_summary(terminalreporter):
    """The figures of the fault-injection suite (tests/service/test_service_faults.py), when it ran."""
    from ofa_faultlib import FIGURES
    if not FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for name, values in FIGURES.items():
        summed = name.startswith(("kills", "jobs finished", "schemathesis 5xx"))
        shown = sum(values) if summed else (max(values) if len(values) > 1 else values[0])
        detail = "" if len(values) == 1 or summed else f"  (max of {values})"
        terminalreporter.write_line(f"{name}: {shown}{detail}")
