"""Publishing tasks. Always called after the transaction that created the rows has committed."""
from __future__ import annotations

import logging

from service.errors import BrokerUnavailable

log = logging.getLogger("ofa.queue")

RUN_SEARCH = "ofa.run_search"
COMPUTE_FRONT = "ofa.compute_pareto_front"
PROFILE_HOST = "ofa.profile_host"


def publish(celery, queue: str, name: str, args: list, timeout_s: float = 3.0) -> None:
    try:
        celery.send_task(name, args=args, queue=queue, retry=True,
                         retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                       "interval_max": 0.5})
    except Exception as e:  # kombu OperationalError, redis ConnectionError, socket errors...
        log.warning("broker publish failed", extra={"task": name, "error": str(e)})
        raise BrokerUnavailable(type(e).__name__) from e


def publish_front(celery, settings, device_id: int, table_id: int, supernet: str) -> bool:
    """Queue the Pareto front of a committed table version; False (logged) when the broker is unreachable: the
    table stays, and the front is computed on the next change or by `ofa import-table`."""
    try:
        publish(celery, settings.task_queue, COMPUTE_FRONT, [device_id, table_id, supernet],
                settings.broker_publish_timeout_s)
        return True
    except BrokerUnavailable:
        return False
