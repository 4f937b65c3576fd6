"""Load published OFA checkpoints (and our own safetensors files) into a supernet, with strict checks.

A published checkpoint is a torch pickle of ``{"state_dict": {...}, ...}`` (reference §1); older files say
``.mobile_inverted_conv.`` where newer ones say ``.conv.``. Loading is always ``weights_only=True``: a
checkpoint can never run code.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from typing import Any, BinaryIO, Mapping

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "filter_checkpoint", "check_state_dict", "load_published_checkpoint",
           "load_supernet_weights", "read_checkpoint_file"]

_LEGACY_RENAMES = ((".mobile_inverted_conv.", ".conv."),)
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the first offending keys."""

    def __init__(self, message: str, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 mismatched: list[tuple[str, tuple, tuple]] | None = None):
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []


def filter_checkpoint(checkpoint: Mapping[str, Any], model: nn.Module | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Normalise a loaded checkpoint into a plain state dict of this project's key layout (cf. timm's
    ``checkpoint_filter_fn``): unwrap ``{"state_dict": ...}`` (and ``model`` / ``state_dict_ema`` wrappers),
    strip ``module.`` / ``_orig_mod.`` prefixes (DataParallel, torch.compile), map legacy
    ``.mobile_inverted_conv.`` to ``.conv.``. When `model` is given, a missing ``num_batches_tracked``
    buffer (absent in very old files) is filled from the model; nothing else is invented.
    """
    sd: Any = checkpoint
    for _ in range(3):  # nested wrappers
        if isinstance(sd, Mapping) and not _looks_like_state_dict(sd):
            inner = next((sd[k] for k in _WRAPPER_KEYS if k in sd and isinstance(sd[k], Mapping)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"checkpoint is a {type(sd).__name__}, not a state dict")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(f"checkpoint key {k!r} is not a string")
        for pre in _PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
        for old, new in _LEGACY_RENAMES:
            k = k.replace(old, new)
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v
    if model is not None:
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked") and k not in out:
                out[k] = v.clone()
    return out


def _looks_like_state_dict(d: Mapping[str, Any]) -> bool:
    return len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Raise `CheckpointError` unless `state_dict` has exactly the model's keys with the model's shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(expected[k].shape), tuple(v.shape)) for k, v in state_dict.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:_SHOW])}"
                     + (f", ... (+{len(missing) - _SHOW} more)" if len(missing) > _SHOW else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:_SHOW])}"
                     + (f", ... (+{len(unexpected) - _SHOW} more)" if len(unexpected) > _SHOW else ""))
    if mismatched:
        shown = "; ".join(f"{k}: expected {list(a)}, got {list(b)}" for k, a, b in mismatched[:_SHOW])
        parts.append(f"{len(mismatched)} shape mismatch(es): {shown}"
                     + (f"; ... (+{len(mismatched) - _SHOW} more)" if len(mismatched) > _SHOW else ""))
    name = type(model).__name__
    spec = getattr(model, "spec", None)
    if spec is not None:
        name = f"{name} ({spec.name})"
    raise CheckpointError(f"checkpoint does not match {name}: " + " | ".join(parts),
                          missing, unexpected, mismatched)


def _torch_load(path_or_fileobj: str | os.PathLike | BinaryIO | bytes) -> Any:
    src = io.BytesIO(path_or_fileobj) if isinstance(path_or_fileobj, (bytes, bytearray, memoryview)) else path_or_fileobj
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception as e:  # unpickling refused / corrupt file
        raise CheckpointError(f"cannot read checkpoint: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


@torch.no_grad()
def _load_into(model: nn.Module, raw: Any) -> nn.Module:
    sd = filter_checkpoint(raw, model)
    check_state_dict(sd, model)
    model.load_state_dict(sd, strict=True)
    return model


def load_published_checkpoint(path_or_fileobj: str | os.PathLike | BinaryIO | bytes, supernet: nn.Module) -> nn.Module:
    """Load a published OFA checkpoint (torch pickle, ``{"state_dict": ...}`` or a bare state dict, new or
    legacy key names) into `supernet` in place, strictly; returns the supernet.

    Raises `CheckpointError` naming the first missing / unexpected keys and shape mismatches.
    """
    return _load_into(supernet, _torch_load(path_or_fileobj))


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """The raw content of a weights file, by extension: ``.safetensors`` or ``.pth/.pt/.tar`` (torch pickle,
    weights only)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except FileNotFoundError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    if ext in (".pth", ".pt", ".tar", ".ckpt", ".bin"):
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return _torch_load(path)
    raise CheckpointError(f"unsupported weights file extension {ext!r} ({path}); use .safetensors or .pth/.pt/.tar")


def load_supernet_weights(supernet: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a weights file into `supernet` (in place, strict), dispatching on the file extension."""
    return _load_into(supernet, read_checkpoint_file(path))
