from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ofa_core.spec import SubnetConfig
from service.db.session import SessionDep
from service.calibration import service as calibration
from service.deps import CeleryDep, StoreDep
from service.errors import RangeNotSatisfiable, SubnetNotFound
from service.metrics import CHECKPOINT_BYTES
from service.openapi import errors, example
from service.supernets import repository as supernet_repo
from . import repository as repo

router = APIRouter(prefix="/subnets", tags=["subnets"])
_RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")   # longer numbers cannot be a range of a file here
CONFIG = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 32}
SUBNET = {"id": "9b1e0c4f2a7d", "supernet": "ofa_mbv3_cifar10", "config": CONFIG, "macs": 4100000, "params": 360000,
          "peak_memory_bytes": 98304, "predicted_accuracy": 0.7463, "measured_accuracy": 0.7395,
          "measured_images": 2000, "bn_calibrated": True, "pending": [],
          "bn_calibration": {"status": "ready", "calibration_images": 2000, "seconds": 1.9}, "checkpoint_available": True,
          "created_at": "2025-01-01T00:00:00+00:00",
          "links": {"checkpoint": "/subnets/9b1e0c4f2a7d/checkpoint?format=safetensors",
                    "net_config": "/subnets/9b1e0c4f2a7d/net.config"}}
NET_CONFIG = {"name": "MobileNetV3", "bn": {"momentum": 0.1, "eps": 1e-05}, "first_conv": {"name": "ConvLayer"},
              "blocks": [{"name": "ResidualBlock"}], "final_expand_layer": {"name": "ConvLayer"},
              "feature_mix_layer": {"name": "ConvLayer"}, "classifier": {"name": "LinearLayer", "out_features": 10}}


def _load(s, store, subnet_id: str):
    row = repo.get(s, subnet_id)
    if row is None:
        raise SubnetNotFound(subnet_id)
    sn = supernet_repo.get(s, row.supernet_id)
    eng = store.get(sn.name)
    return row, sn, eng, SubnetConfig.from_dict(eng.spec, row.config)


@router.get("/{subnet_id}", summary="Get a sub-network", responses={200: example(SUBNET), **errors(404)})
def get_subnet(subnet_id: str, s: SessionDep, store: StoreDep):
    """Configuration, costs, predicted accuracy and, where the supernet has evaluation images, the measured top-1
    after BN recalibration (`measured_accuracy`, `measured_images`; `pending` lists what a worker still computes)."""
    row, sn, eng, cfg = _load(s, store, subnet_id)
    return {"id": row.id, "supernet": sn.name, "config": row.config, "macs": row.macs, "params": row.params,
            "peak_memory_bytes": row.peak_memory_bytes,
            "predicted_accuracy": eng.predicted_accuracy(cfg),
            **calibration.fields(eng, calibration.lookup(s, eng, row.id)),
            "checkpoint_available": eng.has_weights,
            "created_at": row.created_at.isoformat(),
            "links": {"checkpoint": f"/subnets/{row.id}/checkpoint?format=safetensors",
                      "net_config": f"/subnets/{row.id}/net.config"}}


@router.get("/{subnet_id}/net.config", summary="Get the net.config", responses={200: example(NET_CONFIG), **errors(404)})
def net_config(subnet_id: str, s: SessionDep, store: StoreDep):
    """The published OFA `net.config` of the extracted network."""
    row, sn, eng, cfg = _load(s, store, subnet_id)
    return JSONResponse(eng.net_config(cfg), headers={"Content-Disposition": f'attachment; filename="{row.id}.net.config"'})


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range -> [start, end) ; None = whole body. Multi-range requests get the whole body."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m:
        return None
    a, b = m.groups()
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - n), size
    start = int(a)
    if b and int(b) < start:
        return None                 # invalid (last < first): ignored, the whole body (RFC 9110 14.1.1)
    end = min(int(b) + 1, size) if b else size
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match with weak comparison (RFC 9110 13.1.2): `*`, or any listed tag equal once W/ is dropped."""
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in [t[2:] if t.startswith("W/") else t for t in tags]


@router.api_route("/{subnet_id}/checkpoint", methods=["GET", "HEAD"], summary="Download the weights",
                  response_class=StreamingResponse, responses={
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": "weights (safetensors by default)"},
    206: {"description": "partial content for a Range request"},
    **errors(404, 409, 416, 503, e503={"code": "bn_calibration_pending", "subnet": "9b1e0c4f2a7d", "retry_after_s": 3,
                                     "message": "sub-network '9b1e0c4f2a7d': its BN statistics are being "
                                                "recalibrated on the calibration images; retry in about 3 s"},
             e409={"code": "weights_missing", "supernet": "ofa_mbv3_d234_e346_k357_w1.2",
                                  "message": "supernet 'ofa_mbv3_d234_e346_k357_w1.2' has no weights loaded; ..."})})
async def checkpoint(subnet_id: str, request: Request, s: SessionDep, store: StoreDep, celery: CeleryDep,
                     format: Literal["safetensors", "pt", "torchscript", "onnx"] = "safetensors"):
    """The sub-network's weights cut from the in-memory supernet: ETag = sha256, resumable with Range/If-Range.

    Where the supernet has calibration images, every format carries the sub-network's recalibrated BN statistics
    (`X-BN-Calibrated: true`); while a worker computes them the answer is **503 with Retry-After** (never the
    uncalibrated statistics; `curl --retry` retries it). Without calibration images the supernet's sliced
    statistics are served with `X-BN-Calibrated: false` and `X-BN-Calibration-Setting` naming the setting."""
    def prepare():    # the database (and the broker, for a pending calibration): off the event loop
        row, sn, eng, cfg = _load(s, store, subnet_id)
        store.require_weights(sn.name)
        return row, sn, eng, cfg, calibration.served_bn(s, eng, store.settings, celery, row.id)  # 503 if pending
    row, sn, eng, cfg, bn = await run_in_threadpool(prepare)
    art = await run_in_threadpool(eng.artifact, row.id, cfg, format, bn)
    size, etag = art.total_size, f'"{art.sha256}"'
    filename = f"{sn.name}-{row.id}.{art.extension}"
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"',
               "X-Content-SHA256": art.sha256, **calibration.headers(bn)}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    rng = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range and if_range.strip() != etag:
        rng = None
    span = _parse_range(rng, size)
    if request.method == "HEAD":     # the headers GET would send, Range included
        if span is None:
            return Response(headers={**headers, "Content-Length": str(size)}, media_type=art.media_type)
        return Response(status_code=206, media_type=art.media_type, headers={
            **headers, "Content-Length": str(span[1] - span[0]), "Content-Range": f"bytes {span[0]}-{span[1] - 1}/{size}"})
    if span is None:
        CHECKPOINT_BYTES.labels(format).inc(size)
        return StreamingResponse(art.iter_bytes(0, size), media_type=art.media_type,
                                 headers={**headers, "Content-Length": str(size)})
    start, end = span
    CHECKPOINT_BYTES.labels(format).inc(end - start)
    return StreamingResponse(art.iter_bytes(start, end), status_code=206, media_type=art.media_type,
                             headers={**headers, "Content-Length": str(end - start),
                                      "Content-Range": f"bytes {start}-{end - 1}/{size}"})
