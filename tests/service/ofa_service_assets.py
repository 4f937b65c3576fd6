"""Test assets made on the fly: a freshly initialised CIFAR supernet and a small predictor, plus a latency table."""
from __future__ import annotations

import os

import numpy as np

SPEC = "ofa_mbv3_cifar10"


def make_assets(d: str) -> tuple[str, str]:
    import torch
    from safetensors.torch import save_file
    from ofa_core.mbv3 import build_supernet
    from ofa_core.predictor import AccuracyPredictor
    from ofa_core.spec import get_spec
    spec = get_spec(SPEC)
    w = os.path.join(d, "supernet.safetensors")
    p = os.path.join(d, "predictor.safetensors")
    if not os.path.exists(w):
        net = build_supernet(spec, seed=0)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # non-trivial BN statistics so extraction errors would show
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, w)
    if not os.path.exists(p):
        torch.manual_seed(0)
        pred = AccuracyPredictor(spec, encoding="onehot", hidden=32, n_layers=2)
        # synthetic target: bigger networks are more accurate
        rng = np.random.default_rng(0)
        enc = spec.sample_encoded(512, rng)
        feats = torch.from_numpy(pred.features(enc))
        y = torch.from_numpy((0.6 + 0.002 * enc[:, :40].sum(1) / 10 + 0.01 * (enc[:, -1] - 24) / 8).astype(np.float32))
        opt = torch.optim.Adam(pred.model.parameters(), lr=3e-3)
        for _ in range(150):
            opt.zero_grad()
            loss = ((pred.model(feats).view(-1) - y) ** 2).mean()
            loss.backward()
            opt.step()
        pred.model.eval()
        pred.save(p)
    return w, p


def synthetic_table(scale: float = 1.0) -> dict:
    """A complete latency table for the CIFAR supernet (MACs-proportional, deterministic)."""
    from ofa_core.costs import CostModel  # noqa: F401  (only to make sure costs exist)
    from ofa_core.latency import required_operator_keys
    from ofa_core.spec import get_spec
    spec = get_spec(SPEC)
    out = {}
    for r in spec.resolutions:
        t = {}
        for i, k in enumerate(required_operator_keys(spec, r)):
            h = sum(map(ord, k)) % 97
            t[k] = {"count": 10, "mean": scale * (0.01 + 0.001 * h) * (r / 32), "std": 0.001}
        out[str(r)] = t
    return {"resolutions": out}


def make_image_sets(d: str, n_calib: int = 200, n_eval: int = 200) -> tuple[str, str]:
    """Small BN-calibration / evaluation sets for the service tests: the first images of the packaged ones."""
    from ofa_core.imagepack import packaged_sets, save_encoded
    out = []
    for which, n in (("calibration", n_calib), ("evaluation", n_eval)):
        path = os.path.join(d, f"test_{which}_{n}.npz")
        if not os.path.exists(path):
            with np.load(packaged_sets(SPEC)[which], allow_pickle=False) as z:
                blob, off = z["jpeg"], z["offsets"]
                enc = [blob[off[i]:off[i + 1]].tobytes() for i in range(n)]
                save_encoded(path, enc, z["labels"][:n], [str(c) for c in z["classes"]])
        out.append(path)
    return out[0], out[1]
