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
# callers cannot slip past a limit between the check and the count. It also answers the first
# window's count before this event (a password check needs it). With the last argument '1' it
# only looks: the wait, and nothing counted.
_RESERVE = """
local wait = 0
local look_only = ARGV[2 * #KEYS + 1] == '1'
local first = tonumber(redis.call('GET', KEYS[1]) or '0')
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 or look_only then return {wait, first} end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, tonumber(ARGV[2 * i]))
  end
end
return {0, first}
"""

# Takes back one event from each window that still counts one; a window that expired meanwhile
# is left alone (a decrement would recreate it without an expiry). ARGV[1] = 1 empties the
# first window instead.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if i == 1 and ARGV[1] == '1' then
    redis.call('DEL', key)
  elseif tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
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

    async def admit_all(self, windows: list[tuple[str, int, int]]) -> int:
        """Counts one event in every (key, limit, window_seconds) if all are under their limit;
        otherwise counts nothing and returns the seconds until the fullest one reopens."""
        wait, _ = await self.reserve(windows)
        return wait

    async def reserve(self, windows: list[tuple[str, int, int]]) -> tuple[int, int]:
        """`admit_all`, also answering the first window's count before this event: (the
        seconds to wait, 0 when counted; that count)."""
        return await self._run_reserve(windows, look_only=False)

    async def wait(self, windows: list[tuple[str, int, int]]) -> int:
        """The seconds until every window is under its limit (0: now), counting nothing."""
        wait, _ = await self._run_reserve(windows, look_only=True)
        return wait

    async def _run_reserve(
        self, windows: list[tuple[str, int, int]], *, look_only: bool
    ) -> tuple[int, int]:
        keys = [f"{self._prefix}:{key}" for key, _, _ in windows]
        args = [str(v) for _, limit, window in windows for v in (limit, window)]
        args.append("1" if look_only else "0")
        answer = await cast(
            Awaitable[list[int]], self._redis.eval(_RESERVE, len(keys), *keys, *args)
        )
        return int(answer[0]), int(answer[1])

    async def release(self, keys: list[str], *, clear_first: bool = False) -> None:
        """Takes back what `reserve` counted in `keys`; `clear_first` empties the first."""
        full_keys = [f"{self._prefix}:{key}" for key in keys]
        await cast(
            Awaitable[int],
            self._redis.eval(_RELEASE, len(full_keys), *full_keys, "1" if clear_first else "0"),
        )
