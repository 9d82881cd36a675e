"""Throttles: back-off maths for code failures (F5) and short Redis windows for passwords (L3)."""

from __future__ import annotations

from redis.asyncio import Redis

FREE_FAILURES = 3
MAX_BACKOFF_SECONDS = 15 * 60


def backoff_seconds(consecutive_failures: int) -> int:
    """F5: after failure n >= 3 the next attempt must wait 2^(n-2) s, capped at 15 minutes."""
    if consecutive_failures < FREE_FAILURES:
        return 0
    return int(min(2 ** (consecutive_failures - 2), MAX_BACKOFF_SECONDS))


class WindowCounter:
    """Fixed windows in Redis: cheap, shared by every gateway process, and short-lived by design
    (the durable counters that guard codes live in the database instead)."""

    def __init__(self, redis: Redis, prefix: str = "kanmon:throttle") -> None:
        self._redis = redis
        self._prefix = prefix

    async def blocked_for(self, key: str, limit: int) -> int:
        """Seconds until `key` may try again, or 0 when it is under its limit."""
        full_key = f"{self._prefix}:{key}"
        count = await self._redis.get(full_key)
        if count is None or int(count) < limit:
            return 0
        ttl = await self._redis.ttl(full_key)
        return max(int(ttl), 1)

    async def add(self, key: str, window_seconds: int) -> None:
        full_key = f"{self._prefix}:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(full_key)
            pipe.expire(full_key, window_seconds, nx=True)
            await pipe.execute()

    async def clear(self, key: str) -> None:
        await self._redis.delete(f"{self._prefix}:{key}")
