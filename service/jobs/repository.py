from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Job, JobEvent

LIVE = ("queued", "running", "succeeded")
TERMINAL = ("succeeded", "failed", "cancelled")


def get(s: Session, job_id: str) -> Job | None:
    return s.get(Job, job_id)


def find_live(s: Session, request_hash: str) -> Job | None:
    return s.scalar(select(Job).where(Job.request_hash == request_hash, Job.status.in_(LIVE)))


def add(s: Session, job: Job) -> Job:
    s.add(job)
    s.flush()
    return job


def _stale(lease_s: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=lease_s)


def _expired(lease_s: float):
    """A running job whose worker stopped heartbeating (its lease expired)."""
    return (Job.status == "running") & (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < _stale(lease_s)))


def _orphan(lease_s: float):
    """A queued job last published more than a lease ago (its message may be lost)."""
    return (Job.status == "queued") & (func.coalesce(Job.heartbeat_at, Job.created_at) < _stale(lease_s))


def claim(s: Session, job_id: str, token: str, lease_s: float, max_attempts: int = 1_000_000) -> bool:
    """Take a queued job (or one whose worker stopped heartbeating, i.e. its lease expired) that has attempts
    left. True if this caller owns it now (one UPDATE: concurrent claims cannot both win)."""
    now = utcnow()
    res = s.execute(update(Job).where(
        Job.id == job_id, Job.cancel_requested.is_(False), Job.attempts < max_attempts,
        or_(Job.status == "queued", _expired(lease_s)))
        .values(status="running", lease_token=token, heartbeat_at=now, attempts=Job.attempts + 1, started_at=now)
        .execution_options(synchronize_session=False))
    return res.rowcount == 1


def heartbeat(s: Session, job_id: str, token: str) -> str:
    """Renew a running job's lease: 'ok', 'cancel' (cancellation requested) or 'lost' (taken over / finished)."""
    res = s.execute(update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == "running")
                    .values(heartbeat_at=utcnow()).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return "lost"
    return "cancel" if s.scalar(select(Job.cancel_requested).where(Job.id == job_id)) else "ok"


def lease_left_s(job: Job, lease_s: float) -> float:
    """Seconds until a running job's lease expires (0 when it has)."""
    if job.heartbeat_at is None:
        return 0.0
    hb = job.heartbeat_at if job.heartbeat_at.tzinfo else job.heartbeat_at.replace(tzinfo=dt.timezone.utc)
    return max(0.0, lease_s - (utcnow() - hb).total_seconds())


def needing_recovery(s: Session, lease_s: float, limit: int = 200) -> list[tuple[str, str, int, bool, dt.datetime]]:
    """(id, status, attempts, cancel_requested, created_at) of expired running jobs and orphaned queued ones,
    oldest first."""
    rows = s.execute(select(Job.id, Job.status, Job.attempts, Job.cancel_requested, Job.created_at)
                     .where(or_(_expired(lease_s), _orphan(lease_s))).order_by(Job.created_at).limit(limit))
    return [(r[0], r[1], int(r[2] or 0), bool(r[3]), r[4]) for r in rows]


def touch_orphan(s: Session, job_id: str, lease_s: float, created_at: dt.datetime | None = None) -> bool:
    """Mark a queued job published more than a lease ago as published now; True for the one caller that should
    publish it. With `created_at`, the next time it counts as orphaned backs off to double its age (a job that
    only waits behind a long queue gets a few duplicate messages, log2(wait / lease), not one per lease)."""
    now = utcnow()
    mark = now
    if created_at is not None:
        c = created_at if created_at.tzinfo else created_at.replace(tzinfo=dt.timezone.utc)
        mark = now + max(dt.timedelta(0), (now - c) - dt.timedelta(seconds=lease_s))
    res = s.execute(update(Job).where(Job.id == job_id, _orphan(lease_s)).values(heartbeat_at=mark)
                    .execution_options(synchronize_session=False))
    return res.rowcount == 1


def requeue_expired(s: Session, job_id: str, lease_s: float) -> bool:
    """An expired running job back to queued (to be published by the caller); True if this caller did it."""
    res = s.execute(update(Job).where(Job.id == job_id, _expired(lease_s))
                    .values(status="queued", lease_token=None, heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False))
    return res.rowcount == 1


def finish_expired(s: Session, job_id: str, lease_s: float, status: str, error: dict[str, Any]) -> bool:
    """End a job nobody works on (expired running or orphaned queued) as `status` with `error`."""
    res = s.execute(update(Job).where(Job.id == job_id, or_(_expired(lease_s), _orphan(lease_s)))
                    .values(status=status, lease_token=None, finished_at=utcnow(), error=error)
                    .execution_options(synchronize_session=False))
    return res.rowcount == 1


def mark_published(s: Session, job_id: str) -> None:
    s.execute(update(Job).where(Job.id == job_id, Job.status == "queued").values(heartbeat_at=utcnow())
              .execution_options(synchronize_session=False))


def progress(s: Session, job_id: str, token: str, generation: int, generations: int, best: dict[str, Any] | None
             ) -> bool:
    """Record progress; returns False if the job was cancelled or taken over."""
    res = s.execute(update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == "running")
                    .values(generation=generation, progress=generation / max(generations, 1), best=best,
                            heartbeat_at=utcnow())
                    .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return False
    s.add(JobEvent(job_id=job_id, generation=generation, generations=generations, best=best))
    return not s.scalar(select(Job.cancel_requested).where(Job.id == job_id))


def events_after(s: Session, job_id: str, after_id: int) -> list[JobEvent]:
    """A job's progress records newer than `after_id`, oldest first."""
    return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                          .order_by(JobEvent.id)))


def release(s: Session, job_id: str, token: str) -> None:
    """Give a running job's lease back (queued again) so that a retry can claim it."""
    s.execute(update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == "running")
              .values(status="queued", lease_token=None, heartbeat_at=utcnow())
              .execution_options(synchronize_session=False))


def finish(s: Session, job_id: str, token: str | None, status: str, **values: Any) -> bool:
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
    if token is not None:
        stmt = stmt.where(Job.lease_token == token)
    res = s.execute(stmt.values(status=status, finished_at=utcnow(), **values)
                    .execution_options(synchronize_session=False))
    return res.rowcount == 1


def request_cancel(s: Session, job_id: str, lease_s: float) -> str | None:
    """Queued jobs, and running ones whose worker died (lease expired), become cancelled at once; running ones
    with a live worker are flagged for it (it stops at its next generation or heartbeat)."""
    err = {"code": "cancelled", "message": "cancelled by request"}
    res = s.execute(update(Job).where(Job.id == job_id, or_(Job.status == "queued", _expired(lease_s)))
                    .values(status="cancelled", cancel_requested=True, finished_at=utcnow(), lease_token=None,
                            error=err)
                    .execution_options(synchronize_session=False))
    if res.rowcount:
        return "cancelled"
    res = s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
                    .execution_options(synchronize_session=False))
    return "cancelling" if res.rowcount else None


def list_recent(s: Session, offset: int, limit: int, status: str | None = None, device_id: int | None = None
                ) -> tuple[list[Job], int]:
    """Jobs, newest first, optionally of one status and/or one device; with the total count."""
    from sqlalchemy import func
    stmt = select(Job)
    if status:
        stmt = stmt.where(Job.status == status)
    if device_id is not None:
        stmt = stmt.where(Job.device_id == device_id)
    total = s.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = list(s.scalars(stmt.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit)))
    return rows, int(total or 0)
