from __future__ import annotations

from fastapi import APIRouter

from service.deps import StoreDep

router = APIRouter(prefix="/supernets", tags=["supernets"])


@router.get("")
def list_supernets(store: StoreDep):
    """Registered supernets: whether weights are loaded (checkpoints) and a predictor is (search)."""
    return {"items": [store.describe(n) for n in sorted(store.engines)], "default": store.settings.default_supernet}


@router.get("/{name}")
def get_supernet(name: str, store: StoreDep):
    return store.describe(name)
