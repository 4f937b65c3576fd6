"""A live service for the client, README and browser tests: `ofa serve` (the embedded default: SQLite, the
serverless broker, a real worker process, uvicorn) on a free port, with its own data directory, the committed
default supernet, an API key made with the CLI and a device `host-cpu` with a deterministic latency table (the
measured one takes minutes; the tests upload a synthetic one under the same name)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from ofa_service_assets import synthetic_table
from ofa_service_testlib import ROOT


class Live:
    def __init__(self, url: str, key: str, env: dict, var_dir: str, log_path: str):
        self.url, self.key, self.env, self.var_dir, self.log_path = url, key, env, var_dir, log_path

    def log_tail(self, n: int = 4000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_env(var_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFA_")}
    env.update(OFA_VAR_DIR=var_dir, OFA_LOG_LEVEL="WARNING", OFA_AUTO_PROFILE_HOST="false", OMP_NUM_THREADS="1",
               OFA_CALIBRATION_IMAGES="200", OFA_EVALUATION_MAX_IMAGES="200", OFA_PARETO_POINTS="16",
               OFA_PARETO_POPULATION="32", OFA_PARETO_GENERATIONS="10",
               OFA_PARETO_REFINE_BUDGETS="2", OFA_PARETO_REFINE_POPULATION="16", OFA_PARETO_REFINE_GENERATIONS="3",
               OFA_SSE_POLL_S="0.05")
    return env


def start_live(var_dir: str, timeout: float = 180.0) -> tuple[Live, subprocess.Popen]:
    os.makedirs(var_dir, exist_ok=True)
    port, env = _free_port(), live_env(var_dir)
    log_path = os.path.join(var_dir, "serve.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-profile", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("ofa serve exited:\n" + open(log_path, errors="replace").read()[-4000:])
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_live(proc)
            raise RuntimeError("ofa serve not ready in time:\n" + open(log_path, errors="replace").read()[-4000:])
        time.sleep(0.3)
    key = subprocess.run([sys.executable, "-m", "service.cli", "create-api-key", "--name", "live"], cwd="/", env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    return Live(url, key, env, var_dir, log_path), proc


def stop_live(proc: subprocess.Popen) -> None:
    """SIGTERM to the serve process group (serve and its worker), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def add_host_device(live: Live, name: str = "host-cpu") -> None:
    from service.client import Client
    path = os.path.join(live.var_dir, f"{name}-table.json")
    with open(path, "w") as f:
        json.dump(synthetic_table(), f)
    with Client(live.url, api_key=live.key) as c:
        c.upload_table(name, [path], description="synthetic table for the live tests")
        deadline = time.monotonic() + 120
        while not c.device(name)["pareto_front"]:       # the worker computes the front after the upload
            assert time.monotonic() < deadline, live.log_tail()
            time.sleep(0.3)


@pytest.fixture(scope="session")
def live_service(tmp_path_factory):
    live, proc = start_live(str(tmp_path_factory.mktemp("live")))
    try:
        add_host_device(live)
        yield live
    finally:
        stop_live(proc)
