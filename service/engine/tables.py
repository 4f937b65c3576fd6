"""Latency tables as the service receives and stores them: ``{resolution: {operator key: LatencyEntry}}``.

Parsing and validation are ofa_core.latency's (`parse_yaml_table`, `LatencyTable`, `LatencyTable.from_dict`); this
module only maps uploaded documents to resolutions and turns `LatencyTableError` into `TableError` naming the key
or line. Accepted documents:

- the published per-resolution YAML ``<r>_lookup_table.yaml`` (key -> {count, mean, std}); the resolution comes
  from the file name or else from the first-conv key ``Conv-input:RxRx3-...``;
- a multi-resolution document ``{"resolutions": {"160": {key: {...}}, ...}}`` in YAML or JSON (what `dump` writes);
- ofa_core's JSON format (``LatencyTable.to_json``: ``{"format": "ofa-latency-table", "spec": ..., "tables": ...}``).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

import numpy as np
import yaml

from ofa_core import safeyaml
from ofa_core.safeyaml import excerpt
from ofa_core.latency import LatencyEntry, LatencyTable, LatencyTableError, parse_yaml_table
from ofa_core.spec import SupernetSpec

Table = dict[int, dict[str, LatencyEntry]]


class TableError(ValueError):
    def __init__(self, message: str, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message, self.key, self.line = message, key, line


_FILE_RE = re.compile(r"(\d+)_lookup_table\.(ya?ml|json)$")
_CONV_RE = re.compile(r"""^\s*['"]?Conv-input:(\d+)x\d+x3-""", re.M)
_MULTI_RE = re.compile(r"""^['"]?(resolutions|tables)['"]?\s*:""", re.M)
# how ofa_core.latency names the key and the line in its messages
_KEY_RE = re.compile(r"key '([^']+)'|operator key needed at r=\d+: (\S+)")
_LINE_RE = re.compile(r"\bline (\d+)")


def _table_error(e: LatencyTableError) -> TableError:
    msg = str(e)
    k, ln = _KEY_RE.search(msg), _LINE_RE.search(msg)
    return TableError(msg, key=(k.group(1) or k.group(2)) if k else None, line=int(ln.group(1)) if ln else None)


def _text(data: bytes | str) -> str:
    if isinstance(data, (bytes, bytearray)):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TableError(f"the document is not UTF-8 text (byte {e.start})") from None
    return data


def _is_json(text: str, fmt: str | None) -> bool:
    return fmt == "json" or (fmt is None and text.lstrip().startswith("{"))


def load_document(data: bytes | str, fmt: str | None = None) -> Any:
    """An uploaded JSON or YAML document (JSON when `fmt` says so or it starts with '{'); errors name the line."""
    text = _text(data)
    return _load(text, _is_json(text, fmt))


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {excerpt(k)}")
        out[k] = v
    return out


def _load(text: str, as_json: bool) -> Any:
    """JSON (no NaN/Infinity, no duplicate keys) or YAML (no anchors/aliases, no duplicate keys: ofa_core.safeyaml,
    so nothing expands); errors quote at most a short excerpt."""
    if as_json:
        try:
            return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as e:
            raise TableError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", line=e.lineno) from None
        except (ValueError, RecursionError) as e:       # duplicate key, NaN/Infinity, an integer of 4300+ digits
            raise TableError(f"invalid JSON: {str(e)[:200]}") from None
    try:
        return safeyaml.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise TableError(f"invalid YAML{f' at line {line}' if line else ''}: {str(getattr(e, 'problem', e))[:200]}",
                         line=line) from None
    except (ValueError, RecursionError) as e:
        raise TableError(f"invalid YAML: {str(e)[:200]}") from None


def _resolution(text_or_keys: str, filename: str | None) -> int:
    m = _FILE_RE.search(filename or "")
    if m:
        return int(m.group(1))
    m = _CONV_RE.search(text_or_keys)
    if m:
        return int(m.group(1))
    raise TableError("cannot tell the resolution: name the file <r>_lookup_table.yaml or include the first-conv key "
                     "'Conv-input:RxRx3-...'", key="Conv-input")


def _by_resolution(doc: Mapping[str, Any]) -> dict[int, Any]:
    res = doc["resolutions"]
    if not isinstance(res, Mapping) or not res:
        raise TableError("'resolutions' must map resolution -> table", key="resolutions")
    out = {}
    for r, t in res.items():
        try:
            out[int(r)] = t
        except (TypeError, ValueError):
            raise TableError(f"resolution key {r!r} is not an integer", key=f"resolutions.{r}") from None
    return out


def parse_document(spec: SupernetSpec, data: bytes | str, fmt: str | None = None, filename: str | None = None
                   ) -> dict[int, Mapping[str, Any]]:
    """One uploaded document -> {resolution: {key: entry}} (entries are checked when the table is assembled)."""
    text = _text(data)
    as_json = _is_json(text, fmt)
    if not as_json and not _MULTI_RE.search(text):
        # the published per-resolution YAML
        r = _resolution(text, filename)
        try:
            return {r: parse_yaml_table(text, r)}
        except LatencyTableError as e:
            raise _table_error(e) from None
    doc = _load(text, as_json)
    if not isinstance(doc, Mapping) or not doc:
        raise TableError("a lookup table must be a non-empty mapping of operator key -> {count, mean, std}")
    if "resolutions" in doc:
        return _by_resolution(doc)
    if "tables" in doc:
        try:
            return LatencyTable.from_dict(doc, spec).tables
        except LatencyTableError as e:
            raise _table_error(e) from None
    return {_resolution("\n".join(map(str, doc)), filename): doc}


def parse_upload(spec: SupernetSpec, docs: list[tuple[bytes, str | None, str | None]]) -> Table:
    """Uploaded documents (bytes, format, filename), merged, as one complete table of `spec` (TableError otherwise)."""
    merged: dict[int, dict[str, Any]] = {}
    for data, fmt, filename in docs:
        for r, entries in parse_document(spec, data, fmt, filename).items():
            if not isinstance(entries, Mapping) or not entries:
                raise TableError(f"resolution {r}: expected a mapping of operator key -> entry", key=f"resolutions.{r}")
            merged.setdefault(r, {}).update(entries)
    bad = [r for r in merged if not spec.accepts_resolution(r)]
    if bad:
        raise TableError(f"resolution {bad[0]}: {spec.resolution_error(bad[0])}", key=f"resolutions.{bad[0]}")
    return latency_table(spec, merged).tables


MAX_ENTRY_MS = 1e6          # one operator taking over 1000 s is not a latency
MAX_COUNT = 2**31 - 1       # what the database's count column holds
MAX_KEY = 512               # the database's key column
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_bounds(t: LatencyTable) -> None:
    """Every key storable and printable, every number bounded, every sub-network's sum finite."""
    for r, entries in t.tables.items():
        for k, e in entries.items():
            if len(k) > MAX_KEY:
                raise TableError(f"r={r}: operator key of {len(k)} characters (at most {MAX_KEY})", key=k[:80])
            if _CONTROL.search(k):
                raise TableError(f"r={r}: operator key {excerpt(k)} holds a control character", key=k[:80])
            for name, v, hi in (("mean", e.mean, MAX_ENTRY_MS), ("std", e.std, MAX_ENTRY_MS),
                                ("count", e.count, MAX_COUNT)):
                if not (0 <= v <= hi):
                    raise TableError(f"r={r} key {excerpt(k)}: {name} {excerpt(v)} is out of range [0, {hi:g}]",
                                     key=k[:200])
    worst = t.fixed_lat.max() + t.block_lat.max(axis=(2, 3)).sum(axis=1).max()
    if not np.isfinite(worst):
        raise TableError("the table's latencies do not sum to a finite number")


def latency_table(spec: SupernetSpec, table: Mapping[int, Mapping[str, Any]]) -> LatencyTable:
    try:
        t = LatencyTable(spec, table)
    except LatencyTableError as e:
        raise _table_error(e) from None
    _check_bounds(t)
    return t


def table_sha256(table: Table) -> str:
    return hashlib.sha256(json.dumps(to_document(table), sort_keys=True).encode()).hexdigest()


def to_document(table: Table) -> dict[str, Any]:
    return {"resolutions": {str(r): {k: e.to_dict() for k, e in sorted(t.items())} for r, t in sorted(table.items())}}


def dump(table: Table, fmt: str) -> str:
    doc = to_document(table)
    if fmt == "json":
        return json.dumps(doc, indent=1, sort_keys=True)
    return yaml.safe_dump(doc, sort_keys=True)
