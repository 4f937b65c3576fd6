"""A tiny supernet's weights and a predictor data set measured as the recipe measures one, for the benches that
re-measure rows (bench/label_noise.py, bench/pairwise_noise.py)."""
import torch

from ofa_core.data import holdout_split, load_dataset
from ofa_core.mbv3 import build_supernet
from ofa_core.predictor import build_predictor_dataset
from ofa_core.recipe import save_supernet
from ofa_core.training import evaluate_subnet

from test_training import make_images


def measured_rows(tmp_path, spec, n_rows: int, holdout: int = 12, bn_images: int = 12) -> tuple[str, str, str]:
    """-> (image folder, weights file, rows file): `n_rows` sub-networks measured on a `holdout` split."""
    root = make_images(str(tmp_path / "ds"), n_per_class=14)
    net = build_supernet(spec, seed=0)
    weights = str(tmp_path / "w.safetensors")
    save_supernet(net, spec, weights, {})
    net = net.to(memory_format=torch.channels_last).eval()
    train, hold = holdout_split(load_dataset(root, cache_dir=str(tmp_path / "cache"), progress=False)["train"],
                                holdout, seed=0)
    rows = str(tmp_path / "rows.jsonl")
    build_predictor_dataset(net, spec, n_rows, lambda n, c: evaluate_subnet(n, c, train, hold, bn_images), rows,
                            rng=0, progress=False)
    return root, weights, rows
