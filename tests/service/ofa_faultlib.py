"""Helpers of the fault-injection suite: real worker / API / broker processes on loopback, killed on purpose.

Figures the suite measures are recorded with `figure()` and printed at the end of the run (conftest's
pytest_terminal_summary)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from ofa_service_testlib import ROOT

FIGURES: dict[str, list] = {}
LEASE_S = 3.0          # short lease and sweep so that recovery fits a test (the defaults are 30 s / 10 s)
SWEEP_S = 0.5


def figure(name: str, value) -> None:
    FIGURES.setdefault(name, []).append(value)


def service_env(settings, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OFA_DATABASE_URL": settings.database_url,
           "OFA_BROKER_URL": settings.broker_url, "OFA_TASK_QUEUE": settings.task_queue,
           "OFA_WEIGHTS": json.dumps(settings.weights), "OFA_PREDICTORS": json.dumps(settings.predictors),
           "OFA_SUPERNETS": json.dumps(["ofa_mbv3_cifar10"]), "OFA_LOG_LEVEL": "WARNING",
           "OFA_PARETO_POINTS": "8", "OFA_PARETO_POPULATION": "16", "OFA_PARETO_GENERATIONS": "5",
           "OFA_PARETO_REFINE_BUDGETS": "2", "OFA_PARETO_REFINE_POPULATION": "16", "OFA_PARETO_REFINE_GENERATIONS": "3",
           "OFA_DEFAULT_POPULATION": "16", "OFA_DEFAULT_GENERATIONS": "5", "OFA_AUTO_PROFILE_HOST": "false",
           "OFA_JOB_LEASE_S": str(LEASE_S), "OFA_JOB_SWEEP_S": str(SWEEP_S), "OFA_JOB_HEARTBEAT_S": "0.5",
           "OFA_BROKER_PUBLISH_TIMEOUT_S": "1.0",
           # no BN recalibration / measurement after each search here (issue 10's tests cover it): fast jobs
           "OFA_CALIBRATION_DATA": json.dumps({"ofa_mbv3_cifar10": ""}),
           "OFA_EVALUATION_DATA": json.dumps({"ofa_mbv3_cifar10": ""})}
    env.update(extra)
    return env


def start_worker(settings, pool: str = "solo", **extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", settings.task_queue,
            "--pool", pool, "--concurrency", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING"]
    log = open(os.path.join(settings.var_dir, f"worker-{time.monotonic_ns()}.log"), "wb")
    p = subprocess.Popen(argv, cwd=ROOT, env=service_env(settings, **extra), stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    p.log_path = log.name
    return p


def log_tail(p, n: int = 4000) -> str:
    try:
        with open(p.log_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except (OSError, AttributeError):
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(settings, port: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "uvicorn", "--factory", "service.app:app_factory", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(argv, cwd=ROOT, env=service_env(settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop(p: subprocess.Popen | None, sig=signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process started here (its own session: the whole group, pool children included)."""
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
        p.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=5)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(fn, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]


class HungBroker:
    """A TCP server on loopback that accepts connections and never answers (a hung broker)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                continue

    def close(self):
        self._stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


class PrivateRedis:
    """A throw-away redis-server on a free loopback port, no persistence (a restart loses every message)."""

    def __init__(self):
        self.port = free_port()
        self.p: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        import redis
        self.p = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        wait_for(lambda: _ping(redis, self.url), 10, what="redis-server")
        return self

    def kill(self) -> None:
        stop(self.p, signal.SIGKILL)


def _ping(redis, url) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except Exception:
        return False


class UvicornThread:
    """The app served by uvicorn on a loopback port in a thread of this process (for concurrent HTTP)."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    log_level="warning", lifespan="on", limit_concurrency=1000))
        self.t = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.t.start()
        wait_for(lambda: self.server.started, 20, what="uvicorn")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.t.join(timeout=10)
