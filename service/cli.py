"""`ofa` command line: migrate, create-api-key, import-table, register-predictor, profile-host, specialize,
serve, worker. Every command uses the one data directory of the settings (absolute; `OFA_VAR_DIR`), so it works
from any working directory; a user mistake prints one line naming the problem (exit 2), not a traceback."""
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


def _ready_database(s) -> None:
    """The embedded SQLite database is created and migrated on first use (PostgreSQL: `ofa migrate`)."""
    os.makedirs(s.var_dir, exist_ok=True)
    if s.database_url.startswith("sqlite"):
        from service.db.migrate import upgrade
        upgrade(s.database_url)


def cmd_create_api_key(args) -> int:
    from service.auth.service import create_api_key
    from service.db.session import Database
    _ready_database(_settings())
    key = create_api_key(Database(_settings().database_url), args.name)
    print(key)
    print("store this key now; only its hash is kept", file=sys.stderr)
    return 0


def cmd_list_api_keys(args) -> int:
    from service.auth.service import list_api_keys
    from service.db.session import Database
    _ready_database(_settings())
    rows = list_api_keys(Database(_settings().database_url))
    print(f"{'id':>4}  {'prefix':<14} {'state':<8} {'last used':<20} name")
    for k in rows:
        used = k["last_used_at"].strftime("%Y-%m-%d %H:%M:%S") if k["last_used_at"] else "never"
        print(f"{k['id']:>4}  {k['prefix']:<14} {'revoked' if k['revoked'] else 'active':<8} {used:<20} {k['name']}")
    return 0


def cmd_revoke_api_key(args) -> int:
    from service.auth.service import revoke_api_key
    from service.db.session import Database
    _ready_database(_settings())
    n = revoke_api_key(Database(_settings().database_url), args.key)
    if not n:
        print(f"no active API key with id or prefix {args.key!r}", file=sys.stderr)
        return 1
    print(f"revoked {n} key(s)")
    return 0


def _store_and_db():
    from service.db.session import Database
    from service.supernets.store import SupernetStore
    s = _settings()
    _ready_database(s)
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
    from service.engine.tables import table_sha256
    if not os.path.isdir(args.directory):
        raise FileNotFoundError(2, "no such directory", args.directory)
    files = sorted(f for f in os.listdir(args.directory) if f.endswith(("_lookup_table.yaml", "_lookup_table.json")))
    if not files:
        raise ValueError(f"{args.directory}: no <r>_lookup_table.yaml (or .json) files in this directory")
    s, db, store = _store_and_db()
    supernet = args.supernet or s.default_supernet
    docs = [(open(os.path.join(args.directory, f), "rb").read(), None, f) for f in files]
    table = dsvc.parse_upload(store, supernet, docs)
    source = os.path.abspath(args.directory)
    with db.session() as sess:
        d = repo.get_by_name(sess, args.device)
        if d is not None and d.supernet.name != supernet:
            raise ValueError(f"device {args.device!r} has tables for supernet {d.supernet.name!r}, not {supernet!r} "
                             f"(pass --supernet {d.supernet.name})")
        cur = repo.current_table(sess, d) if d is not None else None
        if cur is not None and cur.sha256 == table_sha256(table) and cur.batch_size == args.batch_size:
            print(f"device {args.device}: unchanged (identical to table version {cur.version}, sha256 "
                  f"{cur.sha256[:12]}); nothing imported")
            return 0
        if d is None:
            d, t = dsvc.create_device(sess, store, args.device, supernet, args.description or "", table,
                                      kind="uploaded", source="imported", provenance={"imported_from": source},
                                      batch_size=args.batch_size)
        else:
            t = dsvc.add_version(sess, d, table, "imported", {"imported_from": source}, batch_size=args.batch_size)
        ids = (d.id, t.id, t.version)
    print(f"device {args.device}: table version {ids[2]} ({sum(len(v) for v in table.values())} operators, "
          f"resolutions {sorted(table)}, batch size {args.batch_size})")
    _enqueue_front(s, ids[0], ids[1], supernet)
    return 0


def cmd_register_predictor(args) -> int:
    """Copy an accuracy predictor into the data directory, where the service (and its workers, also while they
    run) find it for that supernet unless OFA_PREDICTORS names another file."""
    from ofa_core.spec import get_spec
    from service.engine.adapter import SupernetEngine
    from service.supernets.store import PREDICTOR_EXTENSIONS, register_predictor_file
    s = _settings()
    try:
        spec = get_spec(args.supernet)
    except KeyError:
        raise ValueError(f"unknown supernet {args.supernet!r} (served: {', '.join(s.supernets)})") from None
    if not os.path.isfile(args.file):
        raise FileNotFoundError(2, "no such file", args.file)
    ext = os.path.splitext(args.file)[1]
    if ext not in PREDICTOR_EXTENSIONS:
        raise ValueError(f"{args.file}: a predictor is a .safetensors file or the published .pth")
    try:
        eng = SupernetEngine(spec, None, os.path.abspath(args.file))
    except Exception as e:
        raise ValueError(f"{args.file} is not a predictor for {args.supernet}: {type(e).__name__}: {e}") from None
    dest = register_predictor_file(s.var_dir, args.supernet, args.file)
    print(f"predictor for {args.supernet} registered: {dest} (supernet version {eng.version}); a running service "
          f"loads it on the next request")
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
                              env={**os.environ, "OFA_PARENT_PID": str(os.getpid())}, preexec_fn=_die_with_parent)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_exit)   # SIGTERM stops the worker too, as Ctrl-C does
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
        signal.signal(signal.SIGTERM, previous)
        _stop_worker(worker)
    return 0


