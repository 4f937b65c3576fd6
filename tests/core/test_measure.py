"""ofa_core.measure (recalibrate on the extracted network, score it) and the packaged image sets."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from ofa_core.bn import apply_bn_stats
from ofa_core.data import ImageArray, Normalizer, iterate_batches, resize
from ofa_core.extract import extract
from ofa_core.imagepack import image_set_sha256, load_image_set, save_encoded
from ofa_core.measure import BNRecipe, calibration_batches, measure_subnet, set_key
from ofa_core.mbv3 import build_supernet
from ofa_core.spec import get_spec

SPEC = get_spec("ofa_mbv3_cifar10")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "ofa_core", "assets")


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return ImageArray(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), list("abcdefghij"))


def test_calibration_batches_are_the_training_codes():
    from ofa_core.training import bn_batches
    data = _images(50, 0)
    recipe = BNRecipe(n_images=30, batch_size=8)
    ours = list(calibration_batches(data, 28, recipe))
    ref = list(bn_batches(data, 28, 30, batch_size=8, seed=0))
    assert len(ours) == len(ref) == 4 and sum(len(b) for b in ours) == 30
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_measure_subnet_scores_the_recalibrated_extracted_network():
    net = build_supernet(SPEC, seed=0).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = SPEC.min_config(28)
    calib, evalset = _images(40, 1), _images(30, 2)
    m = measure_subnet(net, cfg, calib, evalset, BNRecipe(n_images=40, batch_size=16))
    assert m.n_calib == 40 and m.n_eval == 30 and m.calib_seconds > 0
    static = apply_bn_stats(extract(net, cfg), m.stats)
    norm = Normalizer()
    correct = 0
    with torch.no_grad():
        for x, y in iterate_batches(evalset, 7, train=False, normalizer=norm):
            correct += int((static(resize(x, 28)).argmax(1) == y).sum())
    assert correct == m.correct and m.accuracy == correct / 30
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())   # supernet untouched
    assert set_key("ab", n=1) != set_key("ab", n=2) != set_key("ac", n=2)


def test_encoded_image_sets_roundtrip(tmp_path):
    import io
    from PIL import Image
    imgs = _images(5, 3)
    enc = []
    for a in imgs.images:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")     # lossless: decoding gives the pixels back
        enc.append(buf.getvalue())
    p = str(tmp_path / "s.npz")
    sha = save_encoded(p, enc, imgs.labels, imgs.classes)
    assert sha == image_set_sha256(p) == save_encoded(str(tmp_path / "t.npz"), enc, imgs.labels, imgs.classes)
    back = load_image_set(p)
    assert np.array_equal(back.images, imgs.images) and np.array_equal(back.labels, imgs.labels)
    np.savez(str(tmp_path / "px.npz"), images=imgs.images, labels=imgs.labels, classes=np.asarray(imgs.classes))
    assert np.array_equal(load_image_set(str(tmp_path / "px.npz")).images, imgs.images)
    np.savez(str(tmp_path / "bad.npz"), images=imgs.images, labels=imgs.labels + 20, classes=np.asarray(imgs.classes))
    with pytest.raises(ValueError, match="labels"):
        load_image_set(str(tmp_path / "bad.npz"))


def test_packaged_sets_match_the_model_card():
    card = open(os.path.join(ASSETS, "MODEL_CARD.md")).read()
    section = card[card.index("## Calibration and evaluation images"):]
    total = 0
    sets = {}
    for name in ("ofa_mbv3_cifar10_bn_calib.npz", "ofa_mbv3_cifar10_eval.npz"):
        path = os.path.join(ASSETS, name)
        total += os.path.getsize(path)
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}`"))
        assert re.search(r"`([0-9a-f]{64})`", row).group(1) == image_set_sha256(path)
        with np.load(path, allow_pickle=False) as z:
            sets[name] = (set(z["source_index"].tolist()), [str(n) for n in z["names"]])
        data = load_image_set(path)
        assert data.images.shape == (2000, 32, 32, 3) and len(set(data.labels.tolist())) == 10
    assert total <= 8 * 1024 * 1024
    (a, na), (b, nb) = sets.values()
    assert not a & b and len(a) == len(b) == 2000
    assert all(n.split("/")[-3] == "train" for n in na + nb)      # no test image
