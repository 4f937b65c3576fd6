"""`ofa` command line: migrate, create-api-key, import-table, profile-host, serve, worker."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

log = logging.getLogger("ofa.cli")


def _settings():
    from service.settings import get_settings
    return get_settings()


def cmd_migrate(args) -> int:
    from service.db.migrate import downgrade, upgrade
    s = _settings()
    if args.downgrade:
        downgrade(s.database_url, args.downgrade)
    else:
        upgrade(s.database_url, args.revision)
    print(f"database at {args.revision if not args.downgrade else args.downgrade}: {_redact(s.database_url)}")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def cmd_create_api_key(args) -> int:
    from service.auth.service import create_api_key
    from service.db.session import Database
    key = create_api_key(Database(_settings().database_url), args.name)
    print(key)
    print("store this key now; only its hash is kept", file=sys.stderr)
    return 0


def _store_and_db():
    from service.db.session import Database
    from service.supernets.store import SupernetStore
    s = _settings()
    db = Database(s.database_url)
    store = SupernetStore(s).load()
    store.sync_db(db)
    return s, db, store


def _enqueue_front(s, device_id, table_id, supernet) -> None:
    from service.jobs import queue as Q
    from workers.celery_app import make_celery
    if not Q.publish_front(make_celery(s), s, device_id, table_id, supernet):
        print("warning: Pareto front not queued (the broker is unreachable)", file=sys.stderr)


def cmd_import_table(args) -> int:
    from service.devices import repository as repo
    from service.devices import service as dsvc
    s, db, store = _store_and_db()
    supernet = args.supernet or s.default_supernet
    files = sorted(f for f in os.listdir(args.directory) if f.endswith(("_lookup_table.yaml", "_lookup_table.json")))
    if not files:
        print(f"{args.directory}: no <r>_lookup_table.yaml files", file=sys.stderr)
        return 2
    docs = [(open(os.path.join(args.directory, f), "rb").read(), None, f) for f in files]
    table = dsvc.parse_upload(store, supernet, docs)
    with db.session() as sess:
        d = repo.get_by_name(sess, args.device)
        if d is None:
            d, t = dsvc.create_device(sess, store, args.device, supernet, args.description or "", table,
                                      kind="uploaded", source="imported", provenance={"imported_from": args.directory})
        else:
            t = dsvc.add_version(sess, d, table, "imported", {"imported_from": args.directory})
        ids = (d.id, t.id, t.version)
    print(f"device {args.device}: table version {ids[2]} ({sum(len(v) for v in table.values())} operators, "
          f"resolutions {sorted(table)})")
    _enqueue_front(s, ids[0], ids[1], supernet)
    return 0


def cmd_profile_host(args) -> int:
    from workers import runner
    s, db, store = _store_and_db()
    runner.profile_host(db, store, s, args.device or s.host_device_name, args.supernet or s.default_supernet,
                        repeats=args.repeats, check=args.check)
    print(f"device {args.device or s.host_device_name} registered from this host's measurements")
    return 0


def _worker_argv(s, concurrency: int, pool: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", s.task_queue,
            "--concurrency", str(concurrency), "--pool", pool, "--loglevel", s.log_level.upper(), "--without-gossip",
            "--without-mingle", "--without-heartbeat"]


def cmd_worker(args) -> int:
    s = _settings()
    os.execv(sys.executable, _worker_argv(s, args.concurrency, args.pool))
    return 0


def cmd_serve(args) -> int:
    """Embedded default: migrate, start a worker subprocess, measure the host on first start, serve the API."""
    import uvicorn
    from service.db.migrate import upgrade
    from service.devices import repository as repo
    s = _settings()
    os.makedirs(s.var_dir, exist_ok=True)
    upgrade(s.database_url)
    worker = subprocess.Popen(_worker_argv(s, args.concurrency, "solo" if args.concurrency == 1 else "prefork"),
                              env=os.environ.copy())
    try:
        if s.auto_profile_host and not args.no_profile:
            _, db, store = _store_and_db()
            with db.session() as sess:
                exists = repo.get_by_name(sess, s.host_device_name) is not None
            if not exists:
                print(f"first start: measuring this host's latency table as device {s.host_device_name!r}", file=sys.stderr)
                from workers import runner
                try:
                    runner.profile_host(db, store, s, s.host_device_name, s.default_supernet, repeats=args.repeats)
                except Exception as e:
                    print(f"warning: host profiling failed: {e}", file=sys.stderr)
            db.dispose()
        from service.app import create_app
        uvicorn.run(create_app(s), host=args.host, port=args.port, log_config=None)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    from service.logging import configure_logging
    p = argparse.ArgumentParser(prog="ofa", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("migrate", help="alembic upgrade head (the prestart step)")
    m.add_argument("--revision", default="head")
    m.add_argument("--downgrade", metavar="REV", help="downgrade to REV (e.g. base) instead")
    m.set_defaults(fn=cmd_migrate)
    k = sub.add_parser("create-api-key", help="create an API key for write endpoints (printed once)")
    k.add_argument("--name", default="default")
    k.set_defaults(fn=cmd_create_api_key)
    t = sub.add_parser("import-table", help="import <r>_lookup_table.yaml files as a device's new table version")
    t.add_argument("device")
    t.add_argument("directory")
    t.add_argument("--supernet")
    t.add_argument("--description")
    t.set_defaults(fn=cmd_import_table)
    h = sub.add_parser("profile-host", help="measure this host's latency table and register it as a device")
    h.add_argument("--device")
    h.add_argument("--supernet")
    h.add_argument("--repeats", type=int, help="timed runs of each covering network (default 40)")
    h.add_argument("--check", type=int, default=20,
                   help="random sub-networks timed end to end alongside; their agreement is stored (0: none)")
    h.set_defaults(fn=cmd_profile_host)
    sv = sub.add_parser("serve", help="embedded default: SQLite + serverless broker, API + worker")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--concurrency", type=int, default=1)
    sv.add_argument("--no-profile", action="store_true")
    sv.add_argument("--repeats", type=int)
    sv.set_defaults(fn=cmd_serve)
    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--pool", default="prefork")
    w.set_defaults(fn=cmd_worker)
    args = p.parse_args(argv)
    s = _settings()
    configure_logging(s.log_level, s.log_json)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
