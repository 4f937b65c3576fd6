"""Reading (config, accuracy) pairs as other tools write them, for training `ofa_core.predictor` on your own
measurements.

Accepted documents (JSON text; the format is recognised from its shape):

* JSON Lines or a JSON array of rows, each either ``{"config": {ks, e, d, r}, "acc": x}`` or an OFA-style flat
  dict ``{"ks": [...], "e": [...], "d": [...], "r": [224], "wid": null, "acc": x}``; the accuracy key may be
  ``acc``, ``accuracy``, ``top1`` or ``top1_acc``;
* a JSON object mapping a config written as JSON text to its accuracy (the published OFA accuracy data set:
  ``{"{\\"wid\\": null, \\"ks\\": [...], \\"e\\": [...], \\"d\\": [...], \\"r\\": [224]}": 0.77, ...}``).

``r`` may be a one-element list (OFA writes ``[224]``); other keys (``wid``, ids, timings) are ignored and
reported in the notes. The accuracy scale is never guessed: ``scale="percent"`` (0..100) or ``"fraction"``
(0..1), and values that contradict it are an error. Configs are canonicalised (blocks skipped by depth do not
matter) and duplicate configs are averaged (noted).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from .spec import ConfigError, SubnetConfig, SupernetSpec

ACC_KEYS = ("acc", "accuracy", "top1", "top1_acc")
CONFIG_KEYS = ("ks", "e", "d", "r")
SCALES = ("percent", "fraction")
MAX_ROWS = 1_000_000


class AccuracyDataError(ValueError):
    """A bad accuracy data file; the message names the row and the field."""


@dataclass
class AccuracyData:
    enc: np.ndarray
    acc: np.ndarray                   # 0..1
    notes: list[str] = field(default_factory=list)


def _rows(text: str) -> Iterable[tuple[str, Any]]:
    s = text.lstrip()
    if not s:
        raise AccuracyDataError("the file is empty")
    if s[0] in "[{":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            if s[0] == "{":        # JSON Lines start with '{' too
                doc = None
            else:
                raise AccuracyDataError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        if isinstance(doc, list):
            yield from ((f"row {i}", r) for i, r in enumerate(doc))
            return
        if isinstance(doc, Mapping) and not any(k in doc for k in ("config",) + CONFIG_KEYS):
            for k, v in doc.items():                        # {config as JSON text: accuracy}
                try:
                    cfg = json.loads(k)
                except json.JSONDecodeError:
                    raise AccuracyDataError(f"key {k[:80]!r}: not a config written as JSON") from None
                yield f"key {k[:60]!r}", {"config": cfg, "acc": v}
            return
        if isinstance(doc, Mapping):
            yield "row 0", doc
            return
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"line {i}", json.loads(line)
            except json.JSONDecodeError as e:
                raise AccuracyDataError(f"line {i}: invalid JSON: {e.msg}") from None


def _config(where: str, row: Mapping[str, Any], ignored: set[str]) -> dict[str, Any]:
    cfg = row.get("config", row)
    if not isinstance(cfg, Mapping):
        raise AccuracyDataError(f"{where}: config must be an object with ks, e, d, r")
    out = {}
    for k in CONFIG_KEYS:
        if k not in cfg:
            raise AccuracyDataError(f"{where}: config field {k!r} is missing")
        out[k] = cfg[k]
    if isinstance(out["r"], list):
        if len(out["r"]) != 1:
            raise AccuracyDataError(f"{where}: r must be one resolution, got {out['r']!r}")
        out["r"] = out["r"][0]
    ignored.update(k for k in cfg if k not in CONFIG_KEYS and k not in ACC_KEYS)
    if "config" in row:
        ignored.update(k for k in row if k not in ("config",) + ACC_KEYS)
    return out


def _accuracy(where: str, row: Mapping[str, Any]) -> float:
    for k in ACC_KEYS:
        if k in row:
            v = row[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise AccuracyDataError(f"{where}: {k} must be a finite number, got {v!r}")
            return float(v)
    raise AccuracyDataError(f"{where}: no accuracy (one of {', '.join(ACC_KEYS)})")


def parse_accuracy_data(text: str, spec: SupernetSpec, scale: str) -> AccuracyData:
    """(config, accuracy) pairs of `spec` from JSON / JSON Lines text; see the module docstring."""
    if scale not in SCALES:
        raise AccuracyDataError(f"scale must be one of {SCALES} (the accuracy scale is never guessed)")
    ignored: set[str] = set()
    by_cfg: dict[str, list[float]] = {}
    cfgs: dict[str, SubnetConfig] = {}
    n = 0
    for where, row in _rows(text):
        n += 1
        if n > MAX_ROWS:
            raise AccuracyDataError(f"more than {MAX_ROWS} rows")
        if not isinstance(row, Mapping):
            raise AccuracyDataError(f"{where}: expected an object, got {type(row).__name__}")
        try:
            cfg = SubnetConfig.from_dict(spec, _config(where, row, ignored))
        except ConfigError as e:
            raise AccuracyDataError(f"{where}: config.{e.field}: {e.message}") from None
        key = cfg.to_json()
        cfgs[key] = cfg
        by_cfg.setdefault(key, []).append(_accuracy(where, row))
    if n == 0:
        raise AccuracyDataError("no rows")
    acc = np.array([np.mean(v) for v in by_cfg.values()])
    lo, hi = float(acc.min()), float(acc.max())
    if scale == "fraction" and (lo < 0 or hi > 1):
        raise AccuracyDataError(f"accuracies range {lo:g}..{hi:g}, outside 0..1 for scale 'fraction' "
                                f"(percentages? use scale 'percent')")
    if scale == "percent":
        if lo < 0 or hi > 100:
            raise AccuracyDataError(f"accuracies range {lo:g}..{hi:g}, outside 0..100 for scale 'percent'")
        if hi <= 1:
            raise AccuracyDataError(f"every accuracy is at most 1 ({lo:g}..{hi:g}) with scale 'percent': these "
                                    f"look like fractions (use scale 'fraction')")
        acc = acc / 100.0
    notes = [f"{n} rows, {len(by_cfg)} distinct sub-networks, accuracy given in {scale} "
             f"({lo:g}..{hi:g})"]
    if ignored:
        notes.append(f"ignored keys: {', '.join(sorted(ignored))}")
    if len(by_cfg) < n:
        notes.append(f"{n - len(by_cfg)} duplicate configs averaged")
    enc = np.stack([c.encode() for c in cfgs.values()]).astype(np.int32)
    return AccuracyData(enc, acc, notes)


def read_accuracy_data(path: str | os.PathLike, spec: SupernetSpec, scale: str,
                       max_bytes: int = 512 * 1024 * 1024) -> AccuracyData:
    """`parse_accuracy_data` of a file (bounded size)."""
    size = os.path.getsize(path)
    if size > max_bytes:
        raise AccuracyDataError(f"{path}: {size} bytes, more than {max_bytes}")
    with open(path, encoding="utf-8") as f:
        try:
            return parse_accuracy_data(f.read(), spec, scale)
        except AccuracyDataError as e:
            raise AccuracyDataError(f"{path}: {e}") from None
