"""End to end with a REAL Celery worker process: POST /specialize -> the worker searches and recalibrates ->
download the checkpoint in every format -> score it on the evaluation images with plain torch and onnxruntime ->
exactly the job's measured_accuracy; a Pareto answer's measurement is filled in by the worker afterwards."""
from __future__ import annotations

import io
import json
import time

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from ofa_service_testlib import start_worker, stop_worker, wait_for_job


def _eval_inputs(path: str, pre: dict, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images as the model card states the protocol: pixels / 255, normalised, bilinear resize
    (antialiased when shrinking). Decoded with PIL from the file's JPEG bytes."""
    from PIL import Image
    with np.load(path, allow_pickle=False) as z:
        blob, off, labels = z["jpeg"], z["offsets"], z["labels"]
        imgs = np.stack([np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB"))
                         for a, b in zip(off[:-1], off[1:])])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    if x.shape[-1] != r:
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < x.shape[-1])
    return x, torch.from_numpy(labels)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_end_to_end_real_worker(backend, request, settings_factory, shared_store):
    from ofa_service_testlib import _make_env
    from ofa_core.export import load_safetensors_checkpoint  # noqa: F401  (the published reader exists)
    from ofa_core.extract import StaticMobileNetV3, extract_state_dict
    from ofa_core.spec import SubnetConfig
    from safetensors.torch import load as st_load
    if backend == "postgres":
        s = settings_factory("postgres", request.getfixturevalue("migrated_pg"), request.getfixturevalue("redis_url"))
    else:
        s = settings_factory("sqlite")
    env = _make_env(s, shared_store)
    worker = start_worker(s)
    try:
        env.add_device("e2e-dev")
        r = env.client.post("/specialize", json={"device": "e2e-dev", "constraints": {"latency_ms": 3.0},
                                                 "options": {"population": 16, "generations": 5, "seed": 7},
                                                 "use_pareto": False})
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        job = wait_for_job(env, jid, worker)
        assert job["status"] == "succeeded", job
        res = job["result"]
        assert res["bn_calibrated"] is True and res["pending"] == [] and res["measured_images"] == 200
        downloads = {}
        for fmt in ("safetensors", "pt", "torchscript", "onnx"):
            r = env.client.get(f"/subnets/{res['subnet_id']}/checkpoint?format={fmt}")
            assert r.status_code == 200 and r.headers["x-bn-calibrated"] == "true", (fmt, r.status_code)
            downloads[fmt] = r.content
        sd = st_load(downloads["safetensors"])
        meta = load_safetensors_checkpoint(downloads["safetensors"])[1]
        nc = env.client.get(f"/subnets/{res['subnet_id']}/net.config").json()
        net = StaticMobileNetV3.from_net_config(nc)
        net.load_state_dict(sd, strict=True)
        net.eval()
        pt = torch.load(io.BytesIO(downloads["pt"]), weights_only=True)
        net_pt = StaticMobileNetV3.from_net_config(pt["net_config"])
        net_pt.load_state_dict(pt["state_dict"], strict=True)
        net_pt.eval()
        ts = torch.jit.load(io.BytesIO(downloads["torchscript"]))
        sess = ort.InferenceSession(downloads["onnx"], providers=["CPUExecutionProvider"])
        # the packaged evaluation images (the first 200 in this test's settings), preprocessed with plain torch
        cfg = SubnetConfig.from_dict(env.store.get("ofa_mbv3_cifar10").spec, res["config"])
        x, y = _eval_inputs(s.evaluation_data["ofa_mbv3_cifar10"], json.loads(meta["preprocess"]), cfg.r)
        with torch.no_grad():
            preds = {"safetensors": net(x).argmax(1), "pt": net_pt(x).argmax(1), "torchscript": ts(x).argmax(1),
                     "onnx": torch.from_numpy(sess.run(["logits"], {"input": x.numpy()})[0]).argmax(1)}
        assert len(set(preds["onnx"].tolist())) > 1           # the predictions are not degenerate
        for fmt, p in preds.items():
            assert (p == y).sum().item() / len(y) == res["measured_accuracy"], fmt
        # the served statistics are the recalibrated ones, not the supernet's
        eng = env.store.get("ofa_mbv3_cifar10")
        sliced = extract_state_dict(eng.supernet, cfg)
        assert any(not torch.allclose(sd[k], sliced[k]) for k in sd if k.endswith("running_var"))
        # the front arrives through the worker as well
        deadline = time.time() + 60
        while time.time() < deadline and not env.client.get("/devices/e2e-dev").json()["pareto_front"]:
            time.sleep(0.3)
        front = env.client.get("/devices/e2e-dev").json()["pareto_front"]
        assert front
        # a Pareto answer comes at once with its measurement pending; the worker's ofa.calibrate_subnet fills it in
        r = env.client.post("/specialize", json={"device": "e2e-dev", "constraints": {"latency_ms": front[0]["latency_ms"]}})
        assert r.status_code == 200 and r.json()["source"] == "pareto", r.text
        pjob = r.json()
        if pjob["result"]["pending"]:
            deadline = time.time() + 60
            while time.time() < deadline and env.client.get(f"/jobs/{pjob['id']}").json()["result"]["pending"]:
                assert worker.poll() is None, worker.stderr.read().decode()[-3000:]
                time.sleep(0.2)
        pres = env.client.get(f"/jobs/{pjob['id']}").json()["result"]
        assert pres["pending"] == [] and pres["bn_calibrated"] and pres["measured_images"] == 200
        d = env.client.get(f"/subnets/{pres['subnet_id']}/checkpoint?format=torchscript")
        assert d.status_code == 200 and d.headers["x-bn-calibrated"] == "true"
        with torch.no_grad():
            acc = (torch.jit.load(io.BytesIO(d.content))(x if pres["config"]["r"] == cfg.r else _eval_inputs(
                s.evaluation_data["ofa_mbv3_cifar10"], json.loads(meta["preprocess"]), pres["config"]["r"])[0])
                   .argmax(1) == y).sum().item() / len(y)
        assert acc == pres["measured_accuracy"]
    finally:
        stop_worker(worker)
        env.client.__exit__(None, None, None)
        if backend == "postgres":
            from sqlalchemy import text
            with env.db.engine.begin() as c:
                c.execute(text("TRUNCATE jobs, subnets, pareto_fronts, latency_entries, latency_tables, devices, "
                               "api_keys RESTART IDENTITY CASCADE"))
        env.db.dispose()
