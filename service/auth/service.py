"""API keys: random tokens shown once at creation, stored as sha256 hashes."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized
from . import repository


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(db, name: str) -> str:
    """A new key `ofa_<id>_<secret>`: the stored prefix `ofa_<id>` names it (in `ofa list-api-keys`, to revoke
    it) and is random on its own, so it reveals nothing of the secret; only the whole key's sha256 is kept."""
    if not name or len(name) > 128 or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise ValueError("a key name is 1-128 printable characters")
    public = secrets.token_hex(4)
    key = f"ofa_{public}_{secrets.token_urlsafe(32)}"
    with db.session() as s:
        repository.create(s, name, f"ofa_{public}", hash_key(key))
    return key


def list_api_keys(db) -> list[dict]:
    with db.session() as s:
        return [{"id": k.id, "name": k.name, "prefix": k.prefix, "revoked": k.revoked,
                 "created_at": k.created_at, "last_used_at": k.last_used_at} for k in repository.all_keys(s)]


def revoke_api_key(db, ident: str) -> int:
    """Revoke the key(s) whose id or stored prefix is `ident`; returns how many were revoked."""
    with db.session() as s:
        return repository.revoke(s, ident)


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key (id, name) if one was presented, and the client address."""
    key_id: int | None
    key_name: str | None
    address: str

    @property
    def identity(self) -> str:
        return f"key:{self.key_id}" if self.key_id is not None else f"addr:{self.address}"


def _lookup(request: Request, key: str):
    with request.app.state.db.session() as s:
        row = repository.find_active(s, hash_key(key))
        if row is None:
            raise Unauthorized("invalid or revoked API key")
        repository.touch(s, row.id)
        return row.id, row.name


def optional_caller(request: Request) -> Caller:
    """The caller; a presented key must be valid (401 otherwise), no key is anonymous."""
    key = _presented_key(request)
    address = request.client.host if request.client else "unknown"
    if not key:
        return Caller(None, None, address)
    key_id, name = _lookup(request, key)
    return Caller(key_id, name, address)


def required_caller(request: Request) -> Caller:
    """The caller, who must present a valid key (401 otherwise)."""
    caller = optional_caller(request)
    if caller.key_id is None:
        raise Unauthorized()
    return caller


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
CallerDep = Annotated[Caller, Depends(optional_caller)]
KeyedCallerDep = Annotated[Caller, Depends(required_caller)]
