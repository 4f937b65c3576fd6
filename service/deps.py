"""Typed dependencies shared by the endpoints."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.settings import Settings
from service.supernets.store import SupernetStore


def get_store(request: Request) -> SupernetStore:
    return request.app.state.store


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_celery(request: Request) -> Any:
    return request.app.state.celery


StoreDep = Annotated[SupernetStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
CeleryDep = Annotated[Any, Depends(get_celery)]
