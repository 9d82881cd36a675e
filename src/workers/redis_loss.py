"""How a worker lives through losing Redis (O2, S4): it says so once, waits a little longer
before each new try, and says when Redis answers again.

arq stops a worker at the first connection error, so a 2-second Redis restart used to leave every
queue without workers until someone restarted them. Nothing a worker holds is lost by waiting
instead: jobs stay in Redis (or, when Redis came back empty, the outbox sweeper hands them over
again from the database)."""

from __future__ import annotations

import logging
import random
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# What a Redis that is down, restarting (LOADING is a ConnectionError) or unreachable raises.
# Other Redis errors (a wrong type, a script bug, OOM) are not waited out: arq's behaviour stays.
REDIS_LOST = (RedisConnectionError, RedisTimeoutError)

# The bounds of every wait: never a tight loop against a dead server, never more than this
# long before a worker notices Redis is back.
FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 5.0
# Past this many doublings the ceiling is long since MAX_RETRY_SECONDS (and 2 ** n stays small).
_MAX_DOUBLINGS = 16


def retry_wait(retry: int, rng: random.Random) -> float:
    """The wait before a worker's `retry`-th new try (0: the first) at a lost Redis.

    Equal jitter: a ceiling of 0.2 s doubling up to MAX_RETRY_SECONDS, and a wait between half
    the ceiling and the ceiling (0.1-0.2 s, then 0.2-0.4 s, ..., 2.5-5 s). A Redis restart drops
    every worker of a fleet at the same instant; without jitter they all came back in the same
    instants too. Full jitter (anything from 0 to the ceiling) spreads them wider but can draw
    waits near 0, several in a row: a tight loop against a server that is still down, and the
    reason for the 0.1 s floor. Equal jitter keeps that floor and still spreads a fleet over a
    window as wide as half the ceiling (2.5 s once at the cap)."""
    ceiling = min(2 * FIRST_RETRY_SECONDS * 2.0 ** min(retry, _MAX_DOUBLINGS), MAX_RETRY_SECONDS)
    half = ceiling / 2
    return half + half * rng.random()


class RedisLoss:
    """One worker's view of its Redis: reachable, or lost since when. `rng` draws the jitter of
    its waits; the default is seeded from the OS, so no two workers share a schedule."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._since: float | None = None
        self._rng = rng if rng is not None else random.Random()
        self._retries = 0
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
        """At least 0.1 s, growing to at most 5 s, jittered (`retry_wait`): quick after a blip,
        and a few hundred idle workers neither hammer a Redis that is starting up nor all come
        back at once."""
        delay = retry_wait(self._retries, self._rng)
        self._retries += 1
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
        self._retries = 0
        self._jobs_interrupted = 0
