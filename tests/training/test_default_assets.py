"""The committed default supernet and predictor: present, intact (sha256 as in the model card), loadable without
../shared, and consistent with the registry entry the service serves by default."""
import hashlib
import os
import re

import numpy as np
import torch

from ofa_core.checkpoint import load_supernet_weights
from ofa_core.extract import extract
from ofa_core.mbv3 import build_supernet
from ofa_core.predictor import AccuracyPredictor
from ofa_core.spec import get_spec

SPEC = get_spec("ofa_mbv3_cifar10")
CARD = os.path.join(os.path.dirname(SPEC.weights_path), "MODEL_CARD.md")


def test_files_match_the_model_card():
    card = open(CARD).read()
    total = 0
    for path in (SPEC.weights_path, SPEC.predictor_path):
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert re.search(rf"\| {re.escape(os.path.basename(path))} \| \d+ \| `{digest}` \|", card), path
        total += os.path.getsize(path)
    assert total <= 15 * 2**20


def test_default_supernet_loads_strictly_and_runs():
    torch.set_num_threads(1)
    net = build_supernet(SPEC, seed=1)
    load_supernet_weights(net, SPEC.resolve_weights())
    net.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = SPEC.sample(np.random.default_rng(0), resolutions=[32])
    net.set_active(cfg)
    with torch.no_grad():
        torch.testing.assert_close(extract(net, cfg)(x), net(x), rtol=0, atol=1e-5)


def test_default_predictor_loads_and_ranks_the_largest_above_the_smallest():
    pred = AccuracyPredictor.load(SPEC.predictor_path, spec=SPEC)
    big, small = pred.predict(np.stack([SPEC.max_config(32).encode(), SPEC.min_config(24).encode()]))
    assert 0 < small < big < 1
    assert pred.metrics["val_rmse_pp"] > 0 and -1 <= pred.metrics["val_kendall_tau"] <= 1


def test_the_predictor_data_set_ships_beside_the_predictor_and_retrains_it():
    """The measured (config, accuracy) rows the default predictor was trained on are committed with it (sha256
    in the card), read by `read_predictor_dataset`, as many as the predictor's metrics say it saw."""
    from ofa_core.predictor import read_predictor_dataset
    path = os.path.join(os.path.dirname(SPEC.weights_path), f"{SPEC.name}_predictor_data.jsonl")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert re.search(rf"\| {re.escape(os.path.basename(path))} \| \d+ \| `{digest}` \|", open(CARD).read())
    enc, acc = read_predictor_dataset(path, SPEC)
    pred = AccuracyPredictor.load(SPEC.predictor_path, spec=SPEC)
    assert len(acc) == pred.metrics["n_train"] + pred.metrics["n_val"] and len(acc) >= 200
    assert ((0 < acc) & (acc < 1)).all() and len(np.unique(enc, axis=0)) == len(enc)
