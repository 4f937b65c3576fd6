"""Build the default supernet's packaged BN-calibration and evaluation images, reproducibly.

    python -m ofa_core.package_calib --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --out ofa_core/assets

The split is the one the default's training run uses (it trains on the rest): the archive's ``train`` split,
``holdout_split(train, 10000, seed=0)``; calibration = 2,000 of the training part (``sample(2000, seed=1)``),
evaluation = 2,000 of the hold-out part (``sample(2000, seed=2)``). No test image is included. Each image is
stored as its original JPEG bytes (see `ofa_core.imagepack`), and every stored image is checked to decode to
exactly the array ``load_dataset`` gives. Prints the model-card section (provenance and sha256).
"""
from __future__ import annotations

import argparse
import os
import tarfile

import numpy as np

from .data import IMAGE_EXTS, ImageArray, holdout_split, load_dataset
from .imagepack import image_set_sha256, load_image_set, save_encoded

CALIB_NAME = "ofa_mbv3_cifar10_bn_calib.npz"
EVAL_NAME = "ofa_mbv3_cifar10_eval.npz"
N_HOLDOUT, HOLDOUT_SEED, N_CALIB, CALIB_SEED, N_EVAL, EVAL_SEED = 10000, 0, 2000, 1, 2000, 2


def train_members(path: str) -> list[tuple[str, bytes]]:
    """The archive's ``train`` images in the order `ofa_core.data.load_image_tar` reads them."""
    out = []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            if not (m.isfile() and m.name.lower().endswith(IMAGE_EXTS)):
                continue
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if len(parts) < 3 or ".." in parts or parts[-3] != "train":
                continue
            out.append((m.name, tar.extractfile(m).read()))
    return out


def split_indices(train: ImageArray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the archive's train split) of the calibration and evaluation images, obtained by running
    the very same `holdout_split` / `sample` calls on an array of indices."""
    idx = ImageArray(np.arange(len(train)), train.labels, train.classes)
    rest, hold = holdout_split(idx, N_HOLDOUT, seed=HOLDOUT_SEED)
    return rest.sample(N_CALIB, seed=CALIB_SEED).images, hold.sample(N_EVAL, seed=EVAL_SEED).images


def build(data: str, out: str) -> dict[str, dict]:
    splits = load_dataset(data)
    train = splits["train"]
    rest, hold = holdout_split(train, N_HOLDOUT, seed=HOLDOUT_SEED)
    calib_ref, eval_ref = rest.sample(N_CALIB, seed=CALIB_SEED), hold.sample(N_EVAL, seed=EVAL_SEED)
    calib_idx, eval_idx = split_indices(train)
    assert not set(calib_idx.tolist()) & set(eval_idx.tolist()), "calibration and evaluation images overlap"
    members = train_members(data)
    if len(members) != len(train):
        raise RuntimeError(f"{len(members)} train members in the archive, load_dataset gave {len(train)}")
    info = {}
    for name, idx, ref in ((CALIB_NAME, calib_idx, calib_ref), (EVAL_NAME, eval_idx, eval_ref)):
        assert np.array_equal(train.images[idx], ref.images) and np.array_equal(train.labels[idx], ref.labels)
        names = [members[i][0] for i in idx]
        assert all(n.split("/")[-2] == train.classes[train.labels[i]] for n, i in zip(names, idx))
        path = os.path.join(out, name)
        sha = save_encoded(path, [members[i][1] for i in idx], train.labels[idx], train.classes,
                           source_index=idx.astype(np.int64), names=np.asarray(names, dtype=np.str_))
        back = load_image_set(path)
        if not (np.array_equal(back.images, ref.images) and np.array_equal(back.labels, ref.labels)):
            raise RuntimeError(f"{path}: decoded images differ from load_dataset's")
        info[name] = {"sha256": sha, "bytes": os.path.getsize(path), "n": len(idx),
                      "per_class": np.bincount(ref.labels, minlength=len(train.classes)).tolist()}
    info["_source"] = {"path": data, "sha256": image_set_sha256(data), "n_train": len(train),
                       "classes": train.classes}
    return info


def card_section(info: dict) -> str:
    src = info["_source"]
    c, e = info[CALIB_NAME], info[EVAL_NAME]
    return f"""## Calibration and evaluation images

Two image sets ship with the supernet, both drawn from the CIFAR-10 **training** split of
`cifar10-jpeg.tar.gz` (sha256 `{src['sha256']}`, {src['n_train']} training images; no test image is included).
The split is the training run's own: `holdout_split(train, {N_HOLDOUT}, seed={HOLDOUT_SEED})`; the run trains on the
other {src['n_train'] - N_HOLDOUT} images.

| file | use | images | drawn from | bytes | sha256 |
|---|---|---|---|---|---|
| `{CALIB_NAME}` | BN recalibration | {c['n']} | `train.sample({N_CALIB}, seed={CALIB_SEED})` of the training part | {c['bytes']} | `{c['sha256']}` |
| `{EVAL_NAME}` | `measured_accuracy` | {e['n']} | `hold.sample({N_EVAL}, seed={EVAL_SEED})` of the hold-out part | {e['bytes']} | `{e['sha256']}` |

Each file is an `.npz` (read with `allow_pickle=False`) holding every image's original JPEG bytes (`jpeg`,
`offsets`), `labels`, `classes`, `source_index` (index in the archive's train split) and `names` (archive member).
Rebuild them with `python -m ofa_core.package_calib --data ../shared/data/cifar10/cifar10-jpeg.tar.gz --out
ofa_core/assets` (it checks that every stored image decodes to the array `ofa_core.data.load_dataset` gives).
Per-class counts: calibration {c['per_class']}, evaluation {e['per_class']}.

BN recalibration: a sub-network's BN running statistics are not the supernet's, so before it is served (or
evaluated) each BN layer's mean and biased variance are re-estimated over the {c['n']} calibration images
(training transforms: random crop with 4-pixel padding and flip, seed 0, batches of 200, resized to the
sub-network's resolution), averaged over batches weighted by batch size, as the published
`set_running_statistics` does. `measured_accuracy` is the top-1 of the recalibrated sub-network on the {e['n']}
evaluation images (pixels / 255, normalised with mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616),
bilinear resize to the resolution, antialiased when shrinking).
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/cifar10/cifar10-jpeg.tar.gz")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets"))
    a = p.parse_args(argv)
    info = build(a.data, a.out)
    print(card_section(info))


if __name__ == "__main__":
    main()
