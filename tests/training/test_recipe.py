"""The whole default-supernet recipe on tiny data: training, predictor data set, predictor, artifacts, card."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from ofa_core import recipe
from ofa_core.checkpoint import load_supernet_weights
from ofa_core.mbv3 import build_supernet
from ofa_core.predictor import AccuracyPredictor
from ofa_core.spec import register

from test_training import TINY, make_images

TINY_R = register(dataclasses.replace(TINY, name="tiny_recipe_test"))


def test_recipe_end_to_end_on_tiny_data(tmp_path):
    torch.set_num_threads(1)
    root = make_images(str(tmp_path / "ds"), n_per_class=14)
    assets = tmp_path / "assets"
    rep = recipe.main(["--data", root, "--supernet", TINY_R.name, "--run", str(tmp_path / "run"),
                       "--assets", str(assets), "--scale", "0.02", "--batch-size", "6", "--holdout", "6", "--threads", "1",
                       "--predictor-subnets", "12", "--bn-images", "12", "--no-progress",
                       "--cache-dir", str(tmp_path / "cache")])
    w = assets / f"{TINY_R.name}.safetensors"
    p = assets / f"{TINY_R.name}_predictor.safetensors"
    card = (assets / "MODEL_CARD.md").read_text()
    assert w.exists() and p.exists()
    assert rep["files"][w.name]["sha256"] in card and rep["files"][p.name]["sha256"] in card
    assert rep["predictor_subnets"] == 12
    assert len([l for l in open(tmp_path / "run" / "predictor_data.jsonl")]) == 12
    shipped = assets / f"{TINY_R.name}_predictor_data.jsonl"           # the data set ships beside the predictor
    assert shipped.read_text() == (tmp_path / "run" / "predictor_data.jsonl").read_text()
    assert rep["files"][shipped.name]["sha256"] in card and shipped.name in card
    assert set(rep["probe_test_acc"]) == {f"d{d}-e{e}-k{k}" for d in (2, 4) for e in (3, 6) for k in (3, 7)}
    assert 0 <= rep["test_acc"]["largest"] <= 1 and "Kendall tau" in card
    # the committed weights load strictly into a fresh supernet and reproduce the trained network
    net = build_supernet(TINY_R, seed=123)
    load_supernet_weights(net, str(w))
    pred = AccuracyPredictor.load(str(p), spec=TINY_R)
    enc = TINY_R.sample_encoded(5, np.random.default_rng(0))
    assert pred.predict(enc).shape == (5,)
    # a second call resumes everything: no new training steps, no re-measured sub-networks
    rep2 = recipe.main(["--data", root, "--supernet", TINY_R.name, "--run", str(tmp_path / "run"),
                        "--assets", str(assets), "--scale", "0.02", "--batch-size", "6", "--holdout", "6", "--threads", "1",
                        "--predictor-subnets", "12", "--bn-images", "12", "--no-progress",
                       "--cache-dir", str(tmp_path / "cache")])
    assert rep2["timings"]["training_s"] == rep["timings"]["training_s"]
    assert len([l for l in open(tmp_path / "run" / "predictor_data.jsonl")]) == 12
    # --recard: new notes in the card, the measured figures and files as they were; refused once a file changed
    notes = tmp_path / "notes.md"
    notes.write_text("## New notes\n\nWritten after the run.\n")
    before = json.loads((assets / f"{TINY_R.name}.report.json").read_text())
    rep3 = recipe.main(["--supernet", TINY_R.name, "--assets", str(assets), "--recard", "--card-notes", str(notes)])
    card3 = (assets / "MODEL_CARD.md").read_text()
    assert "Written after the run." in card3 and rep3["notes"] == notes.read_text()
    assert {k: v for k, v in rep3.items() if k != "notes"} == {k: v for k, v in before.items() if k != "notes"}
    assert all(f["sha256"] in card3 for f in rep3["files"].values())
    with open(w, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(SystemExit, match=f"{w.name} in .* is not the file the report describes"):
        recipe.main(["--supernet", TINY_R.name, "--assets", str(assets), "--recard"])
    assert (assets / "MODEL_CARD.md").read_text() == card3
    with pytest.raises(SystemExit):
        recipe.parse_args(["--assets", str(assets)])                     # --data / --run needed to train


def test_interim_assets_from_the_rows_measured_so_far(tmp_path):
    """--interim trains nothing and measures nothing: it ships the finished training with a predictor trained on
    the rows measured so far, says so in the card, and refuses an unfinished training or too few rows."""
    torch.set_num_threads(1)
    root = make_images(str(tmp_path / "ds"), n_per_class=14)
    run, assets = tmp_path / "run", tmp_path / "assets"
    common = ["--data", root, "--supernet", TINY_R.name, "--run", str(run), "--assets", str(assets),
              "--scale", "0.02", "--batch-size", "6", "--holdout", "6", "--threads", "1", "--bn-images", "12",
              "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit, match="needs a finished training"):
        recipe.main(common + ["--interim"])
    recipe.main(common + ["--predictor-subnets", "12"])
    rows = (run / "predictor_data.jsonl").read_text().splitlines()
    (run / "predictor_data.jsonl").write_text("\n".join(rows[:9]) + "\n")     # as if stopped after 9 of 12
    with pytest.raises(SystemExit, match="holds 9 measured sub-networks, fewer than --min-rows 10"):
        recipe.main(common + ["--predictor-subnets", "12", "--interim", "--min-rows", "10"])
    rep = recipe.main(common + ["--predictor-subnets", "12", "--interim", "--min-rows", "8",
                                "--predictor-ensemble", "2"])
    assert rep["interim"] and rep["predictor_subnets"] == 9 and rep["predictor_subnets_planned"] == 12
    assert len((run / "predictor_data.jsonl").read_text().splitlines()) == 9           # nothing measured
    card = (assets / "MODEL_CARD.md").read_text()
    assert "Interim predictor" in card and "an ensemble of 2 averaged into one MLP" in card
    assert AccuracyPredictor.load(str(assets / f"{TINY_R.name}_predictor.safetensors"), spec=TINY_R).metrics["n_train"] + \
        AccuracyPredictor.load(str(assets / f"{TINY_R.name}_predictor.safetensors"), spec=TINY_R).metrics["n_val"] == 9


TINY_S = register(dataclasses.replace(TINY, name="tiny_status_test"))


def test_run_status_keeps_a_run_and_restores_it_on_a_new_machine(tmp_path):
    """run_status reads the supernet from the checkpoint, says how far the run is, keeps the parts under
    --out, and --restore rebuilds a run directory from them that the recipe resumes without new steps."""
    from ofa_core import run_status
    torch.set_num_threads(1)
    root = make_images(str(tmp_path / "ds"), n_per_class=14)
    args = ["--data", root, "--supernet", TINY_S.name, "--assets", str(tmp_path / "assets"), "--scale", "0.02",
            "--batch-size", "6", "--holdout", "6", "--threads", "1", "--predictor-subnets", "6", "--bn-images", "12",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    rep = recipe.main(args + ["--run", str(tmp_path / "run")])
    kept = tmp_path / "kept"
    st = run_status.main(["--run", str(tmp_path / "run"), "--data", root, "--out", str(kept), "--keep", "--holdout",
                          "6", "--bn-images", "12", "--predictor-subnets", "6", "--cache-dir", str(tmp_path / "cache")])
    assert st["supernet"] == TINY_S.name and st["predictor_rows"] == 6
    status = (kept / "STATUS.md").read_text()
    assert "training **finished**" in status and "all 6 predictor sub-networks are measured" in status
    assert f"--supernet {TINY_S.name}" in status
    assert json.loads((kept / "status.json").read_text())["checkpoint_sha256"] == st["checkpoint_sha256"]
    assert {"last.model.pt", "log.jsonl", "predictor_data.jsonl"} <= set(os.listdir(kept))
    assert not (kept / "last.pt").exists()                               # only the parts are kept
    run_status.main(["--restore", str(kept), "--run", str(tmp_path / "new-machine")])
    rep2 = recipe.main(args + ["--run", str(tmp_path / "new-machine")])
    assert rep2["timings"]["training_s"] == rep["timings"]["training_s"]     # nothing trained again
    assert rep2["predictor_subnets"] == 6 and rep2["test_acc"] == rep["test_acc"]


def test_mirror_avg_label_fills_the_rows_measured_before_and_trains_on_it(tmp_path):
    """--label mirror_avg on a finished run measures only the mirror images (each verified row reproduces its
    plain accuracy under the same BN recalibration), retrains on the mean, and the card says which label."""
    torch.set_num_threads(1)
    root = make_images(str(tmp_path / "ds"), n_per_class=14)
    run, assets = tmp_path / "run", tmp_path / "assets"
    common = ["--data", root, "--supernet", TINY_R.name, "--run", str(run), "--assets", str(assets),
              "--scale", "0.02", "--batch-size", "6", "--holdout", "6", "--threads", "1", "--bn-images", "12",
              "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--predictor-subnets", "10"]
    rep = recipe.main(common)
    plain = (run / "predictor_data.jsonl").read_text().splitlines()
    (run / "predictor_data.jsonl").write_text("\n".join(plain[:7]) + "\n")     # as if stopped after 7 of 10
    rep2 = recipe.main(common + ["--label", "mirror_avg"])
    rows = [json.loads(line) for line in open(run / "predictor_data.jsonl")]
    assert len(rows) == 10 and all("acc_mirrored" in r for r in rows)
    assert [r["acc"] for r in rows] == [json.loads(line)["acc"] for line in plain]   # the same measurements
    assert all("seconds_mirrored" in r for r in rows[:7]) and not any("seconds_mirrored" in r for r in rows[7:])
    assert rep2["timings"]["training_s"] == rep["timings"]["training_s"]      # nothing trained again
    assert rep2["predictor_label"] == "mirror_avg"
    labels = [(r["acc"] + r["acc_mirrored"]) / 2 for r in rows]
    assert rep2["predictor_metrics"]["mean_acc"] == pytest.approx(np.mean(labels))
    assert "mean of top-1 on the held-out images and on their mirror images" in (assets / "MODEL_CARD.md").read_text()
