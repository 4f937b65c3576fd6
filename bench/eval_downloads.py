"""Score downloaded sub-networks on the CIFAR-10 test images with torch, safetensors and onnxruntime only.

    .venv/bin/python bench/eval_downloads.py runs/recal --data ../shared/data/cifar10/cifar10-jpeg.tar.gz

Standalone on purpose: nothing from this repository is imported. safetensors and .pt files are run by a small
functional MobileNetV3 written here from the file's own net.config (conv / BN / h-swish / SE as the published
OFA layers), TorchScript with `torch.jit.load`, ONNX with onnxruntime. Input: the archive's ``test/<class>/``
JPEGs decoded with PIL, pixels / 255, normalised with the mean / std in the safetensors metadata
(``preprocess``), bilinear resize to the sub-network's resolution (antialiased when shrinking).

Reads `manifest.json` written by `bench/bench_recalibration.py` (files per sub-network, calibrated and
uncalibrated) and prints top-1 per format, calibrated vs uncalibrated, and the difference to ofa_core's own
recalibrated evaluation of the same config where the manifest has it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import tarfile

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as st_load


# -- data ------------------------------------------------------------------------------------------------------
def load_test_split(path: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    items = []
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if m.isfile() and len(parts) >= 3 and parts[-3] == "test" and m.name.lower().endswith((".jpg", ".png")):
                items.append((parts[-2], tar.extractfile(m).read()))
    classes = sorted({c for c, _ in items})
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for _, b in items])
    return x, np.asarray([classes.index(c) for c, _ in items])


def preprocess(images: np.ndarray, mean, std, r: int) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    if x.shape[-1] != r:
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < x.shape[-1])
    return x


# -- a functional MobileNetV3 from net.config + state dict ----------------------------------------------------
def _act(x, name):
    return {"relu": F.relu, "relu6": F.relu6, "h_swish": F.hardswish, None: lambda t: t}[name](x)


def _bn(x, sd, p, eps):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        False, 0.0, eps)


def _conv_layer(x, sd, p, c, eps):
    x = F.conv2d(x, sd[p + "conv.weight"], sd.get(p + "conv.bias"), c["stride"], c["kernel_size"] // 2)
    if c.get("use_bn", True):
        x = _bn(x, sd, p + "bn.", eps)
    return _act(x, c.get("act_func"))


def _mbconv(x, sd, p, c, eps):
    act = c.get("act_func", "relu6")
    if p + "inverted_bottleneck.conv.weight" in sd:
        x = _act(_bn(F.conv2d(x, sd[p + "inverted_bottleneck.conv.weight"]), sd, p + "inverted_bottleneck.bn.", eps), act)
    w = sd[p + "depth_conv.conv.weight"]
    x = F.conv2d(x, w, None, c["stride"], w.shape[-1] // 2, 1, w.shape[0])
    x = _act(_bn(x, sd, p + "depth_conv.bn.", eps), act)
    if c.get("use_se"):
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(F.conv2d(s, sd[p + "depth_conv.se.fc.reduce.weight"], sd[p + "depth_conv.se.fc.reduce.bias"]))
        x = x * F.hardsigmoid(F.conv2d(s, sd[p + "depth_conv.se.fc.expand.weight"], sd[p + "depth_conv.se.fc.expand.bias"]))
    return _bn(F.conv2d(x, sd[p + "point_linear.conv.weight"]), sd, p + "point_linear.bn.", eps)


@torch.no_grad()
def mobilenetv3(x, sd: dict, net_config: dict) -> torch.Tensor:
    eps = float(net_config.get("bn", {}).get("eps", 1e-5))
    x = _conv_layer(x, sd, "first_conv.", net_config["first_conv"], eps)
    for i, b in enumerate(net_config["blocks"]):
        c = b.get("mobile_inverted_conv") or b["conv"]
        y = _mbconv(x, sd, f"blocks.{i}.conv.", c, eps)
        x = y + x if b.get("shortcut") else y
    x = _conv_layer(x, sd, "final_expand_layer.", net_config["final_expand_layer"], eps)
    x = _conv_layer(x.mean((2, 3), keepdim=True), sd, "feature_mix_layer.", net_config["feature_mix_layer"], eps)
    return F.linear(x.flatten(1), sd["classifier.linear.weight"], sd["classifier.linear.bias"])


# -- loading each format ---------------------------------------------------------------------------------------
def safetensors_metadata(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__", {})


def predictor(path: str, fmt: str, r: int):
    data = open(path, "rb").read()
    if fmt == "safetensors":
        sd, nc = st_load(data), json.loads(safetensors_metadata(data)["net_config"])
        return lambda x: mobilenetv3(x, sd, nc)
    if fmt == "pt":
        ck = torch.load(io.BytesIO(data), weights_only=True)
        return lambda x: mobilenetv3(x, ck["state_dict"], ck["net_config"])
    if fmt == "torchscript":
        m = torch.jit.load(io.BytesIO(data)).eval()
        return lambda x: m(x)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def top1(fn, images, labels, mean, std, r, batch=500) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = preprocess(images[i:i + batch], mean, std, r)
            correct += int((fn(x).argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / len(images)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="directory with manifest.json and the downloads")
    ap.add_argument("--data", default="../shared/data/cifar10/cifar10-jpeg.tar.gz")
    ap.add_argument("--limit", type=int, default=None, help="score on this many test images (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    manifest = json.load(open(os.path.join(a.dir, "manifest.json")))
    images, labels = load_test_split(a.data, a.limit)
    print(f"{len(images)} test images; top-1 per format (calibrated | uncalibrated); ofa_core = its own "
          "recalibrated evaluation of the config")
    print(f"{'subnet':26s} {'r':>3s} {'safetensors':>11s} {'pt':>7s} {'ts':>7s} {'onnx':>7s} | {'uncal':>7s} "
          f"{'ofa_core':>8s} {'max |d| pp':>10s}")
    worst = 0.0
    for e in manifest["subnets"]:
        r = e["image_size"]
        meta = safetensors_metadata(open(os.path.join(a.dir, e["files"]["calibrated"]["safetensors"]), "rb").read())
        pre = json.loads(meta.get("preprocess", '{"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}'))
        acc = {kind: {fmt: top1(predictor(os.path.join(a.dir, name), fmt, r), images, labels, pre["mean"], pre["std"], r)
                      for fmt, name in files.items()} for kind, files in e["files"].items()}
        cal, unc = acc["calibrated"], acc["uncalibrated"]
        ref = e.get("ofa_core_test_accuracy")
        d = max(abs(v - ref) for v in cal.values()) * 100 if ref is not None and a.limit is None else None
        worst = max(worst, d or 0.0)
        print(f"{e['subnet_id']:26s} {r:3d} {cal['safetensors']:11.4f} {cal['pt']:7.4f} {cal['torchscript']:7.4f} "
              f"{cal['onnx']:7.4f} | {max(unc.values()):7.4f} {'' if ref is None else f'{ref:8.4f}'} "
              f"{'' if d is None else f'{d:10.2f}'}")
        spread = max(unc.values()) - min(unc.values())
        if spread > 0.005:
            print(f"  uncalibrated formats disagree by {spread * 100:.2f} pp: {unc}")
    print(f"largest |calibrated download - ofa_core| over formats and sub-networks: {worst:.2f} pp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
