from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import or_, select, update
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


def claim(s: Session, job_id: str, token: str, lease_s: float) -> bool:
    """Take a queued job (or one whose worker stopped heartbeating). True if this caller owns it now."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=lease_s)
    res = s.execute(update(Job).where(
        Job.id == job_id, Job.cancel_requested.is_(False),
        or_(Job.status == "queued", (Job.status == "running") & (Job.heartbeat_at < stale)))
        .values(status="running", lease_token=token, heartbeat_at=now, attempts=Job.attempts + 1, started_at=now)
        .execution_options(synchronize_session=False))
    return res.rowcount == 1


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
              .values(status="queued", lease_token=None).execution_options(synchronize_session=False))


def finish(s: Session, job_id: str, token: str | None, status: str, **values: Any) -> bool:
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(("queued", "running")))
    if token is not None:
        stmt = stmt.where(Job.lease_token == token)
    res = s.execute(stmt.values(status=status, finished_at=utcnow(), **values)
                    .execution_options(synchronize_session=False))
    return res.rowcount == 1


def request_cancel(s: Session, job_id: str) -> str | None:
    """Queued jobs become cancelled at once; running ones are flagged for the worker."""
    res = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                    .values(status="cancelled", cancel_requested=True, finished_at=utcnow(),
                            error={"code": "cancelled", "message": "cancelled before it started"})
                    .execution_options(synchronize_session=False))
    if res.rowcount:
        return "cancelled"
    res = s.execute(update(Job).where(Job.id == job_id, Job.status == "running").values(cancel_requested=True)
                    .execution_options(synchronize_session=False))
    return "cancelling" if res.rowcount else None
