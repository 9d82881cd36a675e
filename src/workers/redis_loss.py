"""How a worker lives through losing Redis (O2, S4): it says so once, waits a little longer
before each new try, and says when Redis answers again.

arq stops a worker at the first connection error, so a 2-second Redis restart used to leave every
queue without workers until someone restarted them. Nothing a worker holds is lost by waiting
instead: jobs stay in Redis (or, when Redis came back empty, the outbox sweeper hands them over
again from the database)."""

from __future__ import annotations

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# What a Redis that is down, restarting (LOADING is a ConnectionError) or unreachable raises.
# Other Redis errors (a wrong type, a script bug, OOM) are not waited out: arq's behaviour stays.
REDIS_LOST = (RedisConnectionError, RedisTimeoutError)

FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0


class RedisLoss:
    """One worker's view of its Redis: reachable, or lost since when."""

    def __init__(self) -> None:
        self._since: float | None = None
        self._delay = FIRST_RETRY_SECONDS
        self._jobs_interrupted = 0

    @property
    def lost(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, *, job: bool = False) -> None:
        """Logs the first failure of an outage only: a worker retrying every few seconds would
        otherwise write a line (with a traceback) each time."""
        if job:
            self._jobs_interrupted += 1
        if self._since is not None:
            return
        self._since = time.monotonic()
        log.warning(
            "Redis unreachable; the worker keeps retrying until it answers",
            extra={"error": type(error).__name__, "detail": str(error)},
        )

    def next_delay(self) -> float:
        """0.1 s, doubling up to 5 s: quick after a blip, and a few hundred idle workers do not
        hammer a Redis that is starting up."""
        delay = self._delay
        self._delay = min(self._delay * 2, MAX_RETRY_SECONDS)
        return delay

    def answered(self) -> None:
        if self._since is None:
            return
        log.info(
            "Redis reachable again; the worker polls its queue",
            extra={
                "outage_seconds": round(time.monotonic() - self._since, 1),
                # Their end was not recorded: they run again once their in-progress mark
                # expires, or the outbox sweeper hands them over if Redis came back empty.
                "jobs_interrupted": self._jobs_interrupted,
            },
        )
        self._since = None
        self._delay = FIRST_RETRY_SECONDS
        self._jobs_interrupted = 0
