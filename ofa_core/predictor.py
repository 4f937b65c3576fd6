"""Accuracy predictor (reference §3): the published MLP and its encoding, generalised to any supernet spec.

Encodings:
- ``"published"``: 60 kernel one-hot (20 blocks x ks_list) + 60 expand one-hot (20 x expand_list) + 8 resolution
  slots at ``(r - 112) // 16``; blocks skipped by depth are all-zero. Only for specs whose resolutions fit the 8
  slots (112 <= r < 240), i.e. the published w1.2/w1.0 spaces.
- ``"onehot"``: the same block one-hots + a one-hot over the spec's own resolution list (e.g. 24/28/32 for CIFAR).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from .spec import SubnetConfig, SupernetSpec, active_mask, as_encoded_batch, canonicalize_encoded, get_spec
from .fileio import write_text_replacing
from .stfile import save_safetensors

ENCODINGS = ("published", "onehot")
PUBLISHED_RES_SLOTS = 8


class PredictorError(ValueError):
    pass


def build_mlp(in_features: int, hidden: int = 400, n_layers: int = 3) -> nn.Sequential:
    """Linear/ReLU stack with keys 0.weight .. (2*n_layers).bias, as in the published predictor."""
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(n_layers):
        layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True)]
        d = hidden
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


def _packed_hidden(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> list | None:
    """The hidden layers as oneDNN weights packed once, with the ReLU fused (about 5-10% faster than addmm + relu_
    on small batches), or None where this torch build has no oneDNN or the packed layers do not reproduce addmm
    on a probe batch (to float32 rounding)."""
    try:
        if not layers or not torch.backends.mkldnn.is_available():
            return None
        packed = [(torch.ops.mkldnn._reorder_linear_weight(wt.T.contiguous(), 128), b) for wt, b in layers]
        probe = torch.rand(37, layers[0][0].shape[0], generator=torch.Generator().manual_seed(0))
        a = b_ = probe
        for (wt, b), (pk, _) in zip(layers, packed):
            a = torch.addmm(b, a, wt).relu_()
            b_ = torch.ops.mkldnn._linear_pointwise(b_, pk, b, "relu", [], "")
        if not torch.allclose(a, b_, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-30):
            return None
        return packed
    except (RuntimeError, AttributeError):
        return None


class AccuracyPredictor:
    """Predicts top-1 accuracy (0..1) of encoded sub-networks. `predict(enc) -> (N,) float64`."""

    single_thread_rows = 8192

    def __init__(self, spec: SupernetSpec | str, encoding: str = "onehot", hidden: int = 400, n_layers: int = 3,
                 model: nn.Sequential | None = None, metrics: Mapping[str, Any] | None = None):
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        if encoding not in ENCODINGS:
            raise PredictorError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if encoding == "published":
            bad = [r for r in self.spec.resolutions if not 0 <= (r - 112) // 16 < PUBLISHED_RES_SLOTS]
            if bad:
                raise PredictorError(f"the published encoding covers 112 <= r < 240; {self.spec.name} has {bad}")
        self.encoding = encoding
        self.hidden, self.n_layers = hidden, n_layers
        self.model = model if model is not None else build_mlp(self.n_features, hidden, n_layers)
        self.model.eval()
        self.metrics: dict[str, Any] = dict(metrics or {})
        B = self.spec.n_blocks
        self._ks_idx = _lookup(self.spec.ks_list)
        self._e_idx = _lookup(self.spec.expand_list)
        self._res_idx = _lookup(self.spec.resolutions)
        self._nk, self._ne = len(self.spec.ks_list), len(self.spec.expand_list)
        self._kbase = np.arange(B) * self._nk
        self._ebase = B * self._nk + np.arange(B) * self._ne
        # fast path (see `predict_codes`): block code = ki * n_e + ei, or n_k * n_e for a skipped block
        self.n_codes = self._nk * self._ne + 1
        self._code_lut = np.full(((max(self.spec.ks_list) + 1) * (max(self.spec.expand_list) + 1)), -1, np.int64)
        self._emul = max(self.spec.expand_list) + 1
        for ki, k in enumerate(self.spec.ks_list):
            for ei, e in enumerate(self.spec.expand_list):
                self._code_lut[k * self._emul + e] = ki * self._ne + ei
        self._code_base = np.arange(B) * self.n_codes
        self._stage_cols = 2 * B + np.repeat(np.arange(self.spec.n_stages), self.spec.max_depth)
        self._pos = np.tile(np.arange(self.spec.max_depth), self.spec.n_stages)
        if encoding == "published":
            self._res_row = np.full(112 + 16 * PUBLISHED_RES_SLOTS, -1, np.int64)
            self._res_row[112:] = B * self.n_codes + np.arange(16 * PUBLISHED_RES_SLOTS) // 16
        else:
            self._res_row = np.where(self._res_idx >= 0, B * self.n_codes + self._res_idx, -1)
        self._fast: tuple | None = None
        self._fast_sig: tuple | None = None
        self._offsets, self._offsets_w = torch.zeros(0, dtype=torch.int64), 0

    # -- encoding -----------------------------------------------------------------------------------
    @property
    def n_res_slots(self) -> int:
        return PUBLISHED_RES_SLOTS if self.encoding == "published" else len(self.spec.resolutions)

    def encodable(self, resolutions: Iterable[int]) -> tuple[int, ...]:
        """The given resolutions this predictor's input encoding has a slot for (sorted): 112 <= r < 240 for the
        published encoding (one slot per 16), the supernet's trained grid for the one-hot encoding."""
        rs = sorted({int(r) for r in resolutions})
        if self.encoding == "published":
            return tuple(r for r in rs if 112 <= r < 112 + 16 * PUBLISHED_RES_SLOTS)
        return tuple(r for r in rs if r in self.spec.resolutions)

    @property
    def n_features(self) -> int:
        B = self.spec.n_blocks
        return B * len(self.spec.ks_list) + B * len(self.spec.expand_list) + self.n_res_slots

    def features(self, enc: np.ndarray) -> np.ndarray:
        """(N, enc_width) encoded configs -> (N, n_features) float32 one-hot features."""
        spec = self.spec
        B, S = spec.n_blocks, spec.n_stages
        enc = as_encoded_batch(self.spec, enc, PredictorError)
        n = enc.shape[0]
        feats = np.zeros((n, self.n_features), dtype=np.float32)
        mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
        rows = np.nonzero(mask)
        try:
            ki = self._ks_idx[enc[:, :B]]
            ei = self._e_idx[enc[:, B:2 * B]]
        except IndexError:
            raise PredictorError("kernel size or expand ratio outside the supernet's lists") from None
        if (ki[mask] < 0).any() or (ei[mask] < 0).any():
            raise PredictorError("kernel size or expand ratio outside the supernet's lists")
        feats[rows[0], (self._kbase[None, :] + ki)[rows]] = 1.0
        feats[rows[0], (self._ebase[None, :] + ei)[rows]] = 1.0
        r = enc[:, -1]
        if self.encoding == "published":
            slot = (r - 112) // 16
            if (slot < 0).any() or (slot >= PUBLISHED_RES_SLOTS).any():
                raise PredictorError("resolution outside the published predictor's 8 slots")
        else:
            if (r < 0).any() or (r >= len(self._res_idx)).any() or (self._res_idx[r] < 0).any():
                raise PredictorError(f"resolution not in {list(spec.resolutions)}")
            slot = self._res_idx[r]
        feats[np.arange(n), 2 * B * 0 + B * self._nk + B * self._ne + slot] = 1.0
        return feats

    # -- prediction ---------------------------------------------------------------------------------
    def codes(self, enc: np.ndarray) -> np.ndarray:
        """(N, enc_width) encoded configs -> (N, n_blocks) block codes (ki * n_e + ei; n_k * n_e if skipped)."""
        spec = self.spec
        B = spec.n_blocks
        enc = as_encoded_batch(self.spec, enc, PredictorError)
        ks, ev = enc[:, :B], enc[:, B:2 * B]
        if len(enc) and (ks.min() < 0 or ev.min() < 0 or ks.max() > max(spec.ks_list) or ev.max() >= self._emul):
            raise PredictorError("kernel size or expand ratio outside the supernet's lists")
        code = self._code_lut[ks * self._emul + ev]
        act = self._pos < enc[:, self._stage_cols]
        if (code[act] < 0).any():
            raise PredictorError("kernel size or expand ratio outside the supernet's lists")
        return np.where(act, code, self.n_codes - 1)

    def _fast_weights(self) -> tuple | None:
        """The MLP as (first-layer row table, bias, [(weight, bias)] of the later layers), refreshed whenever a
        parameter changes (torch's in-place version counters); None for a model that is not the plain MLP."""
        if self._fast_sig is not None and self._fast_sig[0] is self.model:
            if tuple(p._version for p in self._fast_sig[1]) == self._fast_sig[2]:
                return self._fast
        params = list(self.model.parameters())
        sig = (self.model, params, tuple(p._version for p in params))
        fast = None
        mods = list(self.model) if isinstance(self.model, nn.Sequential) else []
        linear = mods[0::2]
        if (len(mods) % 2 == 1 and all(isinstance(m, nn.Linear) and m.bias is not None for m in linear)
                and all(isinstance(m, nn.ReLU) for m in mods[1::2]) and linear[0].in_features == self.n_features
                and linear[-1].out_features == 1):
            with torch.no_grad():
                w1 = linear[0].weight.detach().float()                # (H, n_features)
                B, nk, ne = self.spec.n_blocks, self._nk, self._ne
                kcols = w1[:, :B * nk].T.reshape(B, nk, 1, -1)
                ecols = w1[:, B * nk:B * (nk + ne)].T.reshape(B, 1, ne, -1)
                blocks = torch.zeros(B, self.n_codes, w1.shape[0])
                blocks[:, :nk * ne] = (kcols + ecols).reshape(B, nk * ne, -1)   # ks and e column of each combo
                table = torch.cat([blocks.reshape(B * self.n_codes, -1), w1[:, B * (nk + ne):].T]).contiguous()
                rest = [(m.weight.detach().float().T.contiguous(), m.bias.detach().float().clone())
                        for m in linear[1:]]
                fast = (table, linear[0].bias.detach().float().clone(), rest, _packed_hidden(rest[:-1]))
        self._fast, self._fast_sig = fast, sig
        return fast

    def predict_codes(self, codes: np.ndarray, r: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Predicted accuracy from block codes (see `codes`) and resolutions, (N,) float64.

        The first layer on one-hot inputs is a gather-and-sum of weight columns: each block contributes the sum of
        its ks and e columns (precomputed per combination, a zero row when skipped), plus the resolution column and
        the bias; the later layers run as plain float32 matmuls. Equal to the torch MLP on `features` to float32
        rounding. Falls back to the module for a non-standard model.
        """
        codes = np.asarray(codes)
        r = np.asarray(r).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= len(self._res_row) or (self._res_row[r] < 0).any()):
            raise PredictorError(f"resolution not supported by the predictor ({list(self.spec.resolutions)})")
        fast = self._fast_weights()
        n = len(r)
        out = np.empty(n, dtype=np.float64)
        # Small batches (the search's generations) run fastest single-threaded: thread hand-offs cost more
        # than the tiny matmuls, and far more on a busy host. Large batches keep torch's thread count.
        n_threads = torch.get_num_threads()
        single = n <= self.single_thread_rows and n_threads > 1
        if single:
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                for s in range(0, n, batch_size):
                    c, rr = codes[s:s + batch_size], r[s:s + batch_size]
                    if fast is None:
                        x = torch.from_numpy(self._features_from_codes(c, rr))
                        out[s:s + batch_size] = self.model(x).view(-1).double().numpy()
                        continue
                    out[s:s + batch_size] = self._forward_codes(fast, c, rr).numpy()
        finally:
            if single:
                torch.set_num_threads(n_threads)
        return out

    def _forward_codes(self, fast: tuple, codes: np.ndarray, r: np.ndarray) -> torch.Tensor:
        """The fast path on unchecked codes and resolutions: (m,) float32 (no autograd: the weights are detached)."""
        table, b1, rest, packed = fast
        m, w = len(r), codes.shape[1] + 1
        idx = np.empty((m, w), dtype=np.int64)
        np.add(codes, self._code_base, out=idx[:, :-1])
        idx[:, -1] = self._res_row[r]
        if len(self._offsets) < m or self._offsets_w != w:                     # bag starts, grown as needed
            self._offsets, self._offsets_w = torch.arange(0, max(m, 256) * w, w), w
        h = torch.nn.functional.embedding_bag(torch.from_numpy(idx.reshape(-1)), table, self._offsets[:m],
                                              mode="sum").add_(b1).relu_()
        if packed is not None:
            for wt, b in packed:
                h = torch.ops.mkldnn._linear_pointwise(h, wt, b, "relu", [], "")   # (m, H)
        else:
            for wt, b in rest[:-1]:
                h = torch.addmm(b, h, wt).relu_()                              # (m, H)
        w_out, b_out = rest[-1]
        return torch.addmm(b_out, h, w_out).view(-1)                           # (m,)

    def codes_predictor(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """A lean `predict_codes` for a hot loop (the search): the weights are snapshotted now and inputs are not
        re-validated, so the caller must pass codes from `codes` and supported resolutions, and must not train
        the model while holding it. Falls back to `predict_codes` for a non-standard model or when torch runs
        more than one thread (where `predict_codes` switches to one thread for small batches)."""
        fast = self._fast_weights()
        if fast is None:
            return self.predict_codes

        def predict(codes: np.ndarray, r: np.ndarray) -> np.ndarray:
            if torch.get_num_threads() > 1 or len(r) > 65536:
                return self.predict_codes(codes, r)
            return self._forward_codes(fast, codes, r).numpy()                 # (m,) float32
        return predict

    def _features_from_codes(self, codes: np.ndarray, r: np.ndarray) -> np.ndarray:
        n, B = codes.shape
        feats = np.zeros((n, self.n_features), dtype=np.float32)
        rows, blk = np.nonzero(codes < self.n_codes - 1)
        cc = codes[rows, blk]
        feats[rows, self._kbase[blk] + cc // self._ne] = 1.0
        feats[rows, self._ebase[blk] + cc % self._ne] = 1.0
        feats[np.arange(n), self._res_row[r] - B * self.n_codes + B * (self._nk + self._ne)] = 1.0
        return feats

    def predict(self, enc: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Predicted accuracy (0..1) of each encoded config, (N,) float64 (fast path: `predict_codes`)."""
        enc = np.asarray(enc)
        if enc.ndim == 1:
            enc = enc[None]
        codes = self.codes(enc)
        r = enc[:, -1]
        if self.encoding == "published":
            slot = (r - 112) // 16
            if (slot < 0).any() or (slot >= PUBLISHED_RES_SLOTS).any():
                raise PredictorError("resolution outside the published predictor's 8 slots")
        return self.predict_codes(codes, r, batch_size=batch_size)

    def predict_mlp(self, enc: np.ndarray) -> np.ndarray:
        """The plain torch MLP on one-hot `features` (the reference the fast path is checked against)."""
        with torch.no_grad():
            return self.model(torch.from_numpy(self.features(enc))).view(-1).double().numpy()

    __call__ = predict

    def predict_one(self, cfg: SubnetConfig | Mapping[str, Any]) -> float:
        cfg = cfg if isinstance(cfg, SubnetConfig) else SubnetConfig.from_dict(self.spec, cfg)
        return float(self.predict(cfg.encode()[None])[0])

    # -- persistence --------------------------------------------------------------------------------
    @classmethod
    def from_published(cls, path: str | os.PathLike, spec: SupernetSpec | str = "ofa_mbv3_d234_e346_k357_w1.2"
                       ) -> "AccuracyPredictor":
        """Load the published `acc_predictor.pth` (a plain state dict; torch.load with weights_only=True, strict)."""
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise PredictorError(f"{path}: expected a state dict, got {type(sd).__name__}")
        hidden = sd["0.weight"].shape[0] if "0.weight" in sd else 400
        n_layers = sum(1 for k in sd if k.endswith(".weight")) - 1
        pred = cls(spec, encoding="published", hidden=hidden, n_layers=n_layers,
                   metrics={"origin": "published OFA accuracy predictor"})
        try:
            pred.model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        except RuntimeError as exc:
            raise PredictorError(f"{path}: state dict does not match the published MLP: {exc}") from None
        return pred

    def save(self, path: str | os.PathLike, extra_metadata: Mapping[str, str] | None = None) -> None:
        """safetensors file with metadata: spec name, encoding, architecture and metrics (JSON)."""
        meta = {"format": "ofa-accuracy-predictor", "version": "1", "spec": self.spec.name, "encoding": self.encoding,
                "hidden": str(self.hidden), "n_layers": str(self.n_layers), "n_features": str(self.n_features),
                "metrics": json.dumps(self.metrics, default=float)}
        meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
        sd = {k: v.detach().contiguous().clone() for k, v in self.model.state_dict().items()}
        save_safetensors(sd, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, spec: SupernetSpec | str | None = None) -> "AccuracyPredictor":
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "ofa-accuracy-predictor":
            raise PredictorError(f"{path}: not an ofa-accuracy-predictor safetensors file")
        spec_ = spec if spec is not None else meta["spec"]
        spec_ = get_spec(spec_) if isinstance(spec_, str) else spec_
        if spec_.name != meta["spec"]:
            raise PredictorError(f"{path}: predictor is for {meta['spec']}, not {spec_.name}")
        pred = cls(spec_, encoding=meta["encoding"], hidden=int(meta["hidden"]), n_layers=int(meta["n_layers"]),
                   metrics=json.loads(meta.get("metrics") or "{}"))
        pred.model.load_state_dict(load_file(str(path)), strict=True)
        pred.model.eval()
        return pred


# ----------------------------------------------------------------------------------------------------
# Metrics and training
# ----------------------------------------------------------------------------------------------------
def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b (scipy.stats.kendalltau)."""
    from scipy.stats import kendalltau
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def rmse_pp(pred: np.ndarray, target: np.ndarray) -> float:
    """Root-mean-square error in percentage points (accuracies on a 0..1 scale)."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float(np.sqrt(np.mean((pred - target) ** 2)) * 100.0)


MAX_ENSEMBLE = 8


def train_predictor(enc: np.ndarray, acc: np.ndarray, spec: SupernetSpec | str, *, encoding: str = "onehot",
                    val_fraction: float = 0.2, epochs: int = 600, batch_size: int = 256, lr: float = 1e-3,
                    weight_decay: float = 1e-4, hidden: int = 400, n_layers: int = 3, seed: int = 0,
                    max_seconds: float | None = None, progress: Callable[[int, float], None] | None = None,
                    val_indices: np.ndarray | None = None, ensemble: int = 1
                    ) -> tuple[AccuracyPredictor, dict[str, float]]:
    """`_train_one` (see there), or with `ensemble=k > 1` k members trained with seeds seed..seed+k-1 on the
    same split (the one `seed` draws) and merged by `average_predictors` into one plain MLP whose output is the
    members' mean (so the file loads with `AccuracyPredictor.load` like any other). `max_seconds` bounds the
    whole run (each member gets an equal share). Metrics are the ensemble's, plus the members' held-out RMSE."""
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or not 1 <= ensemble <= MAX_ENSEMBLE:
        raise PredictorError(f"ensemble must be an integer in 1..{MAX_ENSEMBLE}, got {ensemble!r}")
    kw = dict(encoding=encoding, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
              hidden=hidden, n_layers=n_layers, progress=progress)
    if ensemble == 1:
        return _train_one(enc, acc, spec, val_fraction=val_fraction, seed=seed, max_seconds=max_seconds,
                          val_indices=val_indices, **kw)
    n = len(np.asarray(acc).reshape(-1))
    if val_indices is None:
        n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0
        val_indices = np.random.default_rng(seed).permutation(n)[:n_val]
    share = None if max_seconds is None else max_seconds / ensemble
    members = [_train_one(enc, acc, spec, seed=seed + i, max_seconds=share, val_indices=val_indices, **kw)
               for i in range(ensemble)]
    pred = average_predictors([p for p, _ in members])
    spec_ = pred.spec
    enc_c = canonicalize_encoded(spec_, np.asarray(enc))
    acc = np.asarray(acc, dtype=np.float64).reshape(-1)
    val_idx = np.unique(np.asarray(val_indices, dtype=np.int64))
    tr_idx = np.setdiff1d(np.arange(n), val_idx)
    p_all = pred.predict(enc_c)
    m0 = members[0][1]
    metrics = {"n_train": int(len(tr_idx)), "n_val": int(len(val_idx)),
               "epochs_run": max(m["epochs_run"] for _, m in members), "best_epoch": m0["best_epoch"],
               "train_rmse_pp": rmse_pp(p_all[tr_idx], acc[tr_idx]),
               "train_kendall_tau": kendall_tau(p_all[tr_idx], acc[tr_idx]),
               "val_rmse_pp": rmse_pp(p_all[val_idx], acc[val_idx]) if len(val_idx) else float("nan"),
               "val_kendall_tau": kendall_tau(p_all[val_idx], acc[val_idx]) if len(val_idx) > 1 else float("nan"),
               "mean_acc": float(acc.mean()), "seed": seed, "encoding": encoding, "ensemble": ensemble,
               "member_val_rmse_pp": [m["val_rmse_pp"] for _, m in members]}
    pred.metrics = metrics
    return pred, metrics


def average_predictors(members: list[AccuracyPredictor]) -> AccuracyPredictor:
    """One plain Linear/ReLU MLP computing the mean of `members`' outputs exactly (same spec, encoding, depth):
    hidden layers side by side (the first stacked, the later block-diagonal), the output layer's weights
    concatenated over k and its bias averaged. Width k * hidden; loads and runs the fast path like any MLP."""
    if not members:
        raise PredictorError("no members to average")
    a = members[0]
    if any(p.spec.name != a.spec.name or p.encoding != a.encoding or p.n_layers != a.n_layers
           or p.hidden != a.hidden for p in members):
        raise PredictorError("ensemble members must share spec, encoding and architecture")
    k = len(members)
    lins = [[m for m in p.model if isinstance(m, nn.Linear)] for p in members]
    model = build_mlp(a.n_features, a.hidden * k, a.n_layers)
    out = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for j, dst in enumerate(out):
            ws = [ls[j].weight.detach().float() for ls in lins]
            bs = [ls[j].bias.detach().float() for ls in lins]
            if j == 0:
                dst.weight.copy_(torch.cat(ws, 0))
                dst.bias.copy_(torch.cat(bs))
            elif j < len(out) - 1:
                dst.weight.copy_(torch.block_diag(*ws))
                dst.bias.copy_(torch.cat(bs))
            else:
                dst.weight.copy_(torch.cat(ws, 1) / k)
                dst.bias.copy_(torch.stack(bs).mean(0))
    return AccuracyPredictor(a.spec, encoding=a.encoding, hidden=a.hidden * k, n_layers=a.n_layers, model=model,
                             metrics={"ensemble": k})


def _train_one(enc: np.ndarray, acc: np.ndarray, spec: SupernetSpec | str, *, encoding: str = "onehot",
               val_fraction: float = 0.2, epochs: int = 600, batch_size: int = 256, lr: float = 1e-3,
               weight_decay: float = 1e-4, hidden: int = 400, n_layers: int = 3, seed: int = 0,
               max_seconds: float | None = None, progress: Callable[[int, float], None] | None = None,
               val_indices: np.ndarray | None = None) -> tuple[AccuracyPredictor, dict[str, float]]:
    """Fit the MLP with the authors' recipe (Adam lr 1e-3, wd 1e-4, output bias = mean acc); 600 epochs of
    batch 256 by default (on ~2,200 measured sub-networks clearly better held-out RMSE than 200 epochs of 500).

    Seeded; `epochs` (and optionally `max_seconds`) bound the run. Returns (predictor, metrics) where metrics holds
    held-out RMSE in percentage points and Kendall tau (on `val_indices` if given, else `val_fraction` of the rows
    split by the seed), plus the training-set figures and the epoch with the best held-out loss (whose weights are
    kept).
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    enc = canonicalize_encoded(spec, np.asarray(enc))
    acc = np.asarray(acc, dtype=np.float64).reshape(-1)
    if len(enc) != len(acc):
        raise PredictorError(f"{len(enc)} configs but {len(acc)} accuracies")
    if len(acc) < 5:
        raise PredictorError("need at least 5 measured sub-networks to train a predictor")
    if not np.isfinite(acc).all() or acc.min() < 0 or acc.max() > 1:
        raise PredictorError("accuracies must be finite and on a 0..1 scale")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(acc))
    if val_indices is not None:
        val_idx = np.unique(np.asarray(val_indices, dtype=np.int64))
        if len(val_idx) and (val_idx.min() < 0 or val_idx.max() >= len(acc)):
            raise PredictorError("validation indices outside the data")
        tr_idx = perm[~np.isin(perm, val_idx)]
        n_val = len(val_idx)
        if len(tr_idx) == 0:
            raise PredictorError("no training rows left after the validation split")
    else:
        n_val = max(1, int(round(val_fraction * len(acc)))) if val_fraction > 0 else 0
        val_idx, tr_idx = perm[:n_val], perm[n_val:]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pred = AccuracyPredictor(spec, encoding=encoding, hidden=hidden, n_layers=n_layers)
    model = pred.model
    with torch.no_grad():
        model[-1].bias.fill_(float(acc[tr_idx].mean()))
    X = torch.from_numpy(pred.features(enc))
    Y = torch.from_numpy(acc.astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    bs = max(1, min(batch_size, len(tr_idx)))
    tr_t = torch.from_numpy(tr_idx)
    best = (math.inf, 0, None)
    t0 = time.perf_counter()
    ep = 0
    for ep in range(epochs):
        model.train()
        order = tr_t[torch.randperm(len(tr_t), generator=g)]
        for s in range(0, len(order), bs):
            idx = order[s:s + bs]
            loss = torch.mean((model(X[idx]).view(-1) - Y[idx]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        eval_idx = torch.from_numpy(val_idx) if n_val else tr_t
        with torch.no_grad():
            vloss = float(torch.mean((model(X[eval_idx]).view(-1) - Y[eval_idx]) ** 2))
        if vloss < best[0]:
            best = (vloss, ep, {k: v.clone() for k, v in model.state_dict().items()})
        if progress is not None:
            progress(ep, math.sqrt(vloss) * 100)
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    model.load_state_dict(best[2])
    model.eval()
    p_all = pred.predict(enc)
    metrics = {"n_train": int(len(tr_idx)), "n_val": int(n_val), "epochs_run": ep + 1, "best_epoch": best[1],
               "train_rmse_pp": rmse_pp(p_all[tr_idx], acc[tr_idx]),
               "train_kendall_tau": kendall_tau(p_all[tr_idx], acc[tr_idx]),
               "val_rmse_pp": rmse_pp(p_all[val_idx], acc[val_idx]) if n_val else float("nan"),
               "val_kendall_tau": kendall_tau(p_all[val_idx], acc[val_idx]) if n_val > 1 else float("nan"),
               "mean_acc": float(acc.mean()), "seed": seed, "encoding": encoding}
    pred.metrics = metrics
    return pred, metrics


# ----------------------------------------------------------------------------------------------------
# Data-set builder
# ----------------------------------------------------------------------------------------------------
LABELS = {"acc": "top-1 on the held-out images",
          "mirror_avg": "the mean of top-1 on the held-out images and on their mirror images (one BN recalibration)"}
ROW_FIELDS = ("acc", "acc_mirrored")     # measured fields a row may hold, each an accuracy in 0..1


def row_label(row: Mapping[str, Any], label: str = "acc") -> float:
    """The accuracy a predictor trains on, from one data-set row: `acc`, or with label "mirror_avg" the mean of
    `acc` and `acc_mirrored` (same estimate of the accuracy over the image distribution, about a fifth less
    sampling noise between sub-networks on CIFAR-10: `bench/pairwise_noise.py`)."""
    if label not in LABELS:
        raise PredictorError(f"label must be one of {sorted(LABELS)}, got {label!r}")
    if label == "acc":
        return float(row["acc"])
    if "acc_mirrored" not in row:
        raise PredictorError(f"row {row.get('i')} has no acc_mirrored: label 'mirror_avg' needs every row measured "
                             "on the mirror images too (`fill_mirrored_rows`, or the recipe with --label mirror_avg)")
    return (float(row["acc"]) + float(row["acc_mirrored"])) / 2


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL data set as dicts (a torn last line, left by an interrupted write, is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue       # a torn write at the end of an interrupted run
    return rows


def read_predictor_dataset(path: str | os.PathLike, spec: SupernetSpec | str,
                           label: str = "acc") -> tuple[np.ndarray, np.ndarray]:
    """Rows of a JSONL data set -> (enc (N, W) int32, acc (N,) float64), acc per `row_label(row, label)`.
    Truncated last lines are ignored."""
    return dataset_from_rows(read_rows(path) if os.path.exists(path) else [], spec, label)


def dataset_from_rows(rows: list[Mapping[str, Any]], spec: SupernetSpec | str,
                      label: str = "acc") -> tuple[np.ndarray, np.ndarray]:
    """`read_rows` output -> (enc (N, W) int32, acc (N,) float64), acc per `row_label(row, label)`."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if not rows:
        return np.zeros((0, spec.enc_width), np.int32), np.zeros(0)
    encs = [SubnetConfig.from_dict(spec, row["config"]).encode() for row in rows]
    return np.stack(encs).astype(np.int32), np.asarray([row_label(row, label) for row in rows])


def _measured_fields(got: Any, i: int) -> dict[str, float]:
    """An eval_fn's answer (an accuracy, or a mapping of ROW_FIELDS with "acc") -> the row's measured fields."""
    fields = dict(got) if isinstance(got, Mapping) else {"acc": got}
    if "acc" not in fields or set(fields) - set(ROW_FIELDS):
        raise PredictorError(f"eval_fn returned fields {sorted(fields)} for row {i}; expected acc and optionally "
                             f"{list(ROW_FIELDS[1:])}")
    out = {}
    for k, v in fields.items():
        v = float(v)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise PredictorError(f"eval_fn returned {k}={v!r} for row {i}; expected an accuracy in 0..1")
        out[k] = v
    return out


def build_predictor_dataset(supernet: Any, spec: SupernetSpec | str, n: int,
                            eval_fn: Callable[[Any, SubnetConfig], float], out_path: str | os.PathLike,
                            rng: np.random.Generator | int = 0, resume: bool = True, progress: bool = True,
                            resolutions: tuple[int, ...] | None = None,
                            stratified: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sample `n` sub-networks (uniform genes, or `stratified` over the size range), measure each with
    `eval_fn(supernet, cfg) -> accuracy in 0..1` (or a mapping of `ROW_FIELDS`, "acc" among them), append JSONL
    rows.

    The sample sequence is determined by `rng` alone (all `n` configs are drawn up front), so a resumed run skips
    the rows already in `out_path` (matched by config) and measures only the rest. Each row:
    ``{"i": index, "config": {...}, "acc": float, ["acc_mirrored": float,] "seconds": float}``. Returns the full
    (enc, acc) data set (plain `acc`).
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sampler = spec.sample_stratified_encoded if stratified else spec.sample_encoded
    encs = sampler(n, rng, resolutions)
    done: set[bytes] = set()
    if resume and os.path.exists(out_path):
        with open(out_path, "rb+") as f:      # drop a torn last line left by an interrupted write
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
        prev, _ = read_predictor_dataset(out_path, spec)
        done = {row.tobytes() for row in prev}
    elif os.path.exists(out_path):
        os.remove(out_path)
    todo = [i for i in range(n) if encs[i].tobytes() not in done]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, initial=n - len(todo), desc="predictor data set", unit="subnet")
    try:
        with open(out_path, "a", encoding="utf-8") as f:
            for i in todo:
                cfg = SubnetConfig.from_encoded(spec, encs[i])
                t0 = time.perf_counter()
                fields = _measured_fields(eval_fn(supernet, cfg), i)
                f.write(json.dumps({"i": i, "config": cfg.to_dict(), **fields,
                                    "seconds": round(time.perf_counter() - t0, 4)}) + "\n")
                f.flush()
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return read_predictor_dataset(out_path, spec)


def fill_mirrored_rows(path: str | os.PathLike, spec: SupernetSpec | str, supernet: Any,
                       eval_fn: Callable[[Any, SubnetConfig, bool], Mapping[str, float]], *, verify_every: int = 25,
                       save_every: int = 20, progress: bool = True) -> int:
    """Give every row of the data set at `path` that lacks it an `acc_mirrored`, so that it can train with label
    "mirror_avg". `eval_fn(supernet, cfg, plain)` measures the mirrored accuracy, and with `plain` the row's
    `acc` again under the same BN recalibration: that is done for the first row filled and every
    `verify_every`-th after it, and a row whose `acc` does not come out the same (another supernet, hold-out split
    or BN draw than the ones that measured the data set) stops the fill with an error before that row is written.
    The file is rewritten atomically every `save_every` rows, so an interrupted fill resumes where it stopped.
    Returns the number of rows filled."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    rows = read_rows(path)
    todo = [k for k, row in enumerate(rows) if "acc_mirrored" not in row]
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="mirrored accuracies", unit="subnet")

    def save():
        write_text_replacing(path, "".join(json.dumps(r) + "\n" for r in rows))

    try:
        for n_done, k in enumerate(todo):
            row = rows[k]
            verify = n_done % max(1, verify_every) == 0
            t0 = time.perf_counter()
            got = _measured_fields({"acc": row["acc"], **eval_fn(supernet, SubnetConfig.from_dict(spec, row["config"]),
                                                                verify)}, row.get("i", k))
            if "acc_mirrored" not in got:
                raise PredictorError(f"eval_fn gave no acc_mirrored for row {row.get('i', k)}")
            if verify and got["acc"] != float(row["acc"]):
                raise PredictorError(f"row {row.get('i', k)} measured {got['acc']:.6f}, its data set says "
                                     f"{float(row['acc']):.6f}: the supernet, hold-out split or BN recalibration "
                                     "differ from the ones that measured the data set; nothing more was written")
            row["acc_mirrored"] = got["acc_mirrored"]
            row["seconds_mirrored"] = round(time.perf_counter() - t0, 4)
            if (n_done + 1) % max(1, save_every) == 0:
                save()
            if bar is not None:
                bar.update(1)
    finally:
        if todo:
            save()
        if bar is not None:
            bar.close()
    return len(todo)


def _lookup(values) -> np.ndarray:
    values = list(values)
    arr = np.full(max(values) + 1, -1, dtype=np.int64)
    arr[np.asarray(values)] = np.arange(len(values))
    return arr
