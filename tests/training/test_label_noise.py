"""bench/label_noise.py re-measures a predictor data set's rows exactly as the recipe measured them, then splits
a row's error into its BN-draw and held-out-image parts."""
import dataclasses
import json
import os
import sys

import numpy as np

from ofa_core.spec import register

from test_training import TINY
from tiny_rows import measured_rows

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench import label_noise  # noqa: E402

SPEC = register(dataclasses.replace(TINY, name="tiny_label_noise_test"))


def test_rows_are_reproduced_and_the_noise_is_split(tmp_path, capsys):
    root, weights, rows = measured_rows(tmp_path, SPEC, 5)
    out = label_noise.main(["--data", root, "--supernet", SPEC.name, "--rows", rows, "--weights", weights,
                            "--n", "4", "--holdout", "12", "--bn-images", "12", "--cache-dir", str(tmp_path / "cache")])
    assert out["n"] == 4
    assert out["rows_reproduced_max_diff_pp"] == 0.0          # the same measurement as the recipe's
    accs = [100 * json.loads(line)["acc"] for line in open(rows)]
    assert abs(out["dataset_sd_pp"] - np.std(accs)) < 1e-9
    assert out["bn_draw_sd_pp"] >= 0 and out["eval_split_sd_pp"] >= 0
    assert abs(out["label_noise_sd_pp"] - np.hypot(out["bn_draw_sd_pp"], out["eval_split_sd_pp"])) < 1e-9
    printed = capsys.readouterr().out
    assert "| BN recalibration draw (12 images) |" in printed and "which 12 held-out images" in printed
