"""`POST /supernets/{name}/predictor` end to end on both backends: pairs -> stored training -> the worker's
task trains, saves and registers the predictor -> `GET` shows status and held-out metrics."""
from __future__ import annotations

import os

import numpy as np

SPEC = "ofa_mbv3_cifar10"


def _rows(n=240, seed=0):
    from ofa_core.spec import SubnetConfig, get_spec
    spec = get_spec(SPEC)
    rng = np.random.default_rng(seed)
    enc = spec.sample_encoded(n, rng)
    acc = 60 + 0.03 * enc[:, :40].sum(1) + 0.5 * (enc[:, -1] - 24) + rng.normal(0, 0.2, n)
    rows = []
    for e, a in zip(enc, acc):
        c = SubnetConfig.from_encoded(spec, e).to_dict()
        rows.append({"wid": None, "ks": c["ks"], "e": c["e"], "d": c["d"], "r": [c["r"]], "acc": float(a)})
    return spec, enc, rows


def test_train_predictor_endpoint_end_to_end(env):
    from ofa_core.predictor import AccuracyPredictor
    from service.predictors.service import train_by_id
    spec, enc, rows = _rows()
    body = {"data": rows, "scale": "percent", "epochs": 40, "seed": 1, "ensemble": 2, "val_fraction": 0.25}
    r = env.client.post(f"/supernets/{SPEC}/predictor", json=body, headers=env.h)
    assert r.status_code == 202, r.text
    t = r.json()
    assert t["status"] == "queued" and t["n_rows"] == 240 and t["params"]["ensemble"] == 2
    assert any("ignored keys: wid" in n for n in t["notes"])
    assert env.client.get(t["url"]).json()["status"] == "queued"
    assert train_by_id(env.db, env.settings, t["id"]) == "succeeded"          # the task's body, as a worker runs it
    assert train_by_id(env.db, env.settings, t["id"]) == "skipped"            # delivered again: left alone
    g = env.client.get(t["url"])
    assert g.status_code == 200, g.text
    res = g.json()
    assert res["status"] == "succeeded" and res["finished_at"] and res["error"] is None
    m = res["result"]
    assert m["n_val"] == 60 and m["n_train"] == 180 and m["ensemble"] == 2 and len(m["member_val_rmse_pp"]) == 2
    assert 0 < m["val_rmse_pp"] < 3.0 and m["val_kendall_tau"] > 0.4 and m["registered"]
    reg = os.path.join(env.settings.var_dir, "predictors", f"{SPEC}.safetensors")
    assert m["registered_as"] == reg and os.path.exists(m["predictor"])
    p = AccuracyPredictor.load(reg, spec)
    assert p.hidden == 800 and p.metrics["ensemble"] == 2
    np.testing.assert_allclose(p.predict(enc), AccuracyPredictor.load(m["predictor"]).predict(enc))
    assert env.client.get(f"/supernets/{SPEC}/predictor/trainings/nope").status_code == 404
    assert env.client.get(f"/supernets/ofa_mbv3_d234_e346_k357_w1.2/predictor/trainings/{t['id']}").status_code == 404


def test_train_predictor_endpoint_auth_and_validation(env):
    _, _, rows = _rows(40)
    url = f"/supernets/{SPEC}/predictor"
    ok = {"data": rows, "scale": "percent", "epochs": 5}
    assert env.client.post(url, json=ok).status_code == 401
    assert env.client.post(url, json=ok, headers={"X-API-Key": "wrong"}).status_code == 401

    def field(body):
        r = env.client.post(url, json=body, headers=env.h)
        assert r.status_code == 422, r.text
        return r.json()["error"]["field"], r.json()["error"]["message"]

    assert field({"data": rows, "epochs": 5})[0] == "scale"
    assert field({**ok, "scale": "auto"})[0] == "scale"
    assert field({**ok, "epochs": 100000})[0] == "epochs"
    assert field({**ok, "ensemble": 9})[0] == "ensemble"
    assert field({**ok, "val_fraction": 1.5})[0] == "val_fraction"
    assert field({**ok, "bogus": 1})[0] == "bogus"
    f, msg = field({**ok, "scale": "fraction"})
    assert f == "data" and "use scale 'percent'" in msg
    bad = [dict(r) for r in rows]
    bad[3]["ks"] = [4] * 20
    f, msg = field({**ok, "data": bad})
    assert f == "data" and "row 3" in msg and "ks" in msg
    f, msg = field({**ok, "data": rows[:4]})
    assert f == "data" and "at least" in msg
    f, msg = field({**ok, "data": rows[:1] * 20001})
    assert f == "data" and "at most 20000" in msg
    assert env.client.post("/supernets/nope/predictor", json=ok, headers=env.h).status_code == 404


def _worker_env(settings) -> dict:
    import json
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFA_")}
    env.update(OFA_VAR_DIR=settings.var_dir, OFA_DATABASE_URL=settings.database_url,
               OFA_BROKER_URL=settings.broker_url, OFA_TASK_QUEUE=settings.task_queue, OFA_LOG_LEVEL="WARNING",
               OFA_WEIGHTS=json.dumps(settings.weights), OFA_PREDICTORS=json.dumps(settings.predictors),
               OFA_AUTO_PROFILE_HOST="false", OMP_NUM_THREADS="1")
    return env


