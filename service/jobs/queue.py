"""Publishing tasks. Always called after the transaction that created the rows has committed.

Publishing has a total deadline (`broker_publish_timeout_s`): the send runs on a small thread pool and the caller
waits at most that long, so a broker that accepts connections but never answers costs each request at most the
deadline (503 with Retry-After), and after a failure further publishes to that broker fail at once for
`BREAKER_S` seconds instead of piling up. A job whose publish failed or was lost is re-published by the sweeper
(workers/sweeper.py) when it is older than a lease.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from service.errors import BrokerUnavailable

log = logging.getLogger("ofa.queue")

RUN_SEARCH = "ofa.run_search"
COMPUTE_FRONT = "ofa.compute_pareto_front"
PROFILE_HOST = "ofa.profile_host"
BREAKER_S = 5.0

_pool: tuple[int, ThreadPoolExecutor] | None = None     # (pid, pool): a forked pool child makes its own
_down_until: dict[str, float] = {}          # broker URL -> monotonic time until which publishes fail fast
_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="ofa-publish"))
        return _pool[1]


def _send(celery, queue: str, name: str, args: list) -> None:
    celery.send_task(name, args=args, queue=queue, retry=True,
                     retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5})


def check_broker(celery) -> None:
    """BrokerUnavailable at once while the breaker for this broker is open (a publish failed moments ago)."""
    if time.monotonic() < _down_until.get(str(celery.conf.broker_url), 0.0):
        raise BrokerUnavailable("failed moments ago; retry later")


def publish(celery, queue: str, name: str, args: list, timeout_s: float = 3.0) -> None:
    """Send one task, or raise BrokerUnavailable within `timeout_s` (at once while the breaker is open)."""
    url = str(celery.conf.broker_url)
    check_broker(celery)
    fut = _executor().submit(_send, celery, queue, name, args)
    try:
        fut.result(timeout=timeout_s)
    except Exception as e:  # the deadline, kombu OperationalError, redis ConnectionError, socket errors...
        reason = f"no answer within {timeout_s:g} s" if isinstance(e, FutureTimeout) else type(e).__name__
        with _lock:
            _down_until[url] = time.monotonic() + BREAKER_S
        log.warning("broker publish failed", extra={"task": name, "error": reason})
        raise BrokerUnavailable(reason) from e
    _down_until.pop(url, None)


def publish_front(celery, settings, device_id: int, table_id: int, supernet: str) -> bool:
    """Queue the Pareto front of a committed table version; False (logged) when the broker is unreachable: the
    table stays, and the front is computed on the next change or by `ofa import-table`."""
    try:
        publish(celery, settings.task_queue, COMPUTE_FRONT, [device_id, table_id, supernet],
                settings.broker_publish_timeout_s)
        return True
    except BrokerUnavailable:
        return False
