from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from pydantic import ValidationError

from service.auth.service import ApiKeyDep
from service.db.session import SessionDep
from service.deps import SettingsDep, StoreDep
from service.engine import tables as T
from service.errors import DeviceNotFound, MalformedTable, PayloadTooLarge, ValidationFailed
from service.jobs import queue as Q
from service.openapi import errors
from service.validation import MAX_DB_INT, check_name, check_text
from . import calibration
from . import repository as repo
from . import service
from .schemas import DeviceOut, DevicePage, SuggestOut, TimingsIn

router = APIRouter(prefix="/devices", tags=["devices"])
TABLE_BODY = {"requestBody": {"content": {
    "application/yaml": {"schema": {"type": "string"}, "example": "Conv-input:32x32x3-output:16x16x8:\n  count: 10\n  mean: 0.05\n  std: 0.001\n..."},
    "application/json": {"schema": {"type": "object"}, "example": {"resolutions": {"32": {"Conv-input:32x32x3-output:16x16x8": {"count": 10, "mean": 0.05, "std": 0.001}}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "name": {"type": "string"}, "supernet": {"type": "string"}, "description": {"type": "string"}}},
        "example": {"name": "example-upload", "supernet": "ofa_mbv3_cifar10",
                    "description": "one <r>_lookup_table.yaml per resolution (pick the files)"}}}}}
TIMINGS_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["timings"], "properties": {
        "timings": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["config", "latency_ms"],
                                                              "properties": {"config": {"type": "object"},
                                                                             "latency_ms": {"type": "number",
                                                                                            "exclusiveMinimum": 0}}}},
        "description": {"type": "string"},
        "batch_size": {"type": "integer", "minimum": 1, "description": "batch the timings were taken at"},
        "supernet": {"type": "string", "description": "with ?create=true: the new device's supernet"},
        "resolutions": {"type": "array", "items": {"type": "integer"},
                        "description": "resolutions of the table when there is no prior table"}}},
    "example": TimingsIn.model_config["json_schema_extra"]["examples"][0]}}}}
TABLE_TEXT = {"application/yaml": {"example": "resolutions:\n  '32':\n    Conv-input:32x32x3-output:16x16x8:\n"
                                              "      count: 10\n      mean: 0.05\n      std: 0.001\n"},
              "application/json": {"example": {"resolutions": {"32": {"Conv-input:32x32x3-output:16x16x8": {
                  "count": 10, "mean": 0.05, "std": 0.001}}}}}}


async def _read_limited(request: Request, limit: int) -> bytes:
    cl = request.headers.get("content-length")
    if cl and cl.isdigit() and int(cl) > limit:
        raise PayloadTooLarge(int(cl), limit)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(len(buf), limit)
    return bytes(buf)


def _fmt(content_type: str, fmt: str | None, filename: str | None = None) -> str | None:
    if fmt:
        return fmt
    if "json" in content_type or (filename or "").endswith(".json"):
        return "json"
    if "yaml" in content_type or (filename or "").endswith((".yaml", ".yml")):
        return "yaml"
    return None


async def _table_docs(request: Request, limit: int, fmt: str | None) -> tuple[list, dict]:
    """(docs, form fields) from a raw YAML/JSON body or a multipart upload of one or more files."""
    ct = request.headers.get("content-type", "")
    if ct.startswith("multipart/form-data"):
        cl = request.headers.get("content-length")
        if cl and cl.isdigit() and int(cl) > limit:
            raise PayloadTooLarge(int(cl), limit)
        form = await request.form(max_part_size=limit)
        docs, fields, total = [], {}, 0
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                data = await value.read()
                total += len(data)
                if total > limit:
                    raise PayloadTooLarge(total, limit)
                docs.append((data, _fmt(value.content_type or "", fmt, value.filename), value.filename))
            else:
                fields[key] = value
        if not docs:
            raise ValidationFailed("file", "no table file in the upload")
        return docs, fields
    data = await _read_limited(request, limit)
    if not data.strip():
        raise ValidationFailed("body", "empty body; send the table as YAML or JSON")
    return [(data, _fmt(ct, fmt), None)], {}