def test_train_predictor_with_a_real_worker(env, tmp_path):
    """The task published by the endpoint, consumed by a real Celery worker process (`ofa worker`)."""
    import subprocess
    import sys
    import time
    from ofa_service_testlib import ROOT, stop_worker
    from ofa_core.predictor import AccuracyPredictor
    spec, enc, rows = _rows(200, seed=3)
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--concurrency", "1", "--pool", "solo"],
                            cwd=ROOT, env=_worker_env(env.settings), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        r = env.client.post(f"/supernets/{SPEC}/predictor", headers=env.h,
                            json={"data": rows, "scale": "percent", "epochs": 120, "register": False})
        assert r.status_code == 202, r.text
        url, deadline = r.json()["url"], time.monotonic() + 240
        while (t := env.client.get(url).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        stop_worker(proc, timeout=30)
    assert t["status"] == "succeeded", t
    m = t["result"]
    assert m["n_val"] == 40 and 0 < m["val_rmse_pp"] < 3.0 and m["val_kendall_tau"] > 0.3
    assert not m["registered"] and "registered_as" not in m
    assert not os.path.exists(os.path.join(env.settings.var_dir, "predictors", f"{SPEC}.safetensors"))
    assert AccuracyPredictor.load(m["predictor"], spec).predict(enc[:4]).shape == (4,)


def test_a_registered_predictor_is_served_over_the_default(settings_factory, tmp_path):
    """Registration (the endpoint's, `ofa register-predictor`'s) wins over the supernet's committed default,
    and OFA_PREDICTORS over both."""
    from ofa_core.predictor import train_predictor
    from service.supernets.store import SupernetStore, register_predictor_file
    spec, enc, rows = _rows(60)
    pred, _ = train_predictor(enc, np.linspace(0.6, 0.9, 60), spec, epochs=2, hidden=32)
    pred.save(tmp_path / "mine.safetensors")
    s = settings_factory("sqlite", supernets=[SPEC], predictors={})
    assert SupernetStore(s).load().get(SPEC).predictor_path == spec.predictor_path
    dest = register_predictor_file(s.var_dir, SPEC, str(tmp_path / "mine.safetensors"))
    assert SupernetStore(s).load().get(SPEC).predictor_path == dest
    pinned = settings_factory("sqlite", supernets=[SPEC], predictors={SPEC: spec.predictor_path}, var_dir=s.var_dir)
    assert SupernetStore(pinned).load().get(SPEC).predictor_path == spec.predictor_path


def _age_training(env, tid, seconds, **values):
    """Set a training's heartbeat_at `seconds` in the past (a worker that died, a publish that was lost)."""
    import datetime as dt
    from sqlalchemy import text
    sets = ", ".join(["heartbeat_at = :t"] + [f"{k} = :{k}" for k in values])
    with env.db.engine.begin() as c:
        c.execute(text(f"UPDATE predictor_trainings SET {sets} WHERE id = :i"),
                  {"t": dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds), "i": tid, **values})


def test_sweeper_recovers_lost_and_stuck_trainings_with_bounded_attempts(env):
    """A training whose worker died (running past its deadline) is queued and published again, or failed once it
    used job_max_attempts claims; one whose publish was lost is published again (not again within a lease); a
    duplicate delivery of one running under a live worker is skipped, not trained twice at once."""
    from service.predictors import repository as repo
    from service.predictors.service import train_by_id
    from workers.sweeper import sweep_trainings
    _, _, rows = _rows(60)
    s = env.settings
    lease = s.job_lease_s
    post = lambda seed: env.client.post(f"/supernets/{SPEC}/predictor", headers=env.h,  # noqa: E731
                                        json={"data": rows, "scale": "percent", "epochs": 5, "seed": seed,
                                              "register": False}).json()
    a, b, c, d = (post(i) for i in range(4))
    _age_training(env, a["id"], lease + 5, status="running", attempts=1)          # its worker died
    _age_training(env, b["id"], lease + 5, status="running", attempts=s.job_max_attempts)
    _age_training(env, c["id"], lease + 5)                                        # its publish was lost
    with env.db.session() as sess:                                                # a live worker holds d
        assert repo.claim(sess, d["id"], 600.0, lease) is not None
    assert sweep_trainings(env.db, env.app.state.celery, s) == {"requeued": 1, "republished": 1, "failed": 1,
                                                                 "publish_errors": 0}
    status = lambda t: env.client.get(t["url"]).json()  # noqa: E731
    assert status(a)["status"] == "queued" and status(c)["status"] == "queued"
    assert status(b)["status"] == "failed" and "worker lost" in status(b)["error"]
    assert status(d)["status"] == "running"
    assert sweep_trainings(env.db, env.app.state.celery, s)["republished"] == 0   # not again within a lease
    assert train_by_id(env.db, s, d["id"]) == "skipped"                          # duplicate delivery: not twice
    assert train_by_id(env.db, s, a["id"]) == "succeeded" and status(a)["result"]["n_train"] > 0
    assert status(a)["status"] == "succeeded"
    _age_training(env, d["id"], lease + 5)                                        # d's worker died after all
    assert train_by_id(env.db, s, d["id"]) == "succeeded"                        # a redelivery takes it over


def test_a_training_that_breaks_is_failed_with_the_reason_not_left_running(env):
    """Whatever stops the training itself (here: the folder it saves into cannot be made) fails the row with
    the reason; it never stays running."""
    from service.predictors.service import train_by_id
    _, _, rows = _rows(60)
    t = env.client.post(f"/supernets/{SPEC}/predictor", headers=env.h,
                        json={"data": rows, "scale": "percent", "epochs": 5, "register": False}).json()
    with open(os.path.join(env.settings.var_dir, "trained_predictors"), "w") as fh:   # a file where the folder goes
        fh.write("not a folder")
    assert train_by_id(env.db, env.settings, t["id"]) == "failed"
    g = env.client.get(t["url"]).json()
    assert g["status"] == "failed" and "FileExistsError" in g["error"] and g["finished_at"]
