"""`POST /supernets/{name}/predictor`: train an accuracy predictor from (config, accuracy) pairs (a worker task);
`GET /supernets/{name}/predictor/trainings/{id}`: its status and held-out metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.auth.service import KeyedCallerDep
from service.deps import CeleryDep, SettingsDep, StoreDep
from service.errors import NotFound, PayloadTooLarge
from . import repository as repo
from . import service
from .schemas import MAX_BODY, PredictorTrainIn, PredictorTrainingOut

router = APIRouter(prefix="/supernets", tags=["predictors"])
BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": PredictorTrainIn.model_json_schema(ref_template="#/components/schemas/{model}"),
    "example": PredictorTrainIn.model_config["json_schema_extra"]["examples"][0]}}}}


class TrainingNotFound(NotFound):
    code = "predictor_training_not_found"

    def __init__(self, training_id: str):
        super().__init__(f"no predictor training {training_id!r}", training_id=training_id)


async def _body(request: Request) -> PredictorTrainIn:
    cl = request.headers.get("content-length")
    if cl and cl.isdigit() and int(cl) > MAX_BODY:
        raise PayloadTooLarge(int(cl), MAX_BODY)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > MAX_BODY:
            raise PayloadTooLarge(len(buf), MAX_BODY)
    try:
        return PredictorTrainIn.model_validate_json(bytes(buf))
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


@router.post("/{name}/predictor", status_code=202, response_model=PredictorTrainingOut, openapi_extra=BODY,
             summary="Train an accuracy predictor from (config, accuracy) pairs (API key)")
async def train_predictor(name: str, request: Request, store: StoreDep, settings: SettingsDep, celery: CeleryDep,
                          caller: KeyedCallerDep):
    """Validated here (422 naming the field; at most 20,000 rows), trained by a worker: the predictor is saved
    under the data directory, registered for the supernet (unless `register` is false) and its held-out RMSE
    and Kendall tau are in the training's `result`. Poll the returned `url`."""
    body = await _body(request)
    spec = store.get(name).spec                                   # 404 for an unknown supernet
    db = request.app.state.db
    row = await run_in_threadpool(service.create, db, spec, body, caller.key_id)
    await run_in_threadpool(service.enqueue, db, celery, settings, row.id)
    return service.out(row)


@router.get("/{name}/predictor/trainings/{training_id}", response_model=PredictorTrainingOut,
            summary="A predictor training: status, held-out RMSE and Kendall tau")
def get_training(name: str, training_id: str, request: Request):
    with request.app.state.db.session() as s:
        row = repo.get(s, training_id)
        if row is None or row.supernet != name:
            raise TrainingNotFound(training_id)
        return service.out(row)
