"""End to end with a REAL Celery worker process: POST /specialize -> the worker searches -> download the
checkpoint -> load it into the extracted architecture -> outputs equal the supernet's in that configuration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from ofa_service_testlib import ROOT


def _start_worker(settings) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OFA_DATABASE_URL": settings.database_url,
           "OFA_BROKER_URL": settings.broker_url, "OFA_TASK_QUEUE": settings.task_queue,
           "OFA_WEIGHTS": json.dumps(settings.weights), "OFA_PREDICTORS": json.dumps(settings.predictors),
           "OFA_SUPERNETS": json.dumps(["ofa_mbv3_cifar10"]), "OFA_LOG_LEVEL": "WARNING",
           "OFA_PARETO_POINTS": "8", "OFA_PARETO_POPULATION": "16", "OFA_PARETO_GENERATIONS": "5"}
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                             settings.task_queue, "--pool", "solo", "--concurrency", "1", "--without-gossip",
                             "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_end_to_end_real_worker(backend, request, settings_factory, shared_store):
    from ofa_service_testlib import _make_env
    from ofa_core.export import load_safetensors_checkpoint  # noqa: F401  (the published reader exists)
    from ofa_core.extract import StaticMobileNetV3
    from ofa_core.spec import SubnetConfig
    from safetensors.torch import load as st_load
    if backend == "postgres":
        s = settings_factory("postgres", request.getfixturevalue("migrated_pg"), request.getfixturevalue("redis_url"))
    else:
        s = settings_factory("sqlite")
    env = _make_env(s, shared_store)
    worker = _start_worker(s)
    try:
        env.add_device("e2e-dev")
        r = env.client.post("/specialize", json={"device": "e2e-dev", "constraints": {"latency_ms": 3.0},
                                                 "options": {"population": 16, "generations": 5, "seed": 7},
                                                 "use_pareto": False})
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        deadline = time.time() + 120
        while time.time() < deadline:
            job = env.client.get(f"/jobs/{jid}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        res = job["result"]
        # the worker also computed the device's Pareto front (queued after the table commit)
        r = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format=safetensors")
        assert r.status_code == 200
        sd = st_load(r.content)
        nc = env.client.get(f"/subnets/{res['subnet_id']}/net.config").json()
        net = StaticMobileNetV3.from_net_config(nc)
        net.load_state_dict(sd, strict=True)
        net.eval()
        eng = env.store.get("ofa_mbv3_cifar10")
        cfg = SubnetConfig.from_dict(eng.spec, res["config"])
        eng.supernet.set_active(cfg)
        x = torch.randn(4, 3, cfg.r, cfg.r, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = eng.supernet.eval()(x)
            got = net(x)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
        # the front arrives through the worker as well
        deadline = time.time() + 60
        while time.time() < deadline and not env.client.get("/devices/e2e-dev").json()["pareto_front"]:
            time.sleep(0.3)
        assert env.client.get("/devices/e2e-dev").json()["pareto_front"]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        env.client.__exit__(None, None, None)
        if backend == "postgres":
            from sqlalchemy import text
            with env.db.engine.begin() as c:
                c.execute(text("TRUNCATE jobs, subnets, pareto_fronts, latency_entries, latency_tables, devices, "
                               "api_keys RESTART IDENTITY CASCADE"))
        env.db.dispose()
