"""`SupernetEngine`: what the service does with one supernet, as glue over ofa_core (weights, predictor, costs,
latency tables, search, extraction and export). ofa_core's `InfeasibleError` and `SearchCancelled` pass through."""
from __future__ import annotations

import bisect
import functools
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ofa_core.checkpoint import load_supernet_weights
from ofa_core.costs import CostModel
from ofa_core.bn import apply_bn_stats
from ofa_core.export import (SafetensorsStream, export_onnx_bytes, export_pt_bytes, export_safetensors,
                             export_torchscript_bytes, subnet_metadata)
from ofa_core.extract import extract, extract_state_dict, net_config
from ofa_core.mbv3 import build_supernet
from ofa_core.predictor import AccuracyPredictor
from ofa_core.search import (METRICS, Constraints, Efficiency, SearchResult, evolutionary_search, pareto_search,
                             refine_budgets, refine_front)
from ofa_core.spec import SubnetConfig, SupernetSpec
from service.errors import ValidationFailed
from .calibration import ServedBN, uncalibrated_metadata
from .tables import Table, latency_table

EXTENSIONS = {"safetensors": "safetensors", "pt": "pt", "torchscript": "torchscript.pt", "onnx": "onnx"}
_EXPORT_BYTES = {"pt": export_pt_bytes, "torchscript": export_torchscript_bytes, "onnx": export_onnx_bytes}
_CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Artifact:
    """A checkpoint download: served with Content-Length, ETag = sha256 and byte ranges."""
    total_size: int
    sha256: str
    extension: str
    pieces: Callable[[int, int], Iterator[bytes]]      # the bytes [start, end)
    media_type: str = "application/octet-stream"

    def iter_bytes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Coalesced into ~1 MiB pieces (fewer, larger writes to the socket)."""
        buf, n = [], 0
        for piece in self.pieces(start, self.total_size if end is None else end):
            buf.append(piece)
            n += len(piece)
            if n >= _CHUNK:
                yield b"".join(buf)
                buf, n = [], 0
        if buf:
            yield b"".join(buf)


def _bytes_artifact(data: bytes, extension: str) -> Artifact:
    mv = memoryview(data)
    return Artifact(len(data), hashlib.sha256(data).hexdigest(), extension,
                    lambda a, b: (mv[i:min(i + _CHUNK, b)] for i in range(a, b, _CHUNK)))


class _LRU:
    """Thread-safe least-recently-used cache bounded by entries and by `size(value)` in total."""

    def __init__(self, max_items: int, max_size: int | None = None, size: Callable[[Any], int] = lambda v: 0):
        self.max_items, self.max_size, self.size = max_items, max_size, size
        self._items: "OrderedDict[Any, Any]" = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key, make: Callable[[], Any], keep: Callable[[Any], bool] = lambda v: True):
        """The cached value, else `make()` (cached when `keep(value)`)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        if not keep(value):
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._total += self.size(value)
            while len(self._items) > 1 and (len(self._items) > self.max_items or
                                            (self.max_size is not None and self._total > self.max_size)):
                self._total -= self.size(self._items.popitem(last=False)[1])
        return value


class FrontPoints(list):
    """A stored front's points (dicts with every metric and "accuracy"), indexed by latency: `best_within(budget)`
    is the most accurate point with latency_ms <= budget (the first of equals in list order), in O(log n)."""

    def __init__(self, points):
        super().__init__(points)
        lat = [p.get("latency_ms") for p in self]
        self.indexed = all(v is not None for v in lat) and all(a <= b for a, b in zip(lat, lat[1:]))
        self._lat, self._best, best = lat, [], -1
        for i, p in enumerate(self):
            if best < 0 or p["accuracy"] > self[best]["accuracy"]:
                best = i
            self._best.append(best)

    def best_within(self, budget: float) -> dict[str, Any] | None:
        i = bisect.bisect_right(self._lat, budget) - 1
        return self[self._best[i]] if i >= 0 else None


