"""Compact image-set files (``.npz``, read with ``allow_pickle=False``): the calibration and evaluation images that
ship with a supernet.

Two layouts are read:

* **encoded**: ``jpeg`` (uint8, every image's original file bytes back to back), ``offsets`` (int64, N + 1),
  ``labels`` (int64, N), ``classes`` (unicode, C). Images decode with PIL exactly as `ofa_core.data` decodes the
  archive they came from, so the arrays equal what ``load_dataset`` gives for the same files. CIFAR-10 JPEGs take
  ~0.9 KB each this way, decoded pixels ~2.8 KB even deflated.
* **pixels**: ``images`` (uint8, N x H x W x 3), ``labels``, ``classes``.

`load_image_set` also accepts an ImageFolder tree or a ``.tar(.gz)`` of one (the ``train`` split, or the only one).
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile

import numpy as np

from .data import ImageArray, _decode, load_dataset
from .fileio import replacing

__all__ = ["save_encoded", "load_image_set", "check_image_set", "image_set_sha256", "packaged_sets", "MAX_MEMBER_BYTES"]

_ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
_PACKAGED = {"ofa_mbv3_cifar10": ("ofa_mbv3_cifar10_bn_calib.npz", "ofa_mbv3_cifar10_eval.npz")}

MAX_MEMBER_BYTES = 512 * 1024 * 1024   # a compact file is small; refuse absurd arrays instead of allocating them


def save_encoded(path: str, encoded: list[bytes], labels: np.ndarray, classes: list[str], **extra: np.ndarray) -> str:
    """Write the encoded layout (deterministic bytes: fixed member order, no timestamps inside the arrays).
    Returns the file's sha256."""
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    arrays = {"jpeg": blob, "offsets": offsets, "labels": np.asarray(labels, dtype=np.int64),
              "classes": np.asarray(classes, dtype=np.str_), **extra}
    with replacing(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:   # JPEG does not deflate further
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    return image_set_sha256(path)


def packaged_sets(supernet: str) -> dict[str, str | None]:
    """The calibration and evaluation image files packaged with a registered supernet (None where there are
    none): {"calibration": path, "evaluation": path}."""
    names = _PACKAGED.get(supernet, (None, None))
    paths = [os.path.join(_ASSETS, n) if n and os.path.exists(os.path.join(_ASSETS, n)) else None for n in names]
    return {"calibration": paths[0], "evaluation": paths[1]}


def image_set_sha256(path: str) -> str:
    """sha256 of a file, or of a directory tree (relative paths and contents, in sorted order)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                h.update(os.path.relpath(p, path).encode() + b"\0")
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_image_set(path: str) -> None:
    """Raise ValueError unless `path` is a readable compact image set (arrays present; images not decoded)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz image set ({type(e).__name__}: {e})") from None
    if not {"labels", "classes"} <= names or not ("images" in names or {"jpeg", "offsets"} <= names):
        raise ValueError(f"{path}: an image set needs labels, classes and images (or jpeg + offsets) arrays")


def _load_npz(path: str, image_size: int | None) -> ImageArray:
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            info = z.zip.getinfo(f"{k}.npy")
            if info.file_size > MAX_MEMBER_BYTES:
                raise ValueError(f"{path}: member {k} is {info.file_size} bytes (limit {MAX_MEMBER_BYTES})")
        if "labels" not in z.files or "classes" not in z.files:
            raise ValueError(f"{path}: an image set needs 'labels' and 'classes' arrays")
        labels = z["labels"].astype(np.int64)
        classes = [str(c) for c in z["classes"]]
        if "images" in z.files:
            images = z["images"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
                raise ValueError(f"{path}: 'images' must be uint8 (N, H, W, 3) with N = len(labels)")
        elif "jpeg" in z.files and "offsets" in z.files:
            blob, off = z["jpeg"], z["offsets"]
            if len(off) != len(labels) + 1 or off[0] != 0 or off[-1] != len(blob) or np.any(np.diff(off) <= 0):
                raise ValueError(f"{path}: 'offsets' must be increasing, from 0 to len(jpeg), N + 1 entries")
            images = np.stack([_decode(blob[a:b].tobytes(), image_size) for a, b in zip(off[:-1], off[1:])])
        else:
            raise ValueError(f"{path}: expected 'images' or 'jpeg' + 'offsets' arrays")
    if len(labels) == 0:
        raise ValueError(f"{path}: no images")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{path}: labels outside [0, {len(classes)})")
    return ImageArray(images, labels, classes)


def load_image_set(path: str, image_size: int | None = None, split: str = "train") -> ImageArray:
    """An image set from a compact ``.npz``, an ImageFolder tree or a ``.tar(.gz)`` (split `split`, or the only
    split there is)."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    if path.endswith(".npz"):
        return _load_npz(path, image_size)
    splits = load_dataset(path, image_size=image_size, progress=False)
    if split in splits:
        return splits[split]
    if len(splits) == 1:
        return next(iter(splits.values()))
    raise ValueError(f"{path}: no split {split!r} (found {sorted(splits)})")
