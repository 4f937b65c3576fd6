"""bench/label_noise.py re-measures a predictor data set's rows exactly as the recipe measured them, then splits
a row's error into its BN-draw and held-out-image parts."""
import dataclasses
import json
import os
import sys

import numpy as np
import torch

from ofa_core.data import holdout_split, load_dataset
from ofa_core.mbv3 import build_supernet
from ofa_core.predictor import build_predictor_dataset
from ofa_core.recipe import save_supernet
from ofa_core.spec import register
from ofa_core.training import evaluate_subnet

from test_training import TINY, make_images

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from bench import label_noise  # noqa: E402

SPEC = register(dataclasses.replace(TINY, name="tiny_label_noise_test"))


def test_rows_are_reproduced_and_the_noise_is_split(tmp_path, capsys):
    root = make_images(str(tmp_path / "ds"), n_per_class=14)
    net = build_supernet(SPEC, seed=0)
    weights = str(tmp_path / "w.safetensors")
    save_supernet(net, SPEC, weights, {})
    net = net.to(memory_format=torch.channels_last).eval()
    train, hold = holdout_split(load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)["train"], 12,
                                seed=0)
    rows = str(tmp_path / "rows.jsonl")
    build_predictor_dataset(net, SPEC, 5, lambda n, c: evaluate_subnet(n, c, train, hold, 12), rows, rng=0,
                            progress=False)
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
