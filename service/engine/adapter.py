"""`SupernetEngine`: everything the service does with one supernet, through ofa_core.

Uses ofa_core's extract (landed); costs/predictor/search/export/checkpoint go through ofa_core when those
modules are importable and otherwise through `service.engine.fallback` / local code here.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ofa_core.spec import SubnetConfig, SupernetSpec
from . import fallback
from .tables import LatencyModel, Table

log = logging.getLogger("ofa.engine")
METRICS = fallback.METRICS
FORMATS = {"safetensors": ("application/octet-stream", "safetensors"), "pt": ("application/octet-stream", "pt"),
           "torchscript": ("application/octet-stream", "torchscript.pt"), "onnx": ("application/octet-stream", "onnx")}


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def capabilities() -> dict[str, str]:
    return {m: ("ofa_core" if _optional(f"ofa_core.{m}") is not None else "fallback")
            for m in ("extract", "export", "checkpoint", "costs", "latency", "predictor", "search", "profiler", "calibrate")}


def file_sha256(path: str, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Infeasible(Exception):
    def __init__(self, minima: dict[str, float], violated: list[str]):
        super().__init__(f"infeasible: {violated}")
        self.minima, self.violated = minima, violated


class Cancelled(Exception):
    pass


@dataclass
class Artifact:
    """An in-memory checkpoint: served with Content-Length, ETag = sha256 and byte ranges."""
    data: bytes
    sha256: str
    media_type: str
    extension: str

    @property
    def total_size(self) -> int:
        return len(self.data)

    def iter_bytes(self, start: int = 0, end: int | None = None, chunk: int = 1 << 20) -> Iterator[bytes]:
        end = len(self.data) if end is None else end
        mv = memoryview(self.data)
        for i in range(start, end, chunk):
            yield bytes(mv[i:min(i + chunk, end)])


class _StreamArtifact:
    """Wraps ofa_core.export.SafetensorsStream (total_size, sha256, iter_bytes(start, end))."""

    def __init__(self, stream, media_type: str, extension: str):
        self.stream, self.media_type, self.extension = stream, media_type, extension
        self.total_size = int(stream.total_size)
        self.sha256 = stream.sha256

    def iter_bytes(self, start: int = 0, end: int | None = None, chunk: int = 1 << 20):
        """Coalesced into ~1 MiB pieces (fewer, larger writes to the socket)."""
        buf, n = [], 0
        for piece in self.stream.iter_bytes(start, self.total_size if end is None else end):
            buf.append(piece)
            n += len(piece)
            if n >= chunk:
                yield b"".join(buf)
                buf, n = [], 0
        if buf:
            yield b"".join(buf)


def load_weights(supernet: torch.nn.Module, path: str) -> None:
    ck = _optional("ofa_core.checkpoint")
    if ck is not None and hasattr(ck, "load_supernet_weights"):
        ck.load_supernet_weights(supernet, path)
        return
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    state = {k.replace(".mobile_inverted_conv.", ".conv."): v for k, v in state.items()}
    supernet.load_state_dict(state, strict=True)


class SupernetEngine:
    def __init__(self, spec: SupernetSpec, weights_path: str | None, predictor_path: str | None):
        self.spec = spec
        self.weights_path = weights_path
        self.predictor_path = predictor_path
        self.supernet = None
        self.predictor: Callable[[np.ndarray], np.ndarray] | None = None
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._latency: "OrderedDict[Any, LatencyModel]" = OrderedDict()
        self._artifacts: "OrderedDict[tuple, Any]" = OrderedDict()
        self._artifact_bytes = 0
        costs_mod = _optional("ofa_core.costs")
        self.costs = None
        if costs_mod is not None and hasattr(costs_mod, "CostModel"):
            try:
                cm = costs_mod.CostModel(spec)
                self.costs = self._wrap_costmodel(cm)
            except Exception:  # pragma: no cover - fall back on any API mismatch
                log.warning("ofa_core.costs.CostModel unusable; using fallback", exc_info=True)
        if self.costs is None:
            self.costs = fallback.Costs(spec)
        digest = hashlib.sha256(spec.version.encode())
        if weights_path and os.path.exists(weights_path):
            from ofa_core.mbv3 import build_supernet
            net = build_supernet(spec, seed=0)
            load_weights(net, weights_path)
            self.supernet = net.eval()
            digest.update(file_sha256(weights_path).encode())
        if predictor_path and os.path.exists(predictor_path):
            self.predictor = self._load_predictor(predictor_path)
            digest.update(file_sha256(predictor_path).encode())
        self.version = f"{spec.version}-{digest.hexdigest()[:12]}"

    # -- loading --------------------------------------------------------------------------------------
    @staticmethod
    def _wrap_costmodel(cm):
        def costs(enc):
            out = cm.all(np.asarray(enc), validate=False)
            return {"macs": np.asarray(out["macs"]), "params": np.asarray(out["params"]),
                    "peak_memory_bytes": np.asarray(out["peak_memory"])}
        return costs

    def _load_predictor(self, path: str):
        mod = _optional("ofa_core.predictor")
        if mod is not None and hasattr(mod, "AccuracyPredictor"):
            try:
                AP = mod.AccuracyPredictor
                p = AP.from_published(path, self.spec) if not path.endswith(".safetensors") else AP.load(path, self.spec)
                return p  # callable and .predict(enc) -> (N,) float64
            except Exception:
                log.warning("ofa_core.predictor unusable for %s; using fallback", path, exc_info=True)
        return fallback.load_predictor(self.spec, path)

    @property
    def has_weights(self) -> bool:
        return self.supernet is not None

    @property
    def search_ready(self) -> bool:
        return self.predictor is not None

    # -- latency / metrics ----------------------------------------------------------------------------
    def latency_model(self, table_key: Any, loader: Callable[[], Table]) -> LatencyModel:
        with self._lock:
            m = self._latency.get(table_key)
            if m is not None:
                self._latency.move_to_end(table_key)
                return m
        m = make_latency(self.spec, loader())
        with self._lock:
            self._latency[table_key] = m
            while len(self._latency) > 32:
                self._latency.popitem(last=False)
        return m

    def search_resolutions(self, lat: LatencyModel) -> list[int]:
        res = [r for r in lat.resolutions if r in self.spec.resolutions]
        if not res:
            raise Infeasible({}, ["latency table covers none of the supernet's resolutions "
                                  f"{list(self.spec.resolutions)}"])
        return res

    def evaluator(self, lat: LatencyModel):
        def evaluate(enc):
            out = {"latency_ms": lat(enc)}
            out.update(self.costs(enc))
            return out
        return evaluate

    def metrics(self, cfg: SubnetConfig, lat: LatencyModel | None) -> dict[str, Any]:
        enc = cfg.encode()[None]
        out: dict[str, Any] = {k: int(v[0]) for k, v in self.costs(enc).items()}
        out["latency_ms"] = float(lat(enc)[0]) if lat is not None else None
        out["accuracy"] = float(self.predictor(enc)[0]) if self.predictor is not None else None
        return out

    def minima(self, lat: LatencyModel) -> dict[str, float]:
        res = self.search_resolutions(lat)
        out = fallback.minima(self.spec, self.evaluator(lat), res)
        if hasattr(lat, "minimum"):
            out["latency_ms"] = float(lat.minimum(res))
        return out

    # -- search ---------------------------------------------------------------------------------------
    def _efficiency(self, lat):
        S = _optional("ofa_core.search")
        if S is None or not hasattr(S, "Efficiency"):
            return None, None
        core = getattr(lat, "core", None)
        costs = self.costs

        def metric(name):
            return lambda enc: costs(enc)[name]
        eff = S.Efficiency(self.spec, latency_ms=core if core is not None else lat, macs=metric("macs"),
                           params=metric("params"), peak_memory_bytes=metric("peak_memory_bytes"))
        return S, eff

    def search(self, lat: LatencyModel, constraints: dict[str, float], accuracy_floor: float | None,
               population: int, generations: int, seed: int, progress=None, should_cancel=None) -> dict[str, Any]:
        """Maximise predicted accuracy under the constraints; Infeasible if they (or the floor) cannot be met."""
        if self.predictor is None:
            raise RuntimeError(f"supernet {self.spec.name} has no accuracy predictor configured")
        res = self.search_resolutions(lat)
        mins = self.minima(lat)
        violated = [k for k, v in constraints.items() if mins[k] > v]
        if violated:
            raise Infeasible(mins, violated)
        S, eff = self._efficiency(lat)
        if S is not None:
            def prog(gen, best_acc, best_lat):
                if progress is not None:
                    progress(gen + 1, generations, best_acc, None)
            try:
                r = S.evolutionary_search(self.spec, self.predictor, eff, dict(constraints), population_size=population,
                                          generations=generations, resolutions=res, seed=seed, progress=prog,
                                          should_stop=should_cancel, polish_steps=min(20, generations))
            except S.InfeasibleError as e:
                raise Infeasible({**mins, **e.minima}, list(e.minima) or ["constraints"]) from None
            except S.SearchCancelled:
                raise Cancelled() from None
            cfg, acc = r.config, float(r.predicted_acc)
            m = eff.evaluate(r.enc[None])
            metrics = {k: float(v[0]) for k, v in m.items()}
        else:
            try:
                r = fallback.evolutionary_search(self.spec, self.evaluator(lat), self.predictor, constraints,
                                                 None, population, generations, seed, res, progress, should_cancel,
                                                 mins=mins)
            except fallback.FallbackInfeasible as e:
                raise Infeasible(e.minima, e.violated) from None
            except fallback.SearchCancelled:
                raise Cancelled() from None
            cfg, acc, metrics = SubnetConfig.from_encoded(self.spec, r.config), r.accuracy, r.metrics
        if accuracy_floor is not None and acc < accuracy_floor:
            raise Infeasible({**mins, "accuracy": acc}, ["accuracy_floor"])
        return {"config": cfg, "accuracy": acc, "metrics": metrics}

    def pareto(self, lat: LatencyModel, n_points: int, population: int, generations: int, seed: int = 0,
               should_cancel=None) -> list[dict[str, Any]]:
        """Accuracy/latency front of a table, stored as points with every metric."""
        if self.predictor is None:
            return []
        res = self.search_resolutions(lat)
        ev = self.evaluator(lat)
        lo = self.minima(lat)["latency_ms"]
        hi = float(np.max(ev(np.stack([self.spec.max_config(r).encode() for r in res]))["latency_ms"]))
        S, eff = self._efficiency(lat)
        if S is not None and hasattr(S, "pareto_search"):
            front = S.pareto_search(self.spec, self.predictor, eff, lo, hi * 1.0001, n_bins=max(n_points, 8),
                                    generations=generations, children=population * 2, init_samples=population * 20,
                                    resolutions=res, seed=seed, should_stop=should_cancel)
            encs, accs = np.asarray(front.enc), np.asarray(front.acc)
        else:
            encs, accs = [], []
            for i, budget in enumerate(np.geomspace(lo * 1.0001, hi, n_points)):
                r = self.search(lat, {"latency_ms": float(budget)}, None, population, generations, seed + i,
                                should_cancel=should_cancel)
                encs.append(r["config"].encode())
                accs.append(r["accuracy"])
            encs, accs = np.stack(encs), np.asarray(accs)
        if not len(encs):
            return []
        m = ev(encs)
        pts = [{"config": SubnetConfig.from_encoded(self.spec, e).to_dict(), "accuracy": float(a),
                **{k: (float(m[k][i]) if k == "latency_ms" else int(m[k][i])) for k in METRICS}}
               for i, (e, a) in enumerate(zip(encs, accs))]
        pts.sort(key=lambda p: (p["latency_ms"], -p["accuracy"]))
        front, best = [], -np.inf
        for p in pts:
            if p["accuracy"] > best:
                front.append(p)
                best = p["accuracy"]
        return front

    # -- artifacts ------------------------------------------------------------------------------------
    def state_dict(self, cfg: SubnetConfig):
        from ofa_core.extract import extract_state_dict
        return extract_state_dict(self.supernet, cfg)

    def net_config(self, cfg: SubnetConfig) -> dict[str, Any]:
        from ofa_core.extract import net_config
        return net_config(self.spec, cfg)

    def run_config(self, cfg: SubnetConfig) -> dict[str, Any]:
        from ofa_core.extract import run_config
        return run_config(cfg)

    def artifact(self, subnet_id: str, cfg: SubnetConfig, fmt: str):
        key = (subnet_id, fmt, self.version)
        with self._lock:
            a = self._artifacts.get(key)
            if a is not None:
                self._artifacts.move_to_end(key)
                return a
        a = self._build_artifact(cfg, fmt)
        size = a.total_size if isinstance(a, Artifact) else 0
        with self._lock:
            self._artifacts[key] = a
            self._artifact_bytes += size
            while self._artifact_bytes > 512 * 1024 * 1024 and len(self._artifacts) > 1:
                _, old = self._artifacts.popitem(last=False)
                self._artifact_bytes -= old.total_size if isinstance(old, Artifact) else 0
        return a

    def _build_artifact(self, cfg: SubnetConfig, fmt: str):
        media, ext = FORMATS[fmt]
        meta = {"supernet": self.spec.name, "supernet_version": self.version, "config": cfg.to_json(),
                "content_id": cfg.content_id()}
        export = _optional("ofa_core.export")
        if fmt == "safetensors":
            sd = self.state_dict(cfg)
            if export is not None and hasattr(export, "SafetensorsStream"):
                return _StreamArtifact(export.SafetensorsStream(sd, meta), media, ext)
            from safetensors.torch import save
            data = save({k: v.contiguous() for k, v in sd.items()}, metadata=meta)
        else:
            fn = getattr(export, f"export_{fmt}_bytes", None) if export is not None else None
            if fn is not None:
                data = fn(self.supernet, cfg)
            else:
                data = self._export_bytes(cfg, fmt, meta)
        return Artifact(bytes(data), hashlib.sha256(data).hexdigest(), media, ext)

    def _export_bytes(self, cfg: SubnetConfig, fmt: str, meta: dict) -> bytes:
        from ofa_core.extract import extract
        buf = io.BytesIO()
        if fmt == "pt":
            torch.save({"state_dict": self.state_dict(cfg), "net_config": self.net_config(cfg),
                        "run_config": self.run_config(cfg), **meta}, buf)
            return buf.getvalue()
        net = extract(self.supernet, cfg).eval()
        x = torch.zeros(1, 3, cfg.r, cfg.r)
        if fmt == "torchscript":
            with torch.no_grad():
                ts = torch.jit.trace(net, x)
            torch.jit.save(ts, buf, _extra_files={"net.config": __import__("json").dumps(self.net_config(cfg))})
            return buf.getvalue()
        if fmt == "onnx":
            torch.onnx.export(net, (x,), buf, input_names=["input"], output_names=["logits"], dynamo=False)
            return buf.getvalue()
        raise ValueError(fmt)


# ----------------------------------------------------------------------------------------------------
# Latency tables through ofa_core.latency when available
# ----------------------------------------------------------------------------------------------------
def validate_table(spec: SupernetSpec, table: Table) -> None:
    """Raise `TableError` (naming the key) unless the table serves every sub-network at its resolutions."""
    from .tables import TableError, LatencyModel as _LM
    bad = [r for r in table if r not in spec.resolutions]
    if bad:
        raise TableError(f"resolution {bad[0]} is not a resolution of {spec.name} ({list(spec.resolutions)})",
                         key=f"resolutions.{bad[0]}")
    lat = _optional("ofa_core.latency")
    if lat is not None and hasattr(lat, "LatencyTable"):
        try:
            lat.LatencyTable(spec, {r: {k: {"count": c, "mean": m, "std": s} for k, (c, m, s) in t.items()}
                                    for r, t in table.items()})
        except lat.LatencyTableError as e:
            msg = str(e)
            m = __import__("re").search(r"key '([^']+)'", msg) or __import__("re").search(r"(expanded_conv-\S+|Conv\S*-\S+|AvgPool2D-\S+|Logits-\S+)", msg)
            raise TableError(msg, key=m.group(1) if m else None) from None
        return
    m = _LM(spec, table)
    for r in sorted(table):
        missing = m.missing_keys(r)
        if missing:
            raise TableError(f"r={r}: missing operator key {missing[0]!r} ({len(missing)} missing)", key=missing[0])


class CoreLatency:
    """ofa_core.latency.LatencyTable behind the LatencyModel interface (callable, resolutions, minimum)."""

    def __init__(self, spec: SupernetSpec, table: Table):
        lat = importlib.import_module("ofa_core.latency")
        self.table = table
        self.core = lat.LatencyTable(spec, {r: {k: {"count": c, "mean": m, "std": s} for k, (c, m, s) in t.items()}
                                            for r, t in table.items()})
        self.resolutions = sorted(int(r) for r in table)

    def __call__(self, enc):
        return self.core.predict(np.asarray(enc))

    def minimum(self, resolutions):
        return self.core.minimum(resolutions)[0]


def make_latency(spec: SupernetSpec, table: Table):
    if _optional("ofa_core.latency") is not None:
        try:
            return CoreLatency(spec, table)
        except Exception:
            log.warning("ofa_core.latency rejected a stored table; using the fallback model", exc_info=True)
    return LatencyModel(spec, table)
