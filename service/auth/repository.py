from __future__ import annotations

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import ApiKey


def create(s: Session, name: str, prefix: str, key_hash: str) -> ApiKey:
    row = ApiKey(name=name, prefix=prefix, key_hash=key_hash)
    s.add(row)
    s.flush()
    return row


def find_active(s: Session, key_hash: str) -> ApiKey | None:
    return s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked.is_(False)))


def touch(s: Session, key_id: int) -> None:
    s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def all_keys(s: Session) -> list[ApiKey]:
    return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke(s: Session, ident: str) -> int:
    cond = ApiKey.prefix == ident
    if ident.isdigit():
        cond = or_(cond, ApiKey.id == int(ident))
    res = s.execute(update(ApiKey).where(cond, ApiKey.revoked.is_(False)).values(revoked=True))
    return res.rowcount
