"""Download formats of an extracted sub-network.

* **safetensors** (the default): written by `SafetensorsStream` tensor by tensor, without ever holding the
  whole file in memory; byte ranges supported (HTTP Range). The header's ``__metadata__`` carries the
  sub-network config, supernet name/version, the OFA net/run configs and ``tensors_sha256`` (sha256 of the
  data section, i.e. every byte after the header). `load_safetensors_checkpoint` verifies it.
* ``.pt``: ``torch.save({"state_dict", "net_config", "run_config"})`` (loadable with ``weights_only=True``).
* TorchScript (traced) and ONNX (opset 17) of the static network.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import warnings
from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn as nn

from .checkpoint import CheckpointError
from .extract import extract, extract_state_dict, net_config, run_config
from .jitscope import fresh_compilation_unit
from .mbv3 import OFAMobileNetV3
from .spec import SubnetConfig, SupernetSpec
from .stfile import _CHUNK, SAFETENSORS_DTYPES, SHA_KEY, SafetensorsStream

_DTYPES_BY_NAME = {v: k for k, v in SAFETENSORS_DTYPES.items()}

__all__ = ["SafetensorsStream", "subnet_metadata", "export_safetensors", "load_safetensors_checkpoint",
           "export_pt_bytes", "export_torchscript_bytes", "export_onnx_bytes", "SAFETENSORS_DTYPES"]


def subnet_metadata(spec: SupernetSpec, cfg: SubnetConfig, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """safetensors ``__metadata__`` (all strings) describing the sub-network `cfg` of `spec`."""
    meta = {
        "format": "pt",
        "supernet": spec.name,
        "supernet_version": str(spec.version),
        "config": cfg.to_json(),
        "content_id": cfg.content_id(),
        "net_config": json.dumps(net_config(spec, cfg), separators=(",", ":")),
        "run_config": json.dumps(run_config(cfg), separators=(",", ":")),
    }
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
    return meta


def export_safetensors(supernet: OFAMobileNetV3, cfg: SubnetConfig, extra_metadata: Mapping[str, Any] | None = None,
                       chunk_size: int = _CHUNK) -> SafetensorsStream:
    """The safetensors download of sub-network `cfg`, streamed directly from the supernet's tensors.

    The stream reads the supernet's storage lazily: do not modify the supernet while streaming.
    """
    return SafetensorsStream(extract_state_dict(supernet, cfg), subnet_metadata(supernet.spec, cfg, extra_metadata),
                             chunk_size=chunk_size)


def _parse_header(data: bytes | memoryview) -> tuple[dict, int]:
    if len(data) < 8:
        raise CheckpointError("not a safetensors file: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > len(data) - 8 or n > 100 * 1024 * 1024:
        raise CheckpointError(f"not a safetensors file: header length {n} exceeds the file")
    try:
        header = json.loads(bytes(data[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"not a safetensors file: bad header ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError("not a safetensors file: header is not an object")
    return header, 8 + n


def load_safetensors_checkpoint(bytes_or_path: bytes | bytearray | memoryview | str | os.PathLike,
                                verify: bool = True) -> tuple["OrderedDict[str, torch.Tensor]", dict[str, str]]:
    """(state dict in file order, metadata) of a safetensors file; with `verify`, the data section must
    match the ``tensors_sha256`` in the metadata (raises `CheckpointError` otherwise, or when it is absent)."""
    if isinstance(bytes_or_path, (str, os.PathLike)):
        with open(bytes_or_path, "rb") as f:
            data = f.read()
    else:
        data = bytes(bytes_or_path)
    header, data_start = _parse_header(data)
    meta = dict(header.get("__metadata__") or {})
    if verify:
        want = meta.get(SHA_KEY)
        if not want:
            raise CheckpointError(f"safetensors metadata has no {SHA_KEY}; cannot verify")
        got = hashlib.sha256(memoryview(data)[data_start:]).hexdigest()
        if got != want:
            raise CheckpointError(f"safetensors data sha256 mismatch: metadata says {want}, data is {got}")
    from safetensors.torch import load as st_load
    try:
        tensors = st_load(data)
    except Exception as e:
        raise CheckpointError(f"invalid safetensors file: {e}") from e
    order = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return OrderedDict((k, tensors[k]) for k in order), meta


def export_pt_bytes(supernet: OFAMobileNetV3, cfg: SubnetConfig, state_dict: Mapping[str, torch.Tensor] | None = None,
                    extra: Mapping[str, Any] | None = None) -> bytes:
    """``torch.save({"state_dict", "net_config", "run_config", **extra})`` of sub-network `cfg`, as bytes;
    `state_dict` (e.g. with recalibrated BN statistics) replaces the one cut from the supernet; `extra` holds
    plain values only (the file must stay loadable with ``weights_only=True``)."""
    if state_dict is None:
        sd = extract_state_dict(supernet, cfg, clone=True)  # owned tensors: torch.save would store whole storages
    else:
        sd = OrderedDict((k, v.detach().clone()) for k, v in state_dict.items())
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "net_config": net_config(supernet.spec, cfg), "run_config": run_config(cfg),
                **dict(extra or {})}, buf)
    return buf.getvalue()


def _as_static(model: nn.Module | OFAMobileNetV3, cfg: SubnetConfig | None) -> tuple[nn.Module, int]:
    if isinstance(model, OFAMobileNetV3):
        if cfg is None:
            raise ValueError("a config is needed to export from a supernet")
        return extract(model, cfg), cfg.r
    return model.eval(), (cfg.r if cfg is not None else 224)


def export_torchscript_bytes(model: nn.Module, cfg: SubnetConfig | None = None, image_size: int | None = None) -> bytes:
    """TorchScript (traced, eval mode) of a static network, or of sub-network `cfg` of a supernet. The bytes are
    a function of the network only (the same in every process)."""
    net, r = _as_static(model, cfg)
    r = image_size or r
    with torch.no_grad(), warnings.catch_warnings(), fresh_compilation_unit():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.zeros(1, 3, r, r), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def export_onnx_bytes(model: nn.Module, cfg: SubnetConfig | None = None, image_size: int | None = None,
                      opset: int = 17) -> bytes:
    """ONNX (opset >= 17, dynamic batch axis) of a static network, or of sub-network `cfg` of a supernet.

    Uses the TorchScript-based exporter (``dynamo=False``), falling back to the dynamo exporter.
    Input name ``input`` (N, 3, r, r), output name ``logits``.
    """
    if opset < 17:
        raise ValueError("opset must be >= 17")
    net, r = _as_static(model, cfg)
    r = image_size or r
    x = torch.zeros(1, 3, r, r)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x,), buf, opset_version=opset, dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception:
            prog = torch.onnx.export(net, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                     output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},))
            return prog.model_proto.SerializeToString()
    return buf.getvalue()
