"""Latency lookup tables as the service stores them: ``{resolution: {operator key: (count, mean, std)}}``.

Parsing accepts the published per-resolution YAML (``<r>_lookup_table.yaml``: key -> {count, mean, std})
and a multi-resolution document ``{"resolutions": {"160": {key: {...}}, ...}}`` (YAML or JSON). Every error
names the key or line. Operator keys follow reference §4.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Mapping

import numpy as np
import yaml

from ofa_core.spec import SupernetSpec, active_mask

Table = dict[int, dict[str, tuple[int, float, float]]]


class TableError(ValueError):
    def __init__(self, message: str, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message, self.key, self.line = message, key, line


_CONV_RE = re.compile(r"^Conv-input:(\d+)x(\d+)x3-")
_FILE_RE = re.compile(r"(\d+)_lookup_table\.(ya?ml|json)$")


def _load_doc(data: bytes, fmt: str | None) -> Any:
    text = data.decode("utf-8", errors="strict") if isinstance(data, (bytes, bytearray)) else data
    if fmt == "json" or (fmt is None and text.lstrip().startswith("{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise TableError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", line=e.lineno) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise TableError(f"invalid YAML{f' at line {line}' if line else ''}: {getattr(e, 'problem', e)}", line=line) from None


def _entry(key: str, v: Any) -> tuple[int, float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        mean, count, std = float(v), 1, 0.0
    elif isinstance(v, Mapping):
        if "mean" not in v:
            raise TableError(f"operator {key!r}: missing 'mean'", key=key)
        try:
            mean = float(v["mean"])
            count = int(v.get("count", 1))
            std = float(v.get("std", 0.0) or 0.0)
        except (TypeError, ValueError):
            raise TableError(f"operator {key!r}: count/mean/std must be numbers", key=key) from None
    else:
        raise TableError(f"operator {key!r}: expected {{count, mean, std}}, got {type(v).__name__}", key=key)
    if not math.isfinite(mean) or mean < 0:
        raise TableError(f"operator {key!r}: mean must be a finite non-negative number of ms, got {mean}", key=key)
    if not math.isfinite(std) or std < 0 or count < 0:
        raise TableError(f"operator {key!r}: std and count must be non-negative", key=key)
    return count, mean, std


def _resolution_of(entries: Mapping[str, Any]) -> int:
    for k in entries:
        m = _CONV_RE.match(str(k))
        if m:
            return int(m.group(1))
    raise TableError("cannot tell the resolution: no first-conv key 'Conv-input:RxRx3-...'", key="Conv-input")


def parse_single(doc: Any, resolution: int | None = None) -> Table:
    if not isinstance(doc, Mapping) or not doc:
        raise TableError("a lookup table must be a non-empty mapping of operator key -> {count, mean, std}")
    r = resolution if resolution is not None else _resolution_of(doc)
    return {int(r): {str(k): _entry(str(k), v) for k, v in doc.items()}}


def parse_document(data: bytes | str, fmt: str | None = None, filename: str | None = None) -> Table:
    """Parse one uploaded document (any of the accepted layouts)."""
    doc = _load_doc(data, fmt)
    if isinstance(doc, Mapping) and ("resolutions" in doc or "tables" in doc):
        res = doc.get("resolutions", doc.get("tables"))
        if not isinstance(res, Mapping) or not res:
            raise TableError("'resolutions' must map resolution -> table", key="resolutions")
        out: Table = {}
        for r, t in res.items():
            try:
                ri = int(r)
            except (TypeError, ValueError):
                raise TableError(f"resolution key {r!r} is not an integer", key=f"resolutions.{r}") from None
            if not isinstance(t, Mapping) or not t:
                raise TableError(f"resolution {ri}: expected a mapping of operator key -> entry", key=f"resolutions.{r}")
            out[ri] = {str(k): _entry(str(k), v) for k, v in t.items()}
        return out
    r = None
    if filename:
        m = _FILE_RE.search(filename)
        if m:
            r = int(m.group(1))
    return parse_single(doc, r)


def merge(tables: list[Table]) -> Table:
    out: Table = {}
    for t in tables:
        for r, entries in t.items():
            out.setdefault(r, {}).update(entries)
    return out


def table_sha256(table: Table) -> str:
    return hashlib.sha256(json.dumps(to_document(table), sort_keys=True).encode()).hexdigest()


def to_document(table: Table) -> dict[str, Any]:
    return {"resolutions": {str(r): {k: {"count": c, "mean": m, "std": s} for k, (c, m, s) in sorted(t.items())}
                            for r, t in sorted(table.items())}}


def dump(table: Table, fmt: str) -> str:
    doc = to_document(table)
    if fmt == "json":
        return json.dumps(doc, indent=1, sort_keys=True)
    return yaml.safe_dump(doc, sort_keys=True)


# ----------------------------------------------------------------------------------------------------
# Operator keys (reference §4) and vectorized latency
# ----------------------------------------------------------------------------------------------------
def _hw(f: int, c: int) -> str:
    return f"{f}x{f}x{c}"


def fixed_keys(spec: SupernetSpec, r: int) -> list[str]:
    wd = spec.widths
    sizes = spec.feature_sizes(r)
    f0, fl = sizes[0], sizes[-1]
    return [f"Conv-input:{_hw(r, 3)}-output:{_hw(f0, wd['stem'])}",
            f"expanded_conv-input:{_hw(f0, wd['stem'])}-output:{_hw(f0, wd['first_block'])}-expand:{wd['stem']}"
            f"-kernel:3-stride:1-idskip:{int(wd['stem'] == wd['first_block'])}-se:0-hs:0",
            f"Conv_1-input:{_hw(fl, wd['stages'][-1])}-output:{_hw(fl, wd['final_expand'])}",
            f"AvgPool2D-input:{_hw(fl, wd['final_expand'])}-output:{_hw(1, wd['final_expand'])}",
            f"Conv_2-input:{_hw(1, wd['final_expand'])}-output:{_hw(1, wd['last'])}",
            f"Logits-input:{_hw(1, wd['last'])}-output:{spec.n_classes}"]


def block_key(spec: SupernetSpec, r: int, b: int, k: int, e: int) -> str:
    """Key of elastic block b (0-based) with kernel k, expand ratio e, at resolution r."""
    cin, cout, stride, act, se = spec.block_in_out()[b]
    f = spec.feature_sizes(r)[b]
    f2 = int((f - 1) / stride + 1)
    mid = spec.mid_channels(cin, e)
    return (f"expanded_conv-input:{_hw(f, cin)}-output:{_hw(f2, cout)}-expand:{mid}-kernel:{k}-stride:{stride}"
            f"-idskip:{int(stride == 1 and cin == cout)}-se:{int(se)}-hs:{int(act == 'h_swish')}")


class LatencyModel:
    """Vectorized latency of encoded configs from a table; missing operators make a config infinite."""

    def __init__(self, spec: SupernetSpec, table: Table):
        self.spec = spec
        self.table = table
        B = spec.n_blocks
        self.res = np.array(sorted(table), dtype=np.int64)
        R, K, E = len(self.res), len(spec.ks_list), len(spec.expand_list)
        self.fixed = np.full(len(self.res), np.inf)
        self.blocks = np.full((R, B, K, E), np.inf)
        for i, r in enumerate(self.res):
            t = table[int(r)]
            try:
                self.fixed[i] = sum(t[k][1] for k in fixed_keys(spec, int(r)))
            except KeyError:
                pass
            for b in range(B):
                for ki, k in enumerate(spec.ks_list):
                    for ei, e in enumerate(spec.expand_list):
                        v = t.get(block_key(spec, int(r), b, k, e))
                        if v is not None:
                            self.blocks[i, b, ki, ei] = v[1]
        self.ks_idx = {k: i for i, k in enumerate(spec.ks_list)}
        self.e_idx = {e: i for i, e in enumerate(spec.expand_list)}

    @property
    def resolutions(self) -> list[int]:
        return [int(r) for r, f in zip(self.res, self.fixed) if np.isfinite(f)]

    def missing_keys(self, r: int) -> list[str]:
        t = self.table.get(r, {})
        keys = fixed_keys(self.spec, r) + [block_key(self.spec, r, b, k, e) for b in range(self.spec.n_blocks)
                                           for k in self.spec.ks_list for e in self.spec.expand_list]
        return sorted({k for k in keys if k not in t})

    def __call__(self, enc: np.ndarray) -> np.ndarray:
        spec, B, S = self.spec, self.spec.n_blocks, self.spec.n_stages
        enc = np.asarray(enc)
        r = enc[:, -1]
        ri = np.searchsorted(self.res, r)
        ok = (ri < len(self.res)) & (self.res[np.minimum(ri, len(self.res) - 1)] == r)
        ri = np.minimum(ri, len(self.res) - 1)
        ks_i = np.vectorize(self.ks_idx.__getitem__, otypes=[np.int64])(enc[:, :B]) if len(enc) else np.zeros((0, B), np.int64)
        e_i = np.vectorize(self.e_idx.__getitem__, otypes=[np.int64])(enc[:, B:2 * B]) if len(enc) else np.zeros((0, B), np.int64)
        per = self.blocks[ri[:, None], np.arange(B)[None, :], ks_i, e_i]
        mask = active_mask(spec, enc[:, 2 * B:2 * B + S])
        lat = self.fixed[ri] + np.where(mask, per, 0.0).sum(1)
        return np.where(ok, lat, np.inf)
