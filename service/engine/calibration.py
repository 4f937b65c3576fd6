"""A supernet's BN-calibration and evaluation images (paths from settings, else the ones packaged with it) and
the measurement of one sub-network on them, as glue over `ofa_core.measure`.

Keys: ``calib_key`` names the calibration set *and* how it is used (file sha256, images, batch size, seed,
transforms, normalisation); stored statistics are looked up by (sub-network, supernet version, calib_key), so a
changed file or recipe is recalibrated, never confused with an old result. ``eval_key`` likewise for the
evaluation set. The images are decoded on first use (workers only; the API needs the keys alone).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from ofa_core.bn import bn_stats_from_bytes
from ofa_core.data import ImageArray
from ofa_core.imagepack import check_image_set, image_set_sha256, load_image_set, packaged_sets
from ofa_core.measure import BNRecipe, Measurement, measure_subnet, preprocessing, set_key
from ofa_core.spec import SubnetConfig, SupernetSpec

CALIB_SETTING = "OFA_CALIBRATION_DATA"
EVAL_SETTING = "OFA_EVALUATION_DATA"


@dataclass
class ServedBN:
    """Recalibrated statistics to put into a download, with what the file's metadata says about them."""
    key: str
    stats: dict
    metadata: dict[str, str] = field(default_factory=dict)


def uncalibrated_metadata() -> dict[str, str]:
    return {"bn_calibrated": "false", "bn_calibration_setting": CALIB_SETTING}


class ImageSets:
    """Calibration (required for recalibration) and evaluation (optional) images of one supernet."""

    def __init__(self, spec: SupernetSpec, calib_path: str | None, eval_path: str | None,
                 recipe: BNRecipe = BNRecipe(), eval_max: int = 10000):
        self.spec, self.recipe, self.eval_max = spec, recipe, eval_max
        self.calib_path, self.eval_path = calib_path or None, eval_path or None
        self.preprocess = preprocessing(spec)
        self.calib_sha = image_set_sha256(self.calib_path) if self.calib_path else None
        self.eval_sha = image_set_sha256(self.eval_path) if self.eval_path else None
        self.calib_key = (set_key(self.calib_sha, use="bn", preprocess=self.preprocess, **recipe.to_dict())
                          if self.calib_sha else None)
        self.eval_key = (set_key(self.eval_sha, use="top1", max_images=eval_max, preprocess=self.preprocess)
                         if self.eval_sha else None)
        self._data: dict[str, ImageArray] = {}
        self._lock = threading.Lock()
        self.error: str | None = None     # configured images that failed to load (the store sets it)

    @classmethod
    def from_settings(cls, spec: SupernetSpec, settings) -> "ImageSets":
        packaged = packaged_sets(spec.name)
        calib = settings.calibration_data.get(spec.name, packaged["calibration"])
        evaluation = settings.evaluation_data.get(spec.name, packaged["evaluation"])
        for what, path, env in (("calibration", calib, CALIB_SETTING), ("evaluation", evaluation, EVAL_SETTING)):
            if path and not os.path.exists(path):
                raise FileNotFoundError(f"{what} images {path!r} ({env}) do not exist")
            if path and path.endswith(".npz"):
                check_image_set(path)       # readable, the right arrays (not decoded here)
        recipe = BNRecipe(n_images=settings.calibration_images, batch_size=settings.calibration_batch_size)
        return cls(spec, calib, evaluation, recipe, settings.evaluation_max_images)

    @property
    def configured(self) -> bool:
        return self.calib_key is not None

    def _load(self, which: str) -> ImageArray:
        with self._lock:
            if which not in self._data:
                path = self.calib_path if which == "calibration" else self.eval_path
                data = load_image_set(path, image_size=max(self.spec.resolutions))
                if len(data.classes) != self.spec.n_classes:
                    raise ValueError(f"{which} images {path!r} have {len(data.classes)} classes, the supernet "
                                     f"{self.spec.n_classes}")
                if which == "evaluation" and len(data) > self.eval_max:
                    data = data.sample(self.eval_max, seed=0)
                self._data[which] = data
            return self._data[which]

    def measure(self, supernet, cfg: SubnetConfig, with_eval: bool = True) -> Measurement:
        evaluation = self._load("evaluation") if (with_eval and self.eval_key) else None
        return measure_subnet(supernet, cfg, self._load("calibration"), evaluation, self.recipe)

    def describe(self) -> dict[str, Any]:
        def one(path, sha, key):
            return None if not path else {"file": os.path.basename(path.rstrip("/")), "sha256": sha, "key": key}
        return {"calibration": None if not self.calib_path else
                {**one(self.calib_path, self.calib_sha, self.calib_key), **self.recipe.to_dict()},
                "evaluation": one(self.eval_path, self.eval_sha, self.eval_key), "preprocess": self.preprocess,
                "settings": [CALIB_SETTING, EVAL_SETTING]}

    def served(self, stats_blob: bytes, n_images: int) -> ServedBN:
        info = {"calib_key": self.calib_key, "file": os.path.basename(self.calib_path.rstrip("/")),
                "sha256": self.calib_sha, **self.recipe.to_dict(), "n_images": n_images}
        return ServedBN(self.calib_key, bn_stats_from_bytes(stats_blob),
                        {"bn_calibrated": "true", "bn_calibration": json.dumps(info, separators=(",", ":")),
                         "preprocess": json.dumps(self.preprocess, separators=(",", ":"))})
