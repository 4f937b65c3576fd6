"""Image data for training and evaluation: ImageFolder trees or .tar.gz archives of them, held in memory as
uint8 arrays, with batched (vectorized) augmentation in torch.

Archives are read member by member with tarfile (no extraction to disk, no path traversal possible); only
regular image files under ``<split>/<class>/`` are read. Decoded arrays can be cached as ``.npz``.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from .fileio import replacing
from PIL import Image
from tqdm import tqdm

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class ImageArray:
    """Images (N, H, W, 3) uint8 and labels (N,) int64 with class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "ImageArray":
        return ImageArray(self.images[idx], self.labels[idx], self.classes)

    def mirrored(self) -> "ImageArray":
        """The same images flipped left-right (same labels)."""
        return ImageArray(np.ascontiguousarray(self.images[:, :, ::-1]), self.labels, self.classes)

    def sample(self, n: int, seed: int = 0) -> "ImageArray":
        """A seeded random subset of n images (files are often stored class by class, so never take the
        first n)."""
        if n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).permutation(len(self))[:n]))


def _decode(data: bytes, size: int | None) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _assemble(items: list[tuple[str, np.ndarray]], classes: list[str] | None) -> ImageArray:
    if not items:
        raise ValueError("no images found")
    classes = classes or sorted({c for c, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    shapes = {a.shape for _, a in items}
    if len(shapes) != 1:
        raise ValueError(f"images have different sizes {sorted(shapes)[:3]}; pass image_size to resize")
    return ImageArray(np.stack([a for _, a in items]), np.asarray([index[c] for c, _ in items], dtype=np.int64),
                      classes)


def load_image_folder(root: str, image_size: int | None = None, progress: bool = True) -> ImageArray:
    """An ImageFolder tree: ``root/<class>/<image>``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"not a directory: {root}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    files = [(c, os.path.join(root, c, f)) for c in classes for f in sorted(os.listdir(os.path.join(root, c)))
             if f.lower().endswith(IMAGE_EXTS)]
    items = []
    for c, path in tqdm(files, desc=f"decode {os.path.basename(root)}", disable=not progress, unit="img"):
        with open(path, "rb") as fh:
            items.append((c, _decode(fh.read(), image_size)))
    return _assemble(items, classes)


def load_image_tar(path: str, image_size: int | None = None, progress: bool = True) -> dict[str, ImageArray]:
    """A .tar(.gz) holding ``[prefix/]<split>/<class>/<image>`` -> {split: ImageArray}."""
    per_split: dict[str, list[tuple[str, np.ndarray]]] = {}
    with tarfile.open(path, "r:*") as tar:
        members = [m for m in tar if m.isfile() and m.name.lower().endswith(IMAGE_EXTS)]
        for m in tqdm(members, desc=f"decode {os.path.basename(path)}", disable=not progress, unit="img"):
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if len(parts) < 3 or ".." in parts:
                continue
            split, cls = parts[-3], parts[-2]
            per_split.setdefault(split, []).append((cls, _decode(tar.extractfile(m).read(), image_size)))
    if not per_split:
        raise ValueError(f"{path}: no <split>/<class>/<image> files found")
    classes = sorted({c for items in per_split.values() for c, _ in items})
    return {s: _assemble(items, classes) for s, items in per_split.items()}


def load_dataset(path: str, cache_dir: str | None = None, image_size: int | None = None,
                 progress: bool = True) -> dict[str, ImageArray]:
    """Load an archive or a directory with split folders (train/, test/ ...) or a plain ImageFolder ('train')."""
    cache = None
    if cache_dir:
        st = os.stat(path)
        cache = os.path.join(cache_dir, f"{os.path.basename(path.rstrip('/'))}-{int(st.st_mtime)}-{image_size}.npz")
        if os.path.exists(cache):
            with np.load(cache, allow_pickle=False) as z:
                classes = [str(c) for c in z["classes"]]
                return {s: ImageArray(z[f"{s}_x"], z[f"{s}_y"], classes)
                        for s in [k[:-2] for k in z.files if k.endswith("_x")]}
    if os.path.isdir(path):
        subdirs = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
        if subdirs and all(any(os.path.isdir(os.path.join(path, d, c)) for c in os.listdir(os.path.join(path, d)))
                           for d in subdirs):
            out = {d: load_image_folder(os.path.join(path, d), image_size, progress) for d in subdirs}
        else:
            out = {"train": load_image_folder(path, image_size, progress)}
    else:
        out = load_image_tar(path, image_size, progress)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        arrays = {f"{s}_{k}": v for s, a in out.items() for k, v in (("x", a.images), ("y", a.labels))}
        with replacing(cache, suffix=".npz") as tmp:
            np.savez(tmp, classes=np.asarray(next(iter(out.values())).classes), **arrays)
    return out


def holdout_split(data: ImageArray, n_holdout: int, seed: int = 0) -> tuple[ImageArray, ImageArray]:
    """A fixed, seeded split of a training set into (train, hold-out)."""
    if not 0 < n_holdout < len(data):
        raise ValueError(f"n_holdout must be in (0, {len(data)}), got {n_holdout}")
    perm = np.random.default_rng(seed).permutation(len(data))
    return data.subset(np.sort(perm[n_holdout:])), data.subset(np.sort(perm[:n_holdout]))


# ----------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------
class Normalizer:
    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, batched: (N, 3, H, W) -> (N, 3, H, W)."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])                     # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None, :])                     # (N, W)
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bidx = torch.arange(n)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]   # (N, H, W, 3)
    return out.permute(0, 3, 1, 2).contiguous()


def resize(x: torch.Tensor, r: int) -> torch.Tensor:
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < x.shape[-1])


def iterate_batches(data: ImageArray, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                    normalizer: Normalizer | None = None, drop_last: bool | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalised (N, 3, H, W) float batches and labels; train=True shuffles and augments (seeded)."""
    norm = normalizer or Normalizer()
    drop_last = train if drop_last is None else drop_last
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(len(data), generator=gen).numpy() if train else np.arange(len(data))
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        x = norm(torch.from_numpy(data.images[idx]))
        if train:
            x = augment(x, gen)
        yield x, torch.from_numpy(data.labels[idx])
