"""The Python client and `ofa specialize` against a live `ofa serve` (real worker, real HTTP)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import httpx
import pytest

from ofa_service_testlib import ROOT


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_client_specialize_wait_download(live_service, tmp_path, capsys):
    from service.client import Client
    with Client(live_service.url) as c:
        names = [d["name"] for d in c.devices()]
        assert "host-cpu" in names
        dev = c.device("host-cpu")
        assert dev["supernet"] == "ofa_mbv3_cifar10" and dev["pareto_front"]
        job = c.specialize("host-cpu", latency_ms={"times_min": 1.3}, use_pareto=False)
        assert job.status in ("queued", "running", "succeeded")
        job.wait(progress=True, timeout=300)
        assert job.status == "succeeded" and job.result["predicted_latency_ms"] <= job.data["request"]["constraints"]["latency_ms"]
        assert "gen" in capsys.readouterr().err              # the tqdm bar was drawn
        path = job.download(tmp_path, format="safetensors")
        head = httpx.head(f"{live_service.url}/subnets/{job.subnet_id}/checkpoint?format=safetensors")
        assert path.parent == tmp_path and _sha(path) == head.headers["x-content-sha256"]
        assert job.net_config()["classifier"]["out_features"] == 10


def test_download_resumes_and_checks_sha256(live_service, tmp_path):
    from service.client import ChecksumMismatch, Client
    with Client(live_service.url) as c:
        job = c.specialize("host-cpu", latency_ms={"fraction_of_range": 0.5}).wait(timeout=300)
        full = job.download(tmp_path / "whole.pt", format="pt")
        data = full.read_bytes()
        target = tmp_path / "resumed.pt"
        (tmp_path / "resumed.pt.part").write_bytes(data[: len(data) // 3])     # an interrupted download
        assert c.download(job.subnet_id, target, format="pt").read_bytes() == data
        assert not (tmp_path / "resumed.pt.part").exists()
        bad = tmp_path / "bad.pt"
        (tmp_path / "bad.pt.part").write_bytes(b"\0" * (len(data) // 2))       # a corrupt partial file
        with pytest.raises(ChecksumMismatch):
            c.download(job.subnet_id, bad, format="pt")
        assert not bad.exists() and not (tmp_path / "bad.pt.part").exists()


def test_client_errors_carry_the_service_body(live_service, tmp_path):
    from service.client import BadRequest, Client, ConnectionFailed, NotFound, Unauthorized
    with Client(live_service.url) as c:
        with pytest.raises(NotFound) as e:
            c.device("ghost")
        assert e.value.code == "device_not_found" and e.value.details["device"] == "ghost"
        assert e.value.body["error"]["message"] == "unknown device 'ghost'"
        with pytest.raises(BadRequest) as e:
            c.specialize("host-cpu", latency_ms=0.0001)
        assert e.value.code == "infeasible_constraints" and "latency_ms" in e.value.details["minima"]
        t = tmp_path / "t.json"
        t.write_text("{}")
        with pytest.raises(Unauthorized):
            c.upload_table("anon", [t])
    with pytest.raises(ConnectionFailed):
        Client("http://127.0.0.1:9").devices()


def test_client_upload_and_timings(live_service, tmp_path):
    from ofa_core.spec import SubnetConfig, get_spec
    from ofa_service_assets import synthetic_table
    from service.client import Client
    import numpy as np
    t = tmp_path / "table.json"
    t.write_text(json.dumps(synthetic_table(scale=2.0)))
    with Client(live_service.url, api_key=live_service.key) as c:
        d = c.upload_table("client-dev", [t], description="uploaded by the client")
        assert d["name"] == "client-dev" and d["current_version"] == 1
        d = c.upload_table("client-dev", [t], new_version=True)
        assert d["current_version"] == 2
        spec = get_spec("ofa_mbv3_cifar10")
        enc = spec.sample_encoded(12, np.random.default_rng(0))
        timings = [{"config": SubnetConfig.from_encoded(spec, e).to_dict(), "latency_ms": 1.0 + 0.05 * i}
                   for i, e in enumerate(enc)]
        d = c.post_timings("client-dev", timings, description="measured on the bench")
        assert d["current_version"] == 3 and d["versions"][-1]["source"] == "calibrated"


def test_ofa_specialize_cli(live_service, tmp_path):
    env = {**live_service.env, "OFA_URL": live_service.url}
    run = lambda *a: subprocess.run([sys.executable, "-m", "service.cli", "specialize", *a], cwd=str(tmp_path),  # noqa: E731
                                    env=env, capture_output=True, text=True, timeout=300)
    r = run("host-cpu", "--latency-ms", "1.4x", "--json", "--download", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "succeeded" and out["request"]["relative_constraints"] == {"latency_ms": {"times_min": 1.4}}
    assert _sha(out["download"]) == httpx.head(f"{live_service.url}/subnets/{out['result']['subnet_id']}/checkpoint"
                                               ).headers["x-content-sha256"]
    r = run("host-cpu", "--latency-ms", "30%")
    assert r.returncode == 0, r.stderr
    assert "predicted accuracy" in r.stdout and "budget" in r.stdout and "Traceback" not in r.stderr
    # --verify: the worker measures the best 2 candidates; the answer shows what was measured (this live
    # service's host-cpu has an uploaded table, not a profile of this host: its latency stays predicted)
    r = run("host-cpu", "--macs", "50%", "--verify", "--verify-top-k", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["request"]["verify"] is True and out["request"]["options"]["verify_top_k"] == 2
    res = out["result"]
    assert len(res["verification"]["candidates"]) == 2 and res["measured_latency_ms"] is None, res
    assert 0 < res["measured_accuracy"] <= 1 and res["macs"] <= out["request"]["constraints"]["macs"]
    r = run("host-cpu", "--macs", "50%", "--verify", "--verify-top-k", "2")
    assert r.returncode == 0 and "measured accuracy" in r.stdout and "measured latency" not in r.stdout, r.stdout
    r = run("ghost", "--latency-ms", "2")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown device 'ghost'" in r.stderr
    assert ROOT
