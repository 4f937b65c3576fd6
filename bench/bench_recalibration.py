"""BN recalibration of served sub-networks: cost per sub-network, and downloads to score independently.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_recalibration.py --n 10 --out runs/recal
    .venv/bin/python bench/eval_downloads.py runs/recal --data ../shared/data/cifar10/cifar10-jpeg.tar.gz

Runs the service in-process on a temporary SQLite database with the committed default supernet and its packaged
calibration / evaluation images: `--n` searches spread over the MACs range (a synthetic device table; MACs
budgets, so the answers span the space), each recalibrated and measured by the worker code. Prints per
sub-network: MACs, recalibration seconds (2,000 images), evaluation seconds, measured accuracy (2,000 held-out
training images) and, with `--data`, ofa_core's own recalibrated top-1 on the 10,000 test images. Writes every
download format twice to `--out` (calibrated, and uncalibrated from a second API whose calibration data is
switched off) with a manifest.json for `bench/eval_downloads.py`, which uses no project code.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "service"))

FORMATS = {"safetensors": "safetensors", "pt": "pt", "torchscript": "torchscript.pt", "onnx": "onnx"}
SPEC = "ofa_mbv3_cifar10"


def _env(var_dir: str, **kw):
    from ofa_service_testlib import _make_env
    from service.settings import Settings
    from service.supernets.store import SupernetStore
    s = Settings(var_dir=var_dir, database_url=f"sqlite:///{var_dir}/ofa.sqlite",
                 broker_url=f"sqla+sqlite:///{var_dir}/broker.sqlite", supernets=[SPEC], log_level="WARNING",
                 auto_profile_host=False, **kw)
    return _make_env(s, SupernetStore(s).load())


def _budgets(env, n: int) -> list[int]:
    import numpy as np
    from ofa_core.costs import CostModel
    spec = env.store.get(SPEC).spec
    cm = CostModel(spec)
    lo = min(cm.macs(spec.min_config(r)) for r in spec.resolutions)
    hi = max(cm.macs(spec.max_config(r)) for r in spec.resolutions)
    return [int(b) for b in np.geomspace(lo * 1.05, hi, n)]


def _test_accuracy(env, config, test) -> float:
    from ofa_core.imagepack import load_image_set
    from ofa_core.measure import measure_subnet
    from ofa_core.spec import SubnetConfig
    eng = env.store.get(SPEC)
    sets = eng.image_sets
    cfg = SubnetConfig.from_dict(eng.spec, config)
    return measure_subnet(eng.supernet, cfg, load_image_set(sets.calib_path), test, sets.recipe).accuracy


def _pareto_p50(env, plain) -> tuple[float, float]:
    """p50 of Pareto-front answers with and without calibration configured, interleaved in one run (the
    configured one looks its statistics up and, for a sub-network not calibrated yet, asks a worker for them)."""
    from service.devices import repository as repo
    from workers import runner
    with env.db.session() as s:
        dev = repo.get_by_name(s, "bench")
        ids = (dev.id, repo.current_table(s, dev).id)
    runner.compute_front(env.db, env.store, env.settings, ids[0], ids[1], SPEC)
    front = env.client.get("/devices/bench").json()["pareto_front"]
    times: tuple[list, list] = ([], [])
    for i in range(50):
        for k, e in enumerate((env, plain)):   # distinct budgets: a repeated request would be a cache answer
            budget = front[i % len(front)]["latency_ms"] * (1 + 1e-6 * i + 1e-7 * k)
            body = {"device": "bench", "constraints": {"latency_ms": budget}}
            t = time.perf_counter()
            r = e.client.post("/specialize", json=body)
            times[k].append(time.perf_counter() - t)
            assert r.status_code == 200 and r.json()["source"] == "pareto", r.text
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10, help="sub-networks (searches over the MACs range)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "recal"))
    ap.add_argument("--data", default=None, help="CIFAR-10 archive: also ofa_core's own top-1 on its test split")
    ap.add_argument("--population", type=int, default=32)
    ap.add_argument("--generations", type=int, default=20)
    a = ap.parse_args()
    import torch
    from ofa_service_assets import synthetic_table
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.makedirs(a.out, exist_ok=True)
    test = None
    if a.data:
        from ofa_core.data import load_dataset
        test = load_dataset(a.data, progress=False)["test"]
    with tempfile.TemporaryDirectory() as d:
        env = _env(d)
        plain = _env(d, calibration_data={SPEC: ""}, evaluation_data={SPEC: ""})   # same database, no calibration
        env.add_device("bench", synthetic_table())
        rows, manifest = [], []
        for i, budget in enumerate(_budgets(env, a.n)):
            r = env.client.post("/specialize", json={"device": "bench", "constraints": {"macs": budget},
                                                     "options": {"population": a.population, "seed": i,
                                                                 "generations": a.generations}, "use_pareto": False})
            assert r.status_code == 202, r.text
            t0 = time.perf_counter()
            assert env.run_job(r.json()["id"]) == "succeeded"
            job_s = time.perf_counter() - t0
            res = env.client.get(f"/jobs/{r.json()['id']}").json()["result"]
            sid = res["subnet_id"]
            cal = env.client.get(f"/subnets/{sid}").json()["bn_calibration"]
            files = {}
            for kind, e in (("calibrated", env), ("uncalibrated", plain)):
                for fmt, ext in FORMATS.items():
                    resp = e.client.get(f"/subnets/{sid}/checkpoint?format={fmt}")
                    assert resp.status_code == 200 and resp.headers["x-bn-calibrated"] == str(kind == "calibrated").lower()
                    name = f"{sid}.{kind}.{ext}"
                    with open(os.path.join(a.out, name), "wb") as f:
                        f.write(resp.content)
                    files.setdefault(kind, {})[fmt] = name
            test_acc = _test_accuracy(env, res["config"], test) if test is not None else None
            with env.db.session() as s:
                from service.calibration import repository as crepo
                eng = env.store.get(SPEC)
                row = crepo.get(s, sid, eng.version, eng.image_sets.calib_key)
                eval_s = row.eval_seconds
            rows.append((sid, res["macs"], res["config"]["r"], cal["seconds"], eval_s, job_s, res["predicted_accuracy"],
                         res["measured_accuracy"], test_acc))
            manifest.append({"subnet_id": sid, "config": res["config"], "image_size": res["config"]["r"],
                             "macs": res["macs"], "predicted_accuracy": res["predicted_accuracy"],
                             "measured_accuracy": res["measured_accuracy"], "measured_images": res["measured_images"],
                             "ofa_core_test_accuracy": test_acc, "recalibration_s": cal["seconds"], "files": files})
        pareto = _pareto_p50(env, plain)
        plain.client.__exit__(None, None, None)
        env.client.__exit__(None, None, None)
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump({"supernet": SPEC, "subnets": manifest}, f, indent=1)
    print(f"threads {torch.get_num_threads()}; calibration: 2,000 images in batches of 200; evaluation: 2,000 images")
    print(f"{'subnet':26s} {'MACs':>10s} {'r':>3s} {'recal s':>8s} {'eval s':>7s} {'job s':>6s} "
          f"{'pred':>6s} {'meas':>6s} {'test':>6s}")
    for sid, macs, r_, cs, es, js, p, m, t in rows:
        print(f"{sid:26s} {macs:10d} {r_:3d} {cs:8.3f} {es:7.3f} {js:6.2f} {p:6.3f} {m:6.3f} "
              f"{'' if t is None else f'{t:6.3f}'}")
    print("POST /specialize answered from the Pareto front (in-process, SQLite), p50 over 50, interleaved: "
          f"calibration configured {pareto[0] * 1000:.2f} ms, not configured {pareto[1] * 1000:.2f} ms "
          f"(ratio {pareto[0] / pareto[1]:.2f})")
    secs = [x[3] for x in rows]
    print(f"recalibration per sub-network: median {statistics.median(secs):.3f} s, min {min(secs):.3f}, "
          f"max {max(secs):.3f} (n={len(secs)}); downloads and manifest in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
