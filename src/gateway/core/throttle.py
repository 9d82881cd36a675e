"""Throttles: back-off maths for code failures (F5) and short Redis windows for passwords (L3)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import cast

from redis.asyncio import Redis

FREE_FAILURES = 3
MAX_BACKOFF_SECONDS = 15 * 60


def backoff_seconds(consecutive_failures: int) -> int:
    """F5: after failure n >= 3 the next attempt must wait 2^(n-2) s, capped at 15 minutes."""
    if consecutive_failures < FREE_FAILURES:
        return 0
    return int(min(2 ** (consecutive_failures - 2), MAX_BACKOFF_SECONDS))


# Checks every window and counts in all of them only if none is full, atomically, so concurrent
# senders cannot slip past a limit between the check and the count.
_ADMIT_ALL = """
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, tonumber(ARGV[2 * i]))
  end
end
return 0
"""


class WindowCounter:
    """Fixed windows in Redis: cheap, shared by every gateway process, and short-lived by design
    (the durable counters that guard codes live in the database instead)."""

    def __init__(self, redis: Redis, prefix: str = "kanmon:throttle") -> None:
        self._redis = redis
        self._prefix = prefix

    async def blocked_for(self, windows: list[tuple[str, int]]) -> tuple[int, list[int]]:
        """For (key, limit) pairs: the seconds until every key is under its limit (0 when all
        are already), and each key's count. One round trip unless a window is full."""
        full_keys = [f"{self._prefix}:{key}" for key, _ in windows]
        counts = [int(raw or 0) for raw in await self._redis.mget(full_keys)]
        wait = 0
        for full_key, (_, limit), count in zip(full_keys, windows, counts, strict=True):
            if count >= limit:
                wait = max(wait, int(await self._redis.ttl(full_key)), 1)
        return wait, counts

    async def add(self, key: str, window_seconds: int) -> None:
        full_key = f"{self._prefix}:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(full_key)
            pipe.expire(full_key, window_seconds, nx=True)
            await pipe.execute()

    async def admit_all(self, windows: list[tuple[str, int, int]]) -> int:
        """Counts one event in every (key, limit, window_seconds) if all are under their limit;
        otherwise counts nothing and returns the seconds until the fullest one reopens."""
        keys = [f"{self._prefix}:{key}" for key, _, _ in windows]
        args = [str(v) for _, limit, window in windows for v in (limit, window)]
        wait = await cast(Awaitable[int], self._redis.eval(_ADMIT_ALL, len(keys), *keys, *args))
        return int(wait)

    async def clear(self, key: str) -> None:
        await self._redis.delete(f"{self._prefix}:{key}")
