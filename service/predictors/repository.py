"""SQL of predictor trainings."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import PredictorTraining


def create(s: Session, row: PredictorTraining) -> PredictorTraining:
    s.add(row)
    s.flush()
    return row


def get(s: Session, training_id: str) -> PredictorTraining | None:
    return s.get(PredictorTraining, training_id)


def _stale(lease_s: float) -> dt.datetime:
    return utcnow() - dt.timedelta(seconds=lease_s)


def _overdue(lease_s: float):
    """Its timestamp (deadline while running, last publish while queued) is more than a lease ago."""
    return func.coalesce(PredictorTraining.heartbeat_at, PredictorTraining.created_at) < _stale(lease_s)


def _takeable(lease_s: float):
    """Queued, or running past its deadline by more than a lease (its worker died or hung)."""
    return (PredictorTraining.status == "queued") | ((PredictorTraining.status == "running") & _overdue(lease_s))


def claim(s: Session, training_id: str, deadline_s: float, lease_s: float) -> PredictorTraining | None:
    """Mark a queued training (or one whose worker died: running past its deadline by a lease) as running with a
    deadline `deadline_s` from now; None when it is finished, unknown, or running under a live worker (a
    duplicate delivery must not train it twice at once)."""
    now = utcnow()
    n = s.execute(update(PredictorTraining).where(PredictorTraining.id == training_id, _takeable(lease_s))
                  .values(status="running", started_at=now, heartbeat_at=now + dt.timedelta(seconds=deadline_s),
                          attempts=PredictorTraining.attempts + 1)
                  .execution_options(synchronize_session=False)).rowcount
    return s.get(PredictorTraining, training_id) if n else None


def needing_recovery(s: Session, lease_s: float, limit: int = 100) -> list[tuple[str, str, int, dt.datetime]]:
    """(id, status, attempts, created_at) of trainings nobody works on: queued and last published more than a
    lease ago, or running past their deadline by more than a lease; oldest first."""
    stale = _overdue(lease_s)
    rows = s.execute(select(PredictorTraining.id, PredictorTraining.status, PredictorTraining.attempts,
                            PredictorTraining.created_at)
                     .where(PredictorTraining.status.in_(("queued", "running")), stale)
                     .order_by(PredictorTraining.created_at).limit(limit))
    return [(r[0], r[1], int(r[2] or 0), r[3]) for r in rows]


def take_over(s: Session, training_id: str, status: str, lease_s: float, created_at: dt.datetime) -> bool:
    """Mark a training found by `needing_recovery` as queued and published now; True for the one caller that
    should publish it. A queued one backs off: it counts as orphaned again after double its age (one that only
    waits behind a long queue gets log2(wait / lease) duplicate messages, not one per lease)."""
    now = utcnow()
    c = created_at if created_at.tzinfo else created_at.replace(tzinfo=dt.timezone.utc)
    mark = now + max(dt.timedelta(0), (now - c) - dt.timedelta(seconds=lease_s)) if status == "queued" else now
    stale = _overdue(lease_s)
    n = s.execute(update(PredictorTraining).where(PredictorTraining.id == training_id,
                                                  PredictorTraining.status == status, stale)
                  .values(status="queued", heartbeat_at=mark)
                  .execution_options(synchronize_session=False)).rowcount
    return n == 1


def fail_lost(s: Session, training_id: str, lease_s: float, error: str) -> bool:
    """Fail a training whose worker stopped too many times (running past its deadline); True if this call did."""
    stale = _overdue(lease_s)
    n = s.execute(update(PredictorTraining).where(PredictorTraining.id == training_id,
                                                  PredictorTraining.status == "running", stale)
                  .values(status="failed", error=error, finished_at=utcnow())
                  .execution_options(synchronize_session=False)).rowcount
    return n == 1


def finish(s: Session, training_id: str, status: str, result: dict | None = None, error: str | None = None) -> None:
    s.execute(update(PredictorTraining).where(PredictorTraining.id == training_id)
              .values(status=status, result=result, error=error, finished_at=utcnow()))


def latest(s: Session, supernet: str, limit: int = 20) -> list[PredictorTraining]:
    q = (select(PredictorTraining).where(PredictorTraining.supernet == supernet)
         .order_by(PredictorTraining.created_at.desc()).limit(limit))
    return list(s.scalars(q))
