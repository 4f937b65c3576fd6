"""SQL of predictor trainings."""
from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import PredictorTraining


def create(s: Session, row: PredictorTraining) -> PredictorTraining:
    s.add(row)
    s.flush()
    return row


def get(s: Session, training_id: str) -> PredictorTraining | None:
    return s.get(PredictorTraining, training_id)


def claim(s: Session, training_id: str) -> PredictorTraining | None:
    """Mark a queued (or interrupted running) training as running; None when it is finished or unknown."""
    n = s.execute(update(PredictorTraining).where(PredictorTraining.id == training_id,
                                                  PredictorTraining.status.in_(("queued", "running")))
                  .values(status="running", started_at=utcnow(), attempts=PredictorTraining.attempts + 1)
                  ).rowcount
    return s.get(PredictorTraining, training_id) if n else None


def finish(s: Session, training_id: str, status: str, result: dict | None = None, error: str | None = None) -> None:
    s.execute(update(PredictorTraining).where(PredictorTraining.id == training_id)
              .values(status=status, result=result, error=error, finished_at=utcnow()))


def latest(s: Session, supernet: str, limit: int = 20) -> list[PredictorTraining]:
    q = (select(PredictorTraining).where(PredictorTraining.supernet == supernet)
         .order_by(PredictorTraining.created_at.desc()).limit(limit))
    return list(s.scalars(q))
