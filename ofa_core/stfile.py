"""safetensors files written by this project: `SafetensorsStream` lays a state dict out tensor by tensor in
its own order with a fixed JSON header (the same bytes every time for the same tensors and metadata), for
streaming downloads and for the files the recipe ships; `save_safetensors` writes one to disk atomically."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from typing import Any, Iterator, Mapping

import torch

from .fileio import replacing

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
SHA_KEY = "tensors_sha256"
_CHUNK = 1 << 20


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a contiguous CPU tensor, without copying."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class SafetensorsStream:
    """A safetensors file produced lazily, tensor by tensor.

    Layout: 8-byte little-endian header length N, N bytes of JSON header (``{name: {"dtype", "shape",
    "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, offsets relative to the data section,
    space-padded so the data section starts at a multiple of 8), then the tensors' bytes back to back in the
    order of `state_dict`.

    `total_size` is known on construction; `sha256` (of the whole file) is computed on first access by one
    streaming pass; `iter_bytes(start, end)` yields the bytes ``[start, end)``.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                 chunk_size: int = _CHUNK):
        self.chunk_size = int(chunk_size)
        self._tensors: list[tuple[str, torch.Tensor]] = []
        header: dict[str, Any] = {}
        offset = 0
        self._spans: list[tuple[int, int]] = []
        for name, t in state_dict.items():
            if not isinstance(name, str) or name == "__metadata__":
                raise ValueError(f"invalid tensor name {name!r}")
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
            if t.dtype not in SAFETENSORS_DTYPES:
                raise TypeError(f"{name}: dtype {t.dtype} not supported by safetensors export")
            t = t.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            if not t.is_contiguous():
                t = t.contiguous()
            n = t.numel() * t.element_size()
            header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [offset, offset + n]}
            self._tensors.append((name, t))
            self._spans.append((offset, offset + n))
            offset += n
        self.data_size = offset
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        h = hashlib.sha256()
        for _, t in self._tensors:
            h.update(_tensor_bytes(t))
        self.tensors_sha256 = h.hexdigest()
        meta[SHA_KEY] = self.tensors_sha256
        self.metadata = meta
        full_header = {"__metadata__": meta, **header}
        hb = json.dumps(full_header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
        hb += b" " * ((-(8 + len(hb))) % 8)
        self._head = struct.pack("<Q", len(hb)) + hb
        self.header_size = len(self._head)
        self.total_size = self.header_size + self.data_size
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """sha256 hex digest of the whole file (computed once, by streaming)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            for chunk in self.iter_bytes():
                h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    def __len__(self) -> int:
        return self.total_size

    def iter_bytes(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the file's bytes ``[start, end)`` (end exclusive; None = to the end) in chunks.

        For an HTTP ``Range: bytes=a-b`` (inclusive) call ``iter_bytes(a, b + 1)``.
        """
        end = self.total_size if end is None else int(end)
        start = int(start)
        if not (0 <= start <= end <= self.total_size):
            raise ValueError(f"invalid byte range [{start}, {end}) for a file of {self.total_size} bytes")
        if start >= end:
            return
        hs = self.header_size
        if start < hs:
            yield self._head[start:min(end, hs)]
        lo, hi = max(start - hs, 0), end - hs  # range inside the data section
        if hi <= 0:
            return
        cs = self.chunk_size
        for (name, t), (a, b) in zip(self._tensors, self._spans):
            if b <= lo or a == b:
                continue
            if a >= hi:
                break
            mv = _tensor_bytes(t)
            s, e = max(lo, a) - a, min(hi, b) - a
            while s < e:
                n = min(cs, e - s)
                yield bytes(mv[s:s + n])
                s += n

    def to_bytes(self) -> bytes:
        return b"".join(self.iter_bytes())

    def write_to(self, fileobj_or_path: str | os.PathLike | io.IOBase) -> int:
        if isinstance(fileobj_or_path, (str, os.PathLike)):
            with open(fileobj_or_path, "wb") as f:
                return self.write_to(f)
        n = 0
        for chunk in self.iter_bytes():
            fileobj_or_path.write(chunk)
            n += len(chunk)
        return n


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """`state_dict` as a safetensors file at `path`, replaced in one step. Unlike the safetensors package's
    writer, whose header order varies from run to run, the same tensors and metadata give the same bytes."""
    stream = SafetensorsStream(state_dict, metadata)
    with replacing(path) as tmp:
        stream.write_to(tmp)
