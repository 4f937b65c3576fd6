from __future__ import annotations

from fastapi import APIRouter

from service.deps import StoreDep
from service.openapi import errors, example

router = APIRouter(prefix="/supernets", tags=["supernets"])
SUPERNET = {"name": "ofa_mbv3_cifar10", "version": "1-3f2a9c0d1e4b", "default": True, "has_weights": True,
            "search_ready": True, "weights_file": "ofa_core/assets/ofa_mbv3_cifar10.safetensors",
            "predictor_file": "ofa_core/assets/ofa_mbv3_cifar10_predictor.safetensors", "weights_env": None,
            "load_error": None, "spec": {"name": "ofa_mbv3_cifar10", "resolutions": [24, 28, 32],
                                                   "input_range": [8, 128]}}


@router.get("", summary="List supernets", responses={200: example({"items": [SUPERNET], "default": "ofa_mbv3_cifar10"})})
def list_supernets(store: StoreDep):
    """Registered supernets: whether weights are loaded (checkpoints) and a predictor is (search)."""
    return {"items": [store.describe(n) for n in sorted(store.engines)], "default": store.settings.default_supernet}


@router.get("/{name}", summary="Get a supernet", responses={200: example(SUPERNET), **errors(404, e404={
    "code": "supernet_not_found", "message": "unknown supernet 'nope'", "supernet": "nope", "known": ["ofa_mbv3_cifar10"]})})
def get_supernet(name: str, store: StoreDep):
    """One registered supernet: version, weights and predictor files, whether it serves checkpoints and searches."""
    return store.describe(name)