class SupernetEngine:
    image_sets = None     # service.engine.calibration.ImageSets, set by the store (BN calibration / evaluation)

    def __init__(self, spec: SupernetSpec, weights_path: str | None, predictor_path: str | None):
        self.spec, self.weights_path, self.predictor_path = spec, weights_path, predictor_path
        self.supernet = None
        self.predictor: AccuracyPredictor | None = None
        cm = CostModel(spec)
        self._costs = {"macs": functools.partial(cm.macs, validate=False),
                       "params": functools.partial(cm.params, validate=False),
                       "peak_memory_bytes": functools.partial(cm.peak_memory, validate=False)}
        self._efficiency = _LRU(32)
        self._fronts = _LRU(64)
        self._artifacts = _LRU(256, 512 * 1024 * 1024, lambda a: a.total_size)
        digest = hashlib.sha256(spec.version.encode())
        if weights_path and os.path.exists(weights_path):
            self.supernet = load_supernet_weights(build_supernet(spec, seed=0), weights_path).eval()
            digest.update(file_sha256(weights_path).encode())
        if predictor_path and os.path.exists(predictor_path):
            self.predictor = (AccuracyPredictor.load(predictor_path, spec) if predictor_path.endswith(".safetensors")
                              else AccuracyPredictor.from_published(predictor_path, spec))
            digest.update(file_sha256(predictor_path).encode())
        self.version = f"{spec.version}-{digest.hexdigest()[:12]}"

    def forget_tables(self) -> None:
        """Drop what is cached per table id (efficiency, fronts): ids restart when a database is re-created
        under a running store (the tests share one store across databases)."""
        self._efficiency = _LRU(32)
        self._fronts = _LRU(64)

    @property
    def has_weights(self) -> bool:
        return self.supernet is not None

    @property
    def search_ready(self) -> bool:
        return self.predictor is not None

    # -- metrics ---------------------------------------------------------------------------------------
    def efficiency(self, table_id: int, load: Callable[[], Table]) -> Efficiency:
        """Latency from a stored table version (an ofa_core LatencyTable) plus this supernet's costs."""
        return self._efficiency.get(table_id, lambda: Efficiency(
            self.spec, latency_ms=latency_table(self.spec, load()), **self._costs))

    def front_points(self, table_id: int, load: Callable[[], Any]) -> "FrontPoints | None":
        """The stored Pareto front of a table version (written once per table version, so cached once
        found, with its latency index); None while the worker has not stored it yet."""
        def make():
            points = getattr(load(), "points", None)
            return None if points is None else FrontPoints(points)
        return self._fronts.get(table_id, make, keep=lambda p: p is not None)

    def search_resolutions(self, eff: Efficiency) -> tuple[int, ...]:
        """The resolutions a search of this table uses: those the device's table has entries for and the
        predictor's encoding has a slot for (a table may price sizes the predictor was never trained on)."""
        res = tuple(eff.latency_table.resolutions)
        if self.predictor is None:
            return res
        ok = self.predictor.encodable(res)
        if not ok:
            raise ValidationFailed("device", f"the device's latency table has resolutions {list(res)}, none of "
                                   f"which the accuracy predictor of {self.spec.name} encodes")
        return ok

    def minima(self, eff: Efficiency) -> dict[str, float]:
        """Smallest achievable value of every metric over the searched resolutions."""
        res = self.search_resolutions(eff)
        return {m: eff.minimum(m, res)[0] for m in METRICS}

    def maxima(self, eff: Efficiency) -> dict[str, float]:
        """Every metric of the largest sub-network, the largest over the table's resolutions (the top of the range
        that relative budgets such as `fraction_of_range` refer to)."""
        res = self.search_resolutions(eff)
        m = eff.evaluate(np.stack([self.spec.max_config(r).encode() for r in res]))
        return {k: float(np.max(m[k])) for k in METRICS}

    def predicted_accuracy(self, cfg: SubnetConfig) -> float | None:
        return None if self.predictor is None else float(self.predictor.predict(cfg.encode()[None])[0])

    # -- search ----------------------------------------------------------------------------------------
    def search(self, eff: Efficiency, constraints: dict[str, float], accuracy_floor: float | None, population: int,
               generations: int, seed: int, progress: Callable[[int, int, float], None] | None = None,
               should_cancel: Callable[[], bool] | None = None, top_k: int = 1) -> SearchResult:
        """The most accurate sub-network within the constraints or, with an accuracy floor, the fastest whose
        predicted accuracy reaches it (ofa_core's `min_accuracy`). progress(generation, generations, accuracy).
        With `top_k` > 1 the result's `candidates` list the best top_k distinct feasible ones (verified answers)."""
        if self.predictor is None:
            raise RuntimeError(f"supernet {self.spec.name} has no accuracy predictor configured")
        report = None if progress is None else (lambda gen, acc, lat: progress(gen + 1, generations, acc))
        return evolutionary_search(self.spec, self.predictor, eff, Constraints(**constraints, min_accuracy=accuracy_floor),
                                   population_size=population, generations=generations,
                                   resolutions=self.search_resolutions(eff), seed=seed, progress=report,
                                   should_stop=should_cancel, polish_steps=min(20, generations), top_k=top_k)

    def pareto(self, eff: Efficiency, n_points: int, population: int, generations: int, seed: int = 0,
               should_cancel=None, refine: int = 0, refine_population: int = 100, refine_generations: int = 100
               ) -> list[dict[str, Any]]:
        """The accuracy/latency front of a table (sorted by latency), stored as points with every metric: one
        bucketed-budget run (`n_points` bins), then, with `refine` > 0, a seeded single-budget search at each of
        `refine` budgets across the range and at as many just below the front's largest accuracy steps, merged in
        with the non-dominated one-gene changes of its points (ofa_core's `refine_front`)."""
        if self.predictor is None or not self.predictor.encodable(eff.latency_table.resolutions):
            return []
        res = self.search_resolutions(eff)
        lo = eff.minimum("latency_ms", res)[0]
        hi = float(eff.evaluate(np.stack([self.spec.max_config(r).encode() for r in res]), ["latency_ms"])
                   ["latency_ms"].max())
        front = pareto_search(self.spec, self.predictor, eff, lo, hi * 1.0001, n_bins=max(n_points, 8),
                              generations=generations, children=population * 2, init_samples=population * 20,
                              resolutions=res, seed=seed, should_stop=should_cancel)
        for i, budgets in enumerate((refine_budgets(lo, hi, refine), None) if refine > 0 else ()):
            # a grid across the range, then just below the front's largest accuracy steps (where it answers worst)
            front = refine_front(front, front.gap_budgets(refine) if budgets is None else budgets,
                                 population_size=refine_population, generations=refine_generations,
                                 polish_steps=min(20, refine_generations), resolutions=res, seed=seed + 7919 * i,
                                 should_stop=should_cancel)
        m = eff.evaluate(front.enc)
        return [{"config": SubnetConfig.from_encoded(self.spec, e).to_dict(), "accuracy": float(a),
                 **{k: (float(m[k][i]) if k == "latency_ms" else int(m[k][i])) for k in METRICS}}
                for i, (e, a) in enumerate(zip(front.enc, front.acc))]

    # -- artifacts -------------------------------------------------------------------------------------
    def net_config(self, cfg: SubnetConfig) -> dict[str, Any]:
        return net_config(self.spec, cfg)

    def artifact(self, subnet_id: str, cfg: SubnetConfig, fmt: str, bn: ServedBN | None = None) -> Artifact:
        """The download in format `fmt`: with `bn`, the recalibrated BN statistics replace the supernet's sliced
        ones (in every format, hence in the sha256 / ETag); the metadata says which it is."""
        return self._artifacts.get((subnet_id, fmt, self.version, bn.key if bn else None),
                                   lambda: self._build_artifact(cfg, fmt, bn))

    def _build_artifact(self, cfg: SubnetConfig, fmt: str, bn: ServedBN | None = None) -> Artifact:
        meta = {"supernet_version": self.version, **(bn.metadata if bn else uncalibrated_metadata())}
        if fmt == "safetensors":   # streamed tensor by tensor; the file is never held whole
            if bn is None:
                stream = export_safetensors(self.supernet, cfg, meta)
            else:
                sd = apply_bn_stats(extract_state_dict(self.supernet, cfg), bn.stats)
                stream = SafetensorsStream(sd, subnet_metadata(self.spec, cfg, meta))
            return Artifact(int(stream.total_size), stream.sha256, EXTENSIONS[fmt], stream.iter_bytes)
        if fmt == "pt":
            sd = None if bn is None else apply_bn_stats(extract_state_dict(self.supernet, cfg), bn.stats)
            return _bytes_artifact(export_pt_bytes(self.supernet, cfg, sd, {"metadata": meta}), EXTENSIONS[fmt])
        if bn is None:
            return _bytes_artifact(_EXPORT_BYTES[fmt](self.supernet, cfg), EXTENSIONS[fmt])
        net = apply_bn_stats(extract(self.supernet, cfg), bn.stats)
        return _bytes_artifact(_EXPORT_BYTES[fmt](net, cfg), EXTENSIONS[fmt])
