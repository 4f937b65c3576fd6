"""Per-operator latency lookup tables (reference §4) and vectorized latency of encoded sub-network batches.

A `LatencyTable` maps, for each input resolution r, an operator key in the published format
(``expanded_conv-input:112x112x24-output:56x56x32-expand:144-kernel:3-stride:2-idskip:0-se:0-hs:0``) to
``(mean, std, count)`` in milliseconds. A network's latency is the sum of the means of its operators: every
active elastic block plus the fixed ones (first conv, block 0, final expand, pool, feature mix, logits).

Keys are derived from the supernet geometry (`SupernetSpec`), so the same code serves the published w1.2
Note10 tables and tables measured on this host for any registered supernet (see `profiler.py`).
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from . import safeyaml
from .safeyaml import excerpt
from .spec import SubnetConfig, SupernetSpec, as_encoded_batch, get_spec
from .fileio import write_text_replacing

SOURCES = ("imported", "measured", "calibrated")
FORMAT = "ofa-latency-table"
NOTE10_SPEC = "ofa_mbv3_d234_e346_k357_w1.2"


class LatencyTableError(ValueError):
    """A malformed or incomplete latency table; the message names the key, resolution or line."""


@dataclass(frozen=True)
class LatencyEntry:
    mean: float
    std: float = 0.0
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"count": int(self.count), "mean": float(self.mean), "std": float(self.std)}


# ----------------------------------------------------------------------------------------------------
# Operator keys derived from the geometry
# ----------------------------------------------------------------------------------------------------
def _first_feature(spec: SupernetSpec, r: int) -> int:
    return (r - 1) // spec.stem_stride + 1


def fixed_operator_keys(spec: SupernetSpec, r: int) -> list[str]:
    """The operators every sub-network runs at resolution r: first conv, block 0, and the four head ops."""
    wd = spec.widths
    f0 = _first_feature(spec, r)
    fin = spec.feature_sizes(r)[-1]
    stem, fb, last_c = wd["stem"], wd["first_block"], wd["stages"][-1]
    fe, last = wd["final_expand"], wd["last"]
    return [
        f"Conv-input:{r}x{r}x3-output:{f0}x{f0}x{stem}",
        f"expanded_conv-input:{f0}x{f0}x{stem}-output:{f0}x{f0}x{fb}-expand:{stem}-kernel:3-stride:1"
        f"-idskip:{int(stem == fb)}-se:0-hs:0",
        f"Conv_1-input:{fin}x{fin}x{last_c}-output:{fin}x{fin}x{fe}",
        f"AvgPool2D-input:{fin}x{fin}x{fe}-output:1x1x{fe}",
        f"Conv_2-input:1x1x{fe}-output:1x1x{last}",
        f"Logits-input:1x1x{last}-output:{spec.n_classes}",
    ]


def block_operator_key(spec: SupernetSpec, r: int, block: int, ks: int, e: int) -> str:
    """Key of elastic block `block` (0-based, i.e. supernet `blocks.{block+1}`) with kernel ks, expand e at r."""
    return _block_operator_key(spec, int(r), int(block), int(ks), int(e))


@functools.lru_cache(maxsize=65536)   # tables of every resolution walk every key; the geometry never changes
def _block_operator_key(spec: SupernetSpec, r: int, block: int, ks: int, e: int) -> str:
    cin, cout, stride, act, se = spec.block_in_out()[block]
    f = spec.feature_sizes(r)[block]
    fo = int((f - 1) / stride + 1)
    mid = spec.mid_channels(cin, e)
    idskip = int(stride == 1 and cin == cout)
    return (f"expanded_conv-input:{f}x{f}x{cin}-output:{fo}x{fo}x{cout}-expand:{mid}-kernel:{ks}-stride:{stride}"
            f"-idskip:{idskip}-se:{int(bool(se))}-hs:{int(act == 'h_swish')}")


def required_operator_keys(spec: SupernetSpec, r: int) -> list[str]:
    """Every distinct operator key any sub-network of `spec` can use at resolution r (sorted, unique)."""
    return list(_required_operator_keys(spec, int(r)))


@functools.lru_cache(maxsize=1024)
def _required_operator_keys(spec: SupernetSpec, r: int) -> tuple[str, ...]:
    keys = set(fixed_operator_keys(spec, r))
    for b in range(spec.n_blocks):
        for k in spec.ks_list:
            for e in spec.expand_list:
                keys.add(block_operator_key(spec, r, b, k, e))
    return tuple(sorted(keys))


def parse_operator_key(key: str) -> dict[str, Any]:
    """Split a key into its op name and fields: {'op': 'expanded_conv', 'input': (h, w, c), ...}."""
    parts = key.split("-")
    out: dict[str, Any] = {"op": parts[0]}
    for p in parts[1:]:
        name, _, val = p.partition(":")
        if name in ("input", "output"):
            out[name] = tuple(int(v) for v in val.split("x"))
        else:
            out[name] = int(val)
    return out


# ----------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------
class LatencyTable:
    """Per-resolution operator latencies for one supernet geometry, with provenance.

    `tables` maps r -> {operator key -> LatencyEntry (or a {mean, std, count} mapping)}. Every key any
    sub-network needs at each listed resolution must be present (else `LatencyTableError`); extra keys are kept.
    """

    def __init__(self, spec: SupernetSpec | str, tables: Mapping[int, Mapping[str, Any]], *,
                 source: str = "imported", environment: Mapping[str, Any] | None = None, batch_size: int = 1,
                 unit: str = "ms"):
        self.spec = get_spec(spec) if isinstance(spec, str) else spec
        if source not in SOURCES:
            raise LatencyTableError(f"source must be one of {SOURCES}, got {source!r}")
        if not tables:
            raise LatencyTableError("the table has no resolutions")
        self.source = source
        self.environment = dict(environment or {})
        self.batch_size = int(batch_size)
        self.unit = unit
        self.tables: dict[int, dict[str, LatencyEntry]] = {}
        for r, mapping in tables.items():
            try:
                r_int = int(r)
            except (TypeError, ValueError):
                raise LatencyTableError(f"resolution {r!r} is not an integer") from None
            if not self.spec.accepts_resolution(r_int):
                raise LatencyTableError(f"resolution {self.spec.resolution_error(r_int)}")
            if not isinstance(mapping, Mapping):
                raise LatencyTableError(f"r={r_int}: expected a mapping of operator keys, got {type(mapping).__name__}")
            self.tables[r_int] = {str(k): _entry(k, v, r_int) for k, v in mapping.items()}
        self._check_complete()
        self._build_arrays()

    # -- validation and precomputation -------------------------------------------------------------
    def _check_complete(self) -> None:
        for r in sorted(self.tables):
            have = self.tables[r]
            for key in required_operator_keys(self.spec, r):
                if key not in have:
                    raise LatencyTableError(f"missing operator key needed at r={r}: {key}")

    def _build_arrays(self) -> None:
        spec = self.spec
        self.resolutions: tuple[int, ...] = tuple(sorted(self.tables))
        R, B, K, E = len(self.resolutions), spec.n_blocks, len(spec.ks_list), len(spec.expand_list)
        self.block_lat = np.zeros((R, B, K, E), dtype=np.float64)   # (res, block, ks idx, e idx)
        self.fixed_lat = np.zeros(R, dtype=np.float64)              # (res,)
        for ri, r in enumerate(self.resolutions):
            t = self.tables[r]
            self.fixed_lat[ri] = sum(t[k].mean for k in fixed_operator_keys(spec, r))
            for b in range(B):
                for ki, k in enumerate(spec.ks_list):
                    for ei, e in enumerate(spec.expand_list):
                        self.block_lat[ri, b, ki, ei] = t[block_operator_key(spec, r, b, k, e)].mean
        self._res_index = _lookup_array(self.resolutions)
        KE = K * E
        self._n_combo = KE
        padded = np.zeros((R, B, KE + 1), dtype=np.float64)             # last slot: inactive block, 0 ms
        padded[:, :, :KE] = self.block_lat.reshape(R, B, KE)
        self._flat = padded.reshape(-1)
        self._combo = np.full((max(spec.ks_list) + 1, max(spec.expand_list) + 1), -1, dtype=np.int64)
        for ki, k in enumerate(spec.ks_list):
            for ei, e in enumerate(spec.expand_list):
                self._combo[k, e] = ki * E + ei
        self._pos = np.tile(np.arange(spec.max_depth), spec.n_stages)
        self._stage = np.repeat(np.arange(spec.n_stages), spec.max_depth)
        self._barange = np.arange(B)[None, :]

    # -- prediction --------------------------------------------------------------------------------
    def _res_idx(self, r: np.ndarray) -> np.ndarray:
        if len(r) and (r.min() < 0 or r.max() >= len(self._res_index) or (self._res_index[r] < 0).any()):
            bad = [int(v) for v in np.unique(r) if v < 0 or v >= len(self._res_index) or self._res_index[v] < 0]
            raise LatencyTableError(f"resolution(s) {bad} not in the latency table (has {list(self.resolutions)})")
        return self._res_index[r]

    def predict(self, enc: np.ndarray) -> np.ndarray:
        """Latency in ms of each encoded config, (N,) float64. Vectorized: one gather + masked sum."""
        spec = self.spec
        B = spec.n_blocks
        enc = as_encoded_batch(self.spec, enc)
        ri = self._res_idx(enc[:, -1])
        ks, ev = enc[:, :B], enc[:, B:2 * B]
        if ks.max(initial=0) >= self._combo.shape[0] or ev.max(initial=0) >= self._combo.shape[1] \
                or ks.min(initial=0) < 0 or ev.min(initial=0) < 0:
            raise ValueError("encoded configs hold a kernel size or expand ratio outside the supernet's lists")
        combo = self._combo[ks, ev]                                      # (N, B) index into ks x e, -1 if invalid
        if (combo < 0).any():
            raise ValueError("encoded configs hold a kernel size or expand ratio outside the supernet's lists")
        mask = self._pos[None, :] < enc[:, 2 * B + self._stage]          # (N, B) active blocks
        slot = np.where(mask, combo, self._n_combo)                      # inactive -> the zero slot
        flat = (ri[:, None] * B + self._barange) * (self._n_combo + 1) + slot
        return self.fixed_lat[ri] + self._flat[flat].sum(axis=1)

    __call__ = predict

    def predict_one(self, cfg: SubnetConfig | Mapping[str, Any]) -> float:
        """Scalar reference: sum of the looked-up means of `operator_keys(cfg)`."""
        cfg = self._cfg(cfg)
        if cfg.r not in self.tables:
            raise LatencyTableError(f"resolution {cfg.r} not in the latency table (has {list(self.resolutions)})")
        t = self.tables[cfg.r]
        return float(sum(t[k].mean for k in self.operator_keys(cfg)))

    def operator_keys(self, cfg: SubnetConfig | Mapping[str, Any]) -> list[str]:
        """The operator keys a config runs, in network order (repeats kept)."""
        cfg = self._cfg(cfg)
        fixed = fixed_operator_keys(self.spec, cfg.r)
        keys = fixed[:2]
        for b in cfg.active_blocks():
            keys.append(block_operator_key(self.spec, cfg.r, b - 1, cfg.ks[b - 1], cfg.e[b - 1]))
        return keys + fixed[2:]

    def _cfg(self, cfg) -> SubnetConfig:
        return cfg if isinstance(cfg, SubnetConfig) else SubnetConfig.from_dict(self.spec, cfg)

    # -- minima (for infeasibility reports) -----------------------------------------------------
    def minimum(self, resolutions: Iterable[int] | None = None) -> tuple[float, np.ndarray]:
        """Exact smallest latency over all sub-networks (optionally over some resolutions) and one config attaining it.

        Separable: for each resolution and each stage depth, the sum of the per-block minima over (ks, e).
        """
        spec = self.spec
        B, S, D = spec.n_blocks, spec.n_stages, spec.max_depth
        res = [r for r in (resolutions if resolutions is not None else self.resolutions) if r in self.tables]
        if not res:
            raise LatencyTableError("no requested resolution is in the latency table")
        best, best_enc = math.inf, None
        for r in res:
            ri = self.resolutions.index(r)
            bmin = self.block_lat[ri].reshape(B, -1)
            arg = bmin.argmin(axis=1)
            bmin = bmin.min(axis=1).reshape(S, D)
            cum = np.concatenate([np.zeros((S, 1)), np.cumsum(bmin, axis=1)], axis=1)  # cum[s, d]
            d_opts = np.asarray(spec.depth_list)
            stage_cost = cum[:, d_opts]                                              # (S, n_depths)
            d_best = d_opts[stage_cost.argmin(axis=1)]
            total = self.fixed_lat[ri] + stage_cost.min(axis=1).sum()
            if total < best:
                enc = np.empty(spec.enc_width, dtype=np.int32)
                ks_i, e_i = np.divmod(arg, len(spec.expand_list))
                enc[:B] = np.asarray(spec.ks_list)[ks_i]
                enc[B:2 * B] = np.asarray(spec.expand_list)[e_i]
                enc[2 * B:2 * B + S] = d_best
                enc[-1] = r
                best, best_enc = float(total), enc
        from .spec import canonicalize_encoded
        return best, canonicalize_encoded(spec, best_enc[None])[0]

    # -- conversion ---------------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        return {"source": self.source, "environment": dict(self.environment), "batch_size": self.batch_size,
                "unit": self.unit, "spec": self.spec.name}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, **self.provenance(),
                "tables": {str(r): {k: e.to_dict() for k, e in sorted(t.items())} for r, t in sorted(self.tables.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], spec: SupernetSpec | str | None = None) -> "LatencyTable":
        if not isinstance(data, Mapping):
            raise LatencyTableError(f"expected a JSON object, got {type(data).__name__}")
        if "tables" not in data:
            raise LatencyTableError("missing field 'tables'")
        spec_ = spec if spec is not None else data.get("spec")
        if spec_ is None:
            raise LatencyTableError("missing field 'spec' (or pass spec=)")
        try:
            spec_ = get_spec(spec_) if isinstance(spec_, str) else spec_
        except KeyError as exc:
            raise LatencyTableError(str(exc)) from None
        return cls(spec_, data["tables"], source=data.get("source", "imported"),
                   environment=data.get("environment") or {}, batch_size=data.get("batch_size", 1),
                   unit=data.get("unit", "ms"))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1, sort_keys=False)
        if path is not None:
            _atomic_write(path, text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | os.PathLike, spec: SupernetSpec | str | None = None) -> "LatencyTable":
        """A `pathlib.Path` (any os.PathLike) is read as a file; a str is always JSON text, never a path. Prefer
        the explicit `from_json_file` / `from_json_text`."""
        text = _read_maybe_path(path_or_text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = ("; a str is JSON text - to read a file use LatencyTable.from_json_file(path)"
                    if isinstance(path_or_text, str) and not path_or_text.lstrip().startswith(("{", "[")) else "")
            raise LatencyTableError(f"JSON syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}{hint}"
                                    ) from None
        return cls.from_dict(data, spec)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, spec: SupernetSpec | str | None = None) -> "LatencyTable":
        """A table from a JSON file (what `to_json(path)` writes); `path` may be a str."""
        if not isinstance(path, (str, os.PathLike)):
            raise LatencyTableError(f"expected a path, got {type(path).__name__}")
        return cls.from_json(pathlib.Path(path), spec)

    @classmethod
    def from_json_text(cls, text: str, spec: SupernetSpec | str | None = None) -> "LatencyTable":
        """A table from JSON text (what `to_json()` returns)."""
        if not isinstance(text, str):
            raise LatencyTableError(f"expected JSON text (str), got {type(text).__name__}")
        return cls.from_json(text, spec)

    def to_yaml(self, r: int) -> str:
        """The published per-resolution YAML text for resolution r."""
        return yaml.safe_dump({k: e.to_dict() for k, e in sorted(self.tables[r].items())}, sort_keys=True)

    def to_yaml_dir(self, directory: str | os.PathLike) -> list[str]:
        """Write `<r>_lookup_table.yaml` per resolution (published format) plus `provenance.json`."""
        os.makedirs(directory, exist_ok=True)
        paths = []
        for r in self.resolutions:
            p = os.path.join(directory, f"{r}_lookup_table.yaml")
            _atomic_write(p, self.to_yaml(r))
            paths.append(p)
        _atomic_write(os.path.join(directory, "provenance.json"), json.dumps(self.provenance(), indent=1))
        return paths

    @classmethod
    def from_yaml(cls, spec: SupernetSpec | str, sources: Mapping[int, Any] | str | os.PathLike, r: int | None = None,
                  *, source: str = "imported", environment: Mapping[str, Any] | None = None,
                  batch_size: int = 1) -> "LatencyTable":
        """Import the published YAML format.

        `sources` is either one file / YAML text for resolution `r`, or a dict r -> (path | YAML text | parsed mapping).
        """
        if not isinstance(sources, Mapping):
            if r is None:
                r = _resolution_from_name(sources)
            if r is None:
                raise LatencyTableError("pass r= for a single YAML table")
            sources = {int(r): sources}
        tables = {}
        for res, src in sources.items():
            tables[int(res)] = src if isinstance(src, Mapping) else parse_yaml_table(src, int(res))
        return cls(spec, tables, source=source, environment=environment, batch_size=batch_size)

    @classmethod
    def from_dir(cls, spec: SupernetSpec | str, directory: str | os.PathLike, resolutions: Iterable[int] | None = None,
                 **kw) -> "LatencyTable":
        """Load every `<r>_lookup_table.yaml` in a directory (and `provenance.json` when present)."""
        if not os.path.isdir(directory):
            raise LatencyTableError(f"{directory}: not a directory")
        found = {}
        for name in os.listdir(directory):
            if name.endswith("_lookup_table.yaml"):
                try:
                    found[int(name.split("_", 1)[0])] = pathlib.Path(directory, name)
                except ValueError:
                    continue
        if resolutions is not None:
            missing = [r for r in resolutions if r not in found]
            if missing:
                raise LatencyTableError(f"{directory}: no {missing[0]}_lookup_table.yaml")
            found = {r: found[r] for r in resolutions}
        if not found:
            raise LatencyTableError(f"{directory}: no <r>_lookup_table.yaml files")
        prov_path = os.path.join(directory, "provenance.json")
        if os.path.exists(prov_path) and not kw:
            with open(prov_path) as f:
                prov = json.load(f)
            kw = {"source": prov.get("source", "imported"), "environment": prov.get("environment") or {},
                  "batch_size": prov.get("batch_size", 1)}
        return cls.from_yaml(spec, dict(sorted(found.items())), **kw)

    @classmethod
    def from_note10_dir(cls, directory: str | os.PathLike, spec: SupernetSpec | str = NOTE10_SPEC) -> "LatencyTable":
        """The published Note10 tables (w1.2 supernet, 160..224)."""
        return cls.from_dir(spec, directory, source="imported",
                            environment={"device": "Samsung Note10", "origin": "published OFA lookup tables",
                                         "batch_size": 1}, batch_size=1)

    def with_means(self, means: Mapping[int, Mapping[str, float]], *, source: str,
                   environment: Mapping[str, Any] | None = None) -> "LatencyTable":
        """A copy with some means replaced (std/count kept), e.g. after calibration."""
        tables = {}
        for r, t in self.tables.items():
            new = dict(t)
            for k, m in (means.get(r) or {}).items():
                old = t.get(k, LatencyEntry(0.0))
                new[k] = LatencyEntry(float(m), old.std, old.count)
            tables[r] = new
        return LatencyTable(self.spec, tables, source=source, environment=environment or self.environment,
                            batch_size=self.batch_size, unit=self.unit)

    def __repr__(self) -> str:
        return (f"LatencyTable(spec={self.spec.name!r}, resolutions={list(self.resolutions)}, source={self.source!r}, "
                f"keys={sum(len(t) for t in self.tables.values())})")


# ----------------------------------------------------------------------------------------------------
# Parsing helpers
# ----------------------------------------------------------------------------------------------------
def _entry(key: Any, value: Any, r: int, line: int | None = None) -> LatencyEntry:
    where = f"r={r} key {excerpt(key, 200)}" + (f" (line {line})" if line else "")
    if isinstance(value, LatencyEntry):
        return value
    if not isinstance(value, Mapping):
        raise LatencyTableError(f"{where}: expected a mapping with mean/std/count, got {excerpt(value)}")
    if "mean" not in value:
        raise LatencyTableError(f"{where}: missing 'mean'")
    vals = {}
    for name, default in (("mean", None), ("std", 0.0), ("count", 0)):
        v = value.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise LatencyTableError(f"{where}: {name} must be a finite number, got {excerpt(v)}")
        if float(v) < 0:
            raise LatencyTableError(f"{where}: {name} must be non-negative, got {excerpt(v)}")
        if name == "count" and isinstance(v, float) and not v.is_integer():
            raise LatencyTableError(f"{where}: count must be a whole number, got {excerpt(v)}")
        vals[name] = v
    return LatencyEntry(float(vals["mean"]), float(vals["std"]), int(vals["count"]))


def parse_yaml_table(path_or_text: str | os.PathLike, r: int) -> dict[str, LatencyEntry]:
    """Parse one published `<r>_lookup_table.yaml` (safe loader only) into key -> LatencyEntry."""
    text = _read_maybe_path(path_or_text)
    name = str(path_or_text) if _is_path(path_or_text) else f"r={r} YAML"
    try:
        data = safeyaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise LatencyTableError(f"{name}: YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, Mapping):
        raise LatencyTableError(f"{name}: expected a mapping of operator keys, got {type(data).__name__}")
    out = {}
    for k, v in data.items():
        try:
            out[str(k)] = _entry(k, v, r)
        except LatencyTableError as exc:
            line = _key_line(text, str(k))
            raise LatencyTableError(f"{name}: {exc}" + (f" (line {line})" if line else "")) from None
    return out


def _key_line(text: str, key: str) -> int | None:
    for i, ln in enumerate(text.splitlines(), 1):
        if ln.startswith(key + ":") or ln.startswith(f"'{key}':") or ln.startswith(f'"{key}":'):
            return i
    return None


def _is_path(x: Any) -> bool:
    """Only os.PathLike values (pathlib.Path) are files; a str is always the table's text. Guessing that a
    string "looks like a path" would let uploaded text make the server read its own files."""
    return isinstance(x, os.PathLike)


def _read_maybe_path(x: str | os.PathLike) -> str:
    if _is_path(x):
        with open(x, encoding="utf-8") as f:
            return f.read()
    if isinstance(x, str):
        return x
    raise LatencyTableError(f"expected a path or text, got {type(x).__name__}")


def _resolution_from_name(x: Any) -> int | None:
    if not _is_path(x):
        return None
    try:
        return int(os.path.basename(str(x)).split("_", 1)[0])
    except ValueError:
        return None


def _lookup_array(values: Iterable[int]) -> np.ndarray:
    values = list(values)
    arr = np.full(max(values) + 1, -1, dtype=np.int64)
    arr[np.asarray(values)] = np.arange(len(values))
    return arr


_atomic_write = write_text_replacing