def _batch(fields: dict, batch_size: int | None) -> int:
    """The upload's batch size: the multipart field or the query parameter, default 1."""
    raw = fields.get("batch_size", batch_size)
    try:
        b = int(raw) if raw is not None else 1
    except (TypeError, ValueError):
        raise ValidationFailed("batch_size", f"must be an integer, got {str(raw)[:40]!r}") from None
    if not 1 <= b <= 4096:
        raise ValidationFailed("batch_size", f"must be between 1 and 4096, got {b}")
    return b


def _enqueue_front(request: Request, device_id: int, table_id: int, supernet: str) -> None:
    Q.publish_front(request.app.state.celery, request.app.state.settings, device_id, table_id, supernet)


@router.get("", response_model=DevicePage, summary="List devices")
def list_devices(s: SessionDep, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_DB_INT),
                 supernet: str | None = Query(None, max_length=128),
                 q: str | None = Query(None, max_length=128, description="name contains"),
                 kind: str | None = Query(None, max_length=32, description="uploaded | calibrated | profiled")):
    """Devices by name, filtered by supernet, name substring and kind; paginated."""
    rows, total = repo.list_devices(s, offset, limit, supernet, q, kind)
    return DevicePage(items=[service.device_out(s, d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{name}", response_model=DeviceOut, summary="Get a device", responses=errors(404))
def get_device(name: str, s: SessionDep):
    """A device with its table versions and the stored Pareto front of the current one."""
    return service.device_out(s, service.get_device(s, name), detail=True)


@router.get("/{name}/latency-table", response_class=PlainTextResponse, summary="Download a latency table",
            responses={200: {"content": TABLE_TEXT}, **errors(404, 422)})
def get_table(name: str, s: SessionDep, format: Literal["yaml", "json"] = "yaml",
              version: int | None = Query(None, ge=1, le=MAX_DB_INT)):
    """The current (or a given) table version as YAML or JSON; re-uploads as an equal table."""
    d = service.get_device(s, name)
    t = repo.table_version(s, d, version) if version else repo.current_table(s, d)
    if t is None:
        raise ValidationFailed("version", f"device {name!r} has no table version {version}")
    text = T.dump(repo.load_entries(s, t.id), format)
    return PlainTextResponse(text, media_type="application/json" if format == "json" else "application/yaml",
                             headers={"ETag": f'"{t.sha256}"', "X-Table-Version": str(t.version)})


@router.post("", status_code=201, response_model=DeviceOut, openapi_extra=TABLE_BODY, summary="Register a device",
             responses=errors(401, 404, 409, 413, 422))
async def create_device(request: Request, s: SessionDep, store: StoreDep, settings: SettingsDep, _key: ApiKeyDep,
                        name: str | None = None, supernet: str | None = None, description: str = "",
                        format: Literal["yaml", "json"] | None = None,
                        batch_size: int | None = Query(None, ge=1, le=4096, description="the batch the table was timed at "
                                                                                   "(ms per batch; default 1)")):
    """Register a device with its latency table: raw YAML/JSON body (query `name`, `supernet`) or multipart
    with one `<r>_lookup_table.yaml` file per resolution (form fields `name`, `supernet`, `description`)."""
    docs, fields = await _table_docs(request, settings.max_table_bytes, format)

    def work():   # parsing, validation, the database and the broker: off the event loop
        name_ = check_name("name", fields.get("name") or name or "")
        supernet_ = check_text("supernet", fields.get("supernet") or supernet or settings.default_supernet, 128)
        desc = check_text("description", fields.get("description", description))
        table = service.parse_upload(store, supernet_, docs)
        d, t = service.create_device(s, store, name_, supernet_, desc, table, batch_size=_batch(fields, batch_size))
        _enqueue_front(request, d.id, t.id, supernet_)
        return service.device_out(s, d, detail=True)
    return await run_in_threadpool(work)


@router.put("/{name}", response_model=DeviceOut, openapi_extra=TABLE_BODY, summary="Upload a new table version",
            responses=errors(401, 404, 413, 422))
async def new_version(name: str, request: Request, s: SessionDep, store: StoreDep, settings: SettingsDep,
                      _key: ApiKeyDep, description: str | None = None, format: Literal["yaml", "json"] | None = None,
                      batch_size: int | None = Query(None, ge=1, le=4096, description="the batch the table was timed at "
                                                                                   "(ms per batch; default 1)")):
    """Upload a new table version; jobs already created keep the version they were created with."""
    d = await run_in_threadpool(service.get_device, s, name)
    docs, fields = await _table_docs(request, settings.max_table_bytes, format)

    def work():   # parsing, validation, the database and the broker: off the event loop
        desc = check_text("description", fields.get("description", description))
        table = service.parse_upload(store, d.supernet.name, docs)
        t = service.add_version(s, d, table, "uploaded", {}, desc, batch_size=_batch(fields, batch_size))
        _enqueue_front(request, d.id, t.id, d.supernet.name)
        return service.device_out(s, d, detail=True)
    return await run_in_threadpool(work)


@router.post("/{name}/timings", response_model=DeviceOut, status_code=201, openapi_extra=TIMINGS_BODY,
             summary="Calibrate from whole-network timings", responses=errors(401, 404, 409, 413, 422))
async def timings(name: str, request: Request, s: SessionDep, store: StoreDep, settings: SettingsDep,
                  _key: ApiKeyDep, create: bool = Query(False, description="create the device from these timings "
                                                                         "alone (cost-model prior) if it is new")):
    """Whole-network timings `{"timings": [{"config": {...}, "latency_ms": x}, ...], "batch_size": 1}` -> a
    calibrated table version at that batch size (ms per batch). The timings are stored with the device and every
    calibration refits on all of them (ofa_core.calibrate: cost-model basis + hierarchical per-family and
    per-operator residual, prior chosen by cross-validation between the cost model and the newest uncalibrated
    table at that batch size). The version's provenance records N, the method and the 5-fold cross-validated
    held-out agreement. With `?create=true` a new device (body field `supernet`, default the service's) is
    created from the timings alone."""
    data = await _read_limited(request, settings.max_timings_bytes)
    return await run_in_threadpool(_timings_work, request, s, store, settings, name, data, create)


def _timings_work(request: Request, s, store, settings, name: str, data: bytes, create: bool = False):
    """POST /devices/{name}/timings after the body is read: parse, fit, store (in a worker thread)."""
    try:
        doc = T.load_document(data)
    except T.TableError as e:
        raise MalformedTable(f"timings do not parse: {e.message}", line=e.line) from None
    try:
        body = TimingsIn.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        raise ValidationFailed(".".join(str(p) for p in err["loc"]) or "body", err["msg"]) from None
    check_text("description", body.description)
    d = repo.get_by_name(s, name)
    if d is None and create:
        d, t = service.create_from_timings(store, s, name, body.supernet or settings.default_supernet, body)
    else:
        d = service.get_device(s, name)
        if body.supernet and body.supernet != d.supernet.name:
            raise ValidationFailed("supernet", f"device {name!r} is for supernet {d.supernet.name!r}")
        t = service.calibrate(store, s, d, body)
    _enqueue_front(request, d.id, t.id, d.supernet.name)
    return service.device_out(s, d, detail=True)


@router.get("/{name}/timings/suggest", response_model=SuggestOut, summary="Which configs to time next",
            responses=errors(404, 422))
def suggest_timings(name: str, s: SessionDep, store: StoreDep, settings: SettingsDep,
                    n: int = Query(20, ge=1, le=200), batch_size: int | None = Query(None, ge=1, le=4096),
                    seed: int = Query(0, ge=0, le=2**31 - 1),
                    supernet: str | None = Query(None, max_length=128, description="for a device not created yet")):
    """The `n` configs whose timings would teach the calibration model most: greedily the largest reduction of
    its summed relative predictive variance over 2,000 random configs, each pick conditioned on the previous
    picks and on the timings already stored, so they spread over the operator families. Time them (ms per batch of `batch_size`) and post them to
    `POST /devices/{name}/timings` (with `?create=true` for a new device; give `supernet` here for one)."""
    d = repo.get_by_name(s, name)
    if d is None and supernet is None:
        raise DeviceNotFound(name)
    if d is not None and supernet is not None and supernet != d.supernet.name:
        raise ValidationFailed("supernet", f"device {name!r} is for supernet {d.supernet.name!r}")
    out = calibration.suggest(store, s, d, supernet or d.supernet.name, n, batch_size, seed)
    out["device"] = name
    return out
