"""In-memory supernet store: the registered supernets (weights per config; never downloaded) and their
predictors, kept in memory; sub-network weights are streamed from them via ofa_core."""
from __future__ import annotations

import logging
import os
import threading

from sqlalchemy.exc import IntegrityError

from ofa_core.fileio import copy_replacing
from ofa_core.spec import get_spec
from service.engine.adapter import SupernetEngine
from service.engine.calibration import ImageSets
from service.errors import SupernetNotFound, WeightsMissing
from service.settings import Settings
from . import repository

log = logging.getLogger("ofa.store")
PREDICTOR_EXTENSIONS = (".safetensors", ".pth")


def registered_predictor(var_dir: str, name: str) -> str | None:
    """A predictor registered with `ofa register-predictor` (kept in the data directory), if any."""
    for ext in PREDICTOR_EXTENSIONS:
        path = os.path.join(var_dir, "predictors", name + ext)
        if os.path.exists(path):
            return path
    return None


def register_predictor_file(var_dir: str, supernet: str, path: str) -> str:
    """Copy a predictor file into the data directory as the one registered for `supernet` (replacing any other
    registered one, atomically): where the service and its workers find it unless OFA_PREDICTORS names another.
    Returns the registered path. The caller has checked that the file is a predictor for that supernet."""
    ext = os.path.splitext(path)[1]
    if ext not in PREDICTOR_EXTENSIONS:
        raise ValueError(f"{path}: a predictor is a .safetensors file or the published .pth")
    folder = os.path.join(var_dir, "predictors")
    os.makedirs(folder, exist_ok=True)
    dest = os.path.join(folder, supernet + ext)
    copy_replacing(path, dest)
    for old in PREDICTOR_EXTENSIONS:
        if old != ext and os.path.exists(os.path.join(folder, supernet + old)):
            os.remove(os.path.join(folder, supernet + old))
    return dest


class SupernetStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engines: dict[str, SupernetEngine] = {}
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self.loaded = False

    def load(self) -> "SupernetStore":
        for name in self.settings.supernets:
            try:
                spec = get_spec(name)
            except KeyError as e:
                self.errors[name] = str(e)
                log.error("unknown supernet in OFA_SUPERNETS", extra={"supernet": name})
                continue
            weights = self.settings.weights.get(name) or spec.resolve_weights()
            # OFA_PREDICTORS, else one registered in the data directory (`ofa register-predictor`, a trained
            # one), else the supernet's committed default
            predictor = (self.settings.predictors.get(name) or registered_predictor(self.settings.var_dir, name)
                         or spec.predictor_path)
            try:
                eng = SupernetEngine(spec, weights, predictor)
            except Exception as e:  # a corrupt file must not stop the service; report it instead
                log.exception("supernet failed to load", extra={"supernet": name})
                self.errors[name] = f"{type(e).__name__}: {e}"
                eng = SupernetEngine(spec, None, None)
            try:   # BN-calibration / evaluation images (settings, else packaged): keys now, decoded on first use
                eng.image_sets = ImageSets.from_settings(spec, self.settings)
            except Exception as e:
                log.exception("calibration images failed to load", extra={"supernet": name})
                self.errors[name] = f"calibration images: {type(e).__name__}: {e}"
                eng.image_sets = ImageSets(spec, None, None)
                eng.image_sets.error = f"{type(e).__name__}: {e}"   # downloads refuse (409) rather than serve uncalibrated
            self.engines[name] = eng
            log.info("supernet registered", extra={"supernet": name, "version": eng.version,
                                                   "weights": weights if eng.has_weights else None,
                                                   "predictor": predictor if eng.search_ready else None})
        self.loaded = True
        return self

    def sync_db(self, db) -> None:
        """Record the registered supernets in the database (idempotent)."""
        for name, eng in self.engines.items():
            for _ in range(3):
                try:
                    with db.session() as s:
                        repository.upsert(s, name, eng.version, eng.spec.to_dict(), eng.weights_path, eng.predictor_path)
                    break
                except IntegrityError:
                    continue

    def get(self, name: str) -> SupernetEngine:
        eng = self.engines.get(name)
        if eng is None:
            raise SupernetNotFound(name, sorted(self.engines))
        if not eng.search_ready and not self.settings.predictors.get(name):
            eng = self._pick_up_predictor(name, eng)
        return eng

    def _pick_up_predictor(self, name: str, eng: SupernetEngine) -> SupernetEngine:
        """A predictor registered (`ofa register-predictor`) while this process runs is loaded on first use."""
        path = registered_predictor(self.settings.var_dir, name)
        if path is None:
            return eng
        with self._lock:
            if self.engines[name].search_ready:
                return self.engines[name]
            try:
                new = SupernetEngine(eng.spec, eng.weights_path, path)
            except Exception as e:
                self.errors[name] = f"{type(e).__name__}: {e}"
                return eng
            if hasattr(eng, "image_sets"):
                new.image_sets = eng.image_sets
            self.engines[name] = new
            log.info("registered predictor loaded", extra={"supernet": name, "predictor": path})
            return new

    def require_weights(self, name: str) -> SupernetEngine:
        eng = self.get(name)
        if not eng.has_weights:
            path = eng.weights_path or eng.spec.resolve_weights()
            raise WeightsMissing(name, path if path else None, eng.spec.weights_env)
        return eng

    def describe(self, name: str) -> dict:
        eng = self.get(name)
        return {"name": name, "version": eng.version, "default": name == self.settings.default_supernet,
                "has_weights": eng.has_weights, "search_ready": eng.search_ready,
                "weights_file": eng.weights_path, "predictor_file": eng.predictor_path,
                "weights_env": eng.spec.weights_env, "load_error": self.errors.get(name),
                "bn_calibration": eng.image_sets.describe() if getattr(eng, "image_sets", None) else None,
                "spec": eng.spec.to_dict()}