def _sigterm_as_exit(signum, frame):
    """SIGTERM (kill, systemd, container runtimes) ends `ofa serve` through its `finally` like Ctrl-C: uvicorn
    stops gracefully and re-raises the signal after shutdown, which lands here instead of killing the process
    before the worker is stopped."""
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """In the worker child: the kernel sends it SIGTERM when `ofa serve` dies, even by SIGKILL (Linux; the
    worker's sweeper thread also checks OFA_PARENT_PID elsewhere)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=15)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait(timeout=5)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default (where it has one)."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from service import cli_predictor, cli_specialize
    p = argparse.ArgumentParser(prog="ofa", description=__doc__, formatter_class=_Help)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    add = lambda name, help, **kw: sub.add_parser(name, help=help, description=help, formatter_class=_Help, **kw)  # noqa: E731
    m = add("migrate", "alembic upgrade head (the prestart step)")
    m.add_argument("--revision", default="head", help="target revision")
    m.add_argument("--downgrade", metavar="REV", help="downgrade to REV (e.g. base) instead")
    m.set_defaults(fn=cmd_migrate)
    k = add("create-api-key", "create an API key for write endpoints (printed once)")
    k.add_argument("--name", default="default", help="a name to recognise the key by")
    k.set_defaults(fn=cmd_create_api_key)
    lk = add("list-api-keys", "list API keys: id, stored prefix (reveals nothing of the secret), name, state")
    lk.set_defaults(fn=cmd_list_api_keys)
    rk = add("revoke-api-key", "revoke an API key (by the id or the prefix that list-api-keys shows)")
    rk.add_argument("key", help="id or prefix (ofa_xxxxxxxx)")
    rk.set_defaults(fn=cmd_revoke_api_key)
    t = add("import-table", "import <r>_lookup_table.yaml files as a device's new table version (an identical "
                            "table is not imported again)")
    t.add_argument("device", help="device name (created if new)")
    t.add_argument("directory", help="folder with one <r>_lookup_table.yaml (or .json) per resolution")
    t.add_argument("--supernet", help="default: the service's default supernet")
    t.add_argument("--description", help="device description")
    t.add_argument("--batch-size", type=int, default=1, help="the batch the table was timed at (ms per batch)")
    t.set_defaults(fn=cmd_import_table)
    r = add("register-predictor", "register an accuracy predictor file for a supernet (copied into the data "
                                  "directory; e.g. the published w1.2 acc_predictor.pth)")
    r.add_argument("supernet", help="a served supernet, e.g. ofa_mbv3_d234_e346_k357_w1.2")
    r.add_argument("file", help="the predictor: the published acc_predictor.pth or a .safetensors of ofa_core")
    r.set_defaults(fn=cmd_register_predictor)
    h = add("profile-host", "measure this host's latency table and register it as a device")
    h.add_argument("--device", help="default: the setting host_device_name")
    h.add_argument("--supernet", help="default: the service's default supernet")
    h.add_argument("--repeats", type=int, help="timed runs of each covering network (default of the profiler: 40)")
    h.add_argument("--check", type=int, default=20,
                   help="random sub-networks timed end to end alongside; their agreement is stored (0: none)")
    h.set_defaults(fn=cmd_profile_host)
    cli_specialize.add_parser(sub, _Help)
    cli_predictor.add_parser(sub, _Help)
    sv = add("serve", "embedded default: SQLite + serverless broker, API + worker")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument("--concurrency", type=int, default=1, help="worker processes")
    sv.add_argument("--no-profile", action="store_true", help="do not measure this host on first start")
    sv.add_argument("--repeats", type=int, help="profiler repeats on first start (default of the profiler: 40)")
    sv.set_defaults(fn=cmd_serve)
    w = add("worker", "run a Celery worker")
    w.add_argument("--concurrency", type=int, default=1, help="worker processes")
    w.add_argument("--pool", default="prefork", help="Celery pool (prefork, solo, threads)")
    w.set_defaults(fn=cmd_worker)
    return p


def _user_error(e: BaseException) -> str | None:
    """One line naming the problem for a user mistake (or an unreachable dependency); None for a bug."""
    from sqlalchemy.exc import OperationalError, ProgrammingError
    from service.client import ClientError
    from service.errors import ServiceError
    if isinstance(e, ServiceError):
        where = {k: v for k, v in e.details.items() if k in ("key", "line", "field") and v is not None}
        return e.message + (f" ({', '.join(f'{k} {v}' for k, v in where.items())})" if where else "")
    if isinstance(e, ClientError):
        return str(e)
    if isinstance(e, (OperationalError, ProgrammingError)):
        first = str(e.orig if getattr(e, "orig", None) else e).splitlines()[0]
        return f"database {_redact(_settings().database_url)}: {first} (is it reachable and migrated? `ofa migrate`)"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    if isinstance(e, (ValueError, OSError, TimeoutError)):
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    from service.logging import configure_logging
    args = _parser().parse_args(argv)
    s = _settings()
    configure_logging(s.log_level, s.log_json)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print(f"ofa {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        msg = _user_error(e)
        if msg is None:
            raise
        print(f"ofa {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
