"""`alembic upgrade head` from empty and `downgrade base` on SQLite and PostgreSQL; models match migrations."""
from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
from sqlalchemy import create_engine, inspect

from ofa_service_testlib import PG_HOST, PG_USER, ROOT, RUN

TABLES = {"supernets", "devices", "latency_tables", "latency_entries", "jobs", "subnets", "pareto_fronts", "api_keys",
          "subnet_calibrations", "device_timings"}


def _roundtrip(url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from service.db.base import Base
    from service.db.migrate import downgrade, upgrade
    from service.db.session import normalize_url
    upgrade(url)
    eng = create_engine(normalize_url(url))
    try:
        assert TABLES <= set(inspect(eng).get_table_names())
        with eng.connect() as c:   # the migrations produce exactly the models' schema
            diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert diff == [], diff
        downgrade(url, "base")
        assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert TABLES <= set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_sqlite_up_down(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path}/m.sqlite")


def test_postgres_up_down():
    name = f"ofa_test_mig_{RUN}"
    try:
        admin = psycopg.connect(f"host={PG_HOST} user={PG_USER} dbname=postgres connect_timeout=5", autocommit=True)
    except Exception as e:
        pytest.fail(f"PostgreSQL unreachable: {e}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        _roundtrip(f"postgresql+psycopg://{PG_USER}@{PG_HOST}:5432/{name}")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_cli_migrate(tmp_path):
    env = {"OFA_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "service.cli", "migrate"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "service.cli", "create-api-key", "--name", "ci"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ofa_"), r.stderr
