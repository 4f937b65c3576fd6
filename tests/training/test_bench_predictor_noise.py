"""bench/pairwise_noise.py (how noisy a measured order of two rows is, plain vs image + mirror) and
bench/predictor_curve.py (held-out ranking against the number of training rows) on tiny data."""
import dataclasses
import json
import os
import sys

import numpy as np
import torch

from ofa_core.predictor import build_predictor_dataset
from ofa_core.spec import get_spec, register

from test_training import TINY
from tiny_rows import measured_rows

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench import pairwise_noise, predictor_curve  # noqa: E402

SPEC = register(dataclasses.replace(TINY, name="tiny_pairwise_noise_test"))


def test_pair_noise_of_known_correctness_vectors():
    plain = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]], bool)
    mirrored = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]], bool)
    out = pairwise_noise.summarize(plain, mirrored)
    d01 = np.array([0, 1, -1, 0.0])                             # plain: sub-network 0 - 1, image by image
    expect = [d01.std(ddof=1) / 2, 0.0, d01.std(ddof=1) / 2]    # pairs (0,1), (0,2), (1,2); sqrt(N) = 2
    assert out["pair_sd_plain_pp"] == np.sqrt(np.mean(np.square(100 * np.array(expect))))
    assert out["pair_sd_mirror_avg_pp"] == np.sqrt(np.mean(np.square(100 * np.array(expect) / 2)))
    assert out["acc_plain_pp"] == [50.0, 50.0, 50.0] and out["plain_minus_mirrored_pp"] == 0.0
    assert out["view_agreement"] == 10 / 12


def test_pairwise_noise_reproduces_the_rows(tmp_path, capsys):
    torch.set_num_threads(1)
    root, weights, rows = measured_rows(tmp_path, SPEC, 4)
    out = pairwise_noise.main(["--data", root, "--supernet", SPEC.name, "--rows", rows, "--weights", weights,
                               "--n", "4", "--holdout", "12", "--bn-images", "12",
                               "--cache-dir", str(tmp_path / "cache")])
    assert out["n"] == 4 and out["images"] == 12
    assert out["rows_reproduced_max_diff_pp"] < 1e-9              # the recipe's measurement, image by image
    assert out["pair_sd_plain_pp"] >= 0 and out["pair_sd_mirror_avg_pp"] >= 0
    assert "image + mirror averaged" in capsys.readouterr().out


def test_predictor_curve_on_synthetic_rows(tmp_path, capsys):
    spec = get_spec("ofa_mbv3_cifar10")
    path = tmp_path / "rows.jsonl"
    def acc(c, mirrored=False):
        return 0.4 + 0.01 * sum(c.d) + 0.002 * sum(c.ks) + (0.001 * c.ks[0] if mirrored else 0.0)

    build_predictor_dataset(None, spec, 60, lambda n, c: {"acc": acc(c), "acc_mirrored": acc(c, True)}, path,
                            rng=0, stratified=True, progress=False)
    rows = predictor_curve.main(["--data", str(path), "--val", "20", "--ns", "10", "40", "50", "--seeds", "2",
                                 "--epochs", "30"])
    assert [r["n_train"] for r in rows] == [10, 40]                # 50 > the 40 rows left: skipped, said so
    printed = capsys.readouterr().out
    assert "n=50: only 40 training rows, skipped" in printed and "a perfect predictor's tau" in printed
    assert all(-1 <= r["tau"] <= 1 and r["rmse"] > 0 for r in rows)
    assert len([json.loads(line) for line in open(path)]) == 60
    rows2 = predictor_curve.main(["--data", str(path), "--val", "20", "--ns", "40", "--seeds", "1", "--epochs", "30",
                                  "--label", "mirror_avg", "--val-label", "acc"])
    printed = capsys.readouterr().out
    assert "trained on label mirror_avg, scored against acc" in printed
    assert "two measurements of the same held-out rows" in printed
    assert len(rows2) == 1 and -1 <= rows2[0]["tau"] <= 1
