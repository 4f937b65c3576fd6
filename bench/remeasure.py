"""What the benches that re-measure a predictor data set's rows share: their arguments, and loading the rows,
the supernet and the recipe's training / hold-out split exactly as `ofa_core.recipe` measured them."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from ofa_core.checkpoint import load_supernet_weights
from ofa_core.data import ImageArray, holdout_split, load_dataset
from ofa_core.mbv3 import build_supernet
from ofa_core.predictor import read_rows
from ofa_core.spec import SupernetSpec, get_spec


def parser(description: str, n_default: int = 40) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True)
    p.add_argument("--supernet", default="ofa_mbv3_cifar10")
    p.add_argument("--rows", default=None, help="the data set (default: the one shipped beside the predictor)")
    p.add_argument("--n", type=int, default=n_default, help="sub-networks re-measured (the data set's first n rows)")
    p.add_argument("--bn-images", type=int, default=2000)
    p.add_argument("--holdout", type=int, default=10000)
    p.add_argument("--weights", default=None, help="the supernet's weights (default: its registered file)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default="data/cache")
    return p


@dataclass
class Remeasure:
    spec: SupernetSpec
    rows: list[dict]          # all rows of the data set (the benches re-measure the first --n)
    net: torch.nn.Module      # channels-last, eval mode
    train: ImageArray         # the recipe's training part (BN recalibration images)
    hold: ImageArray          # the recipe's hold-out part (what the rows were measured on)


def load(a: argparse.Namespace) -> Remeasure:
    torch.set_num_threads(a.threads)
    spec = get_spec(a.supernet)
    rows_path = a.rows or spec.predictor_path.replace(".safetensors", "_data.jsonl")
    rows = read_rows(rows_path)
    net = build_supernet(spec, seed=0)
    load_supernet_weights(net, a.weights or spec.resolve_weights())
    net = net.to(memory_format=torch.channels_last).eval()
    train, hold = holdout_split(load_dataset(a.data, cache_dir=a.cache_dir, progress=False)["train"], a.holdout,
                                seed=0)
    return Remeasure(spec, rows, net, train, hold)
