"""Rate limit on searches: at most `rate_limit_searches` per `rate_limit_window_s` (fixed window) for each API key,
or for each client address without a key. Counters live in Redis when the broker is Redis (shared by every API
replica: INCR + EXPIRE, with a 0.5 s socket timeout; if Redis does not answer the request is let through and
logged, and Redis is not asked again for 5 s; the broker's own 503 follows), else in this process's memory (the embedded default runs one API process).
"""
from __future__ import annotations

import logging
import threading
import time

from service.errors import RateLimited

log = logging.getLogger("ofa.ratelimit")
MAX_TRACKED = 100_000
BREAKER_S = 5.0


class RateLimiter:
    def __init__(self, settings):
        self.limit, self.window = int(settings.rate_limit_searches), float(settings.rate_limit_window_s)
        self.prefix = f"ofa:ratelimit:{settings.task_queue}"
        self._redis = None
        if self.limit > 0 and settings.broker_url.startswith(("redis://", "rediss://")):
            import redis
            self._redis = redis.Redis.from_url(settings.broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._counts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._down_until = 0.0

    def _count(self, ident: str, bucket: int) -> int:
        if self._redis is not None:
            k = f"{self.prefix}:{ident}:{bucket}"
            pipe = self._redis.pipeline()
            pipe.incr(k)
            pipe.expire(k, int(self.window) + 1)
            return int(pipe.execute()[0])
        with self._lock:
            b, n = self._counts.get(ident, (bucket, 0))
            n = n + 1 if b == bucket else 1
            if len(self._counts) >= MAX_TRACKED:       # bounded memory: old windows are dropped
                self._counts = {i: v for i, v in self._counts.items() if v[0] == bucket}
            self._counts[ident] = (bucket, n)
            return n

    def hit(self, ident: str) -> None:
        """Count one search for `ident`; RateLimited (429 + Retry-After) once over the limit."""
        if self.limit <= 0:
            return
        now = time.time()
        bucket = int(now // self.window)
        if time.monotonic() < self._down_until:      # Redis failed moments ago: do not wait on it again
            return
        try:
            n = self._count(ident, bucket)
        except Exception as e:
            self._down_until = time.monotonic() + BREAKER_S
            log.warning("rate limit store unavailable; not limiting", extra={"error": type(e).__name__})
            return
        if n > self.limit:
            raise RateLimited(self.limit, self.window, (bucket + 1) * self.window - now)
