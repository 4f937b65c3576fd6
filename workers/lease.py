"""A running job's lease: a heartbeat thread renews it while the search runs, so that a worker that dies (SIGKILL,
OOM, power) leaves a lease that expires after `job_lease_s` and the job is taken over (workers/sweeper.py, or a
redelivered task's claim). The thread also notices a cancellation request or a lost lease between generations."""
from __future__ import annotations

import logging
import threading

from service.jobs import repository as job_repo

log = logging.getLogger("ofa.worker")


class LeaseHeld(Exception):
    """The job is running under another worker's live lease: retry this delivery later, do not drop it."""

    def __init__(self, job_id: str, retry_in: float):
        super().__init__(f"job {job_id} is held by a live lease; retry in {retry_in:.0f} s")
        self.job_id, self.retry_in = job_id, retry_in


def heartbeat_period(settings) -> float:
    return settings.job_heartbeat_s or max(settings.job_lease_s / 4, 0.05)


class Heartbeat:
    """Renews `job_id`'s lease every `period` seconds in a daemon thread until stopped. `state['cancel']`
    becomes True when the job's cancellation was requested or its lease was lost (taken over)."""

    def __init__(self, db, job_id: str, token: str, period: float, state: dict):
        self.db, self.job_id, self.token, self.period, self.state = db, job_id, token, period, state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.period, 1.0) + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                with self.db.session() as s:
                    verdict = job_repo.heartbeat(s, self.job_id, self.token)
            except Exception as e:   # a database hiccup: try again next period (the lease has slack)
                log.warning("heartbeat failed", extra={"job": self.job_id, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            if verdict != "ok":
                self.state["cancel"] = True
                self.state.setdefault("why", verdict)
                return
