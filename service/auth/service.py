"""API keys: random tokens shown once at creation, stored as sha256 hashes."""
from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized
from . import repository


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(db, name: str) -> str:
    key = "ofa_" + secrets.token_urlsafe(32)
    with db.session() as s:
        repository.create(s, name, key[:10], hash_key(key))
    return key


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def require_api_key(request: Request) -> str:
    key = _presented_key(request)
    if not key:
        raise Unauthorized()
    db = request.app.state.db
    with db.session() as s:
        row = repository.find_active(s, hash_key(key))
        if row is None:
            raise Unauthorized("invalid or revoked API key")
        repository.touch(s, row.id)
        return row.name


ApiKeyDep = Annotated[str, Depends(require_api_key)]
