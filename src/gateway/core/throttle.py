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
# callers cannot slip past a limit between the check and the count. With the last argument '1'
# it only looks: the wait, and nothing counted.
_ADMIT = """
local wait = 0
local look_only = ARGV[2 * #KEYS + 1] == '1'
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[2 * i - 1]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 or look_only then return wait end
for i, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then
    redis.call('EXPIRE', key, tonumber(ARGV[2 * i]))
  end
end
return 0
"""

# Password attempts (L3): KEYS are, per window, its failure counter and its set of attempts in
# flight (scored by start time in ms). An attempt starts only if the failures and the attempts
# in flight together are under the limit, so parallel guesses cannot all pass before the first
# failure is counted; a window full only of attempts in flight answers 1 s, not its whole life.
# Attempts older than ARGV[n+1] ms are dropped (their process died before it could say).
# ARGV: the n limits, the in-flight lifetime in ms, the attempt's id.
_BEGIN_ATTEMPT = """
local n = #KEYS / 2
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lifetime = tonumber(ARGV[n + 1])
local first = tonumber(redis.call('GET', KEYS[1]) or '0')
local wait = 0
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now_ms - lifetime)
  local failures = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local limit = tonumber(ARGV[i])
  if failures >= limit then
    local ttl = redis.call('TTL', KEYS[2 * i - 1])
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  elseif failures + redis.call('ZCARD', KEYS[2 * i]) >= limit then
    if wait < 1 then wait = 1 end
  end
end
if wait > 0 then return {wait, first} end
for i = 1, n do
  redis.call('ZADD', KEYS[2 * i], now_ms, ARGV[n + 2])
  redis.call('PEXPIRE', KEYS[2 * i], lifetime)
end
return {0, first}
"""

# The attempt ends: out of flight, and counted as a failure in every window when ARGV[2] is
# '1'; ARGV[3] = '1' empties the first window's failures (a right password). ARGV[1] is the
# attempt's id, ARGV[4] the windows' length in seconds.
_END_ATTEMPT = """
local n = #KEYS / 2
for i = 1, n do
  redis.call('ZREM', KEYS[2 * i], ARGV[1])
  if ARGV[2] == '1' and redis.call('INCR', KEYS[2 * i - 1]) == 1 then
    redis.call('EXPIRE', KEYS[2 * i - 1], tonumber(ARGV[4]))
  end
end
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
return 0
"""


class WindowCounter:
    """Fixed windows in Redis: cheap, shared by every gateway process, and short-lived by design
    (the durable counters that guard codes live in the database instead)."""

    def __init__(self, redis: Redis, prefix: str = "kanmon:throttle") -> None:
        self._prefix = prefix
        # EVALSHA: the scripts' text is sent once per connection's server, not with each call,
        # and redis-py loads them again after a Redis restart.
        self._admit_script = redis.register_script(_ADMIT)
        self._begin_script = redis.register_script(_BEGIN_ATTEMPT)
        self._end_script = redis.register_script(_END_ATTEMPT)

    async def admit_all(self, windows: list[tuple[str, int, int]]) -> int:
        """Counts one event in every (key, limit, window_seconds) if all are under their limit;
        otherwise counts nothing and returns the seconds until the fullest one reopens."""
        return await self._admit(windows, look_only=False)

    async def wait(self, windows: list[tuple[str, int, int]]) -> int:
        """The seconds until every window is under its limit (0: now), counting nothing."""
        return await self._admit(windows, look_only=True)

    async def _admit(self, windows: list[tuple[str, int, int]], *, look_only: bool) -> int:
        keys = [f"{self._prefix}:{key}" for key, _, _ in windows]
        args = [str(v) for _, limit, window in windows for v in (limit, window)]
        args.append("1" if look_only else "0")
        wait = await cast(Awaitable[int], self._admit_script(keys=keys, args=args))
        return int(wait)

    async def begin_attempt(
        self, windows: list[tuple[str, int]], attempt_id: str, lifetime_seconds: int
    ) -> tuple[int, int]:
        """For (key, limit) failure windows: starts the attempt unless failures and attempts
        in flight fill one. Returns (seconds to wait, 0 when started; the first window's
        failures so far)."""
        keys = self._attempt_keys([key for key, _ in windows])
        args = [str(limit) for _, limit in windows] + [str(lifetime_seconds * 1000), attempt_id]
        answer = await cast(Awaitable[list[int]], self._begin_script(keys=keys, args=args))
        return int(answer[0]), int(answer[1])

    async def end_attempt(
        self,
        keys: list[str],
        attempt_id: str,
        *,
        failed: bool,
        clear_first: bool,
        window_seconds: int,
    ) -> None:
        full_keys = self._attempt_keys(keys)
        flags = ["1" if failed else "0", "1" if clear_first else "0"]
        args = [attempt_id, *flags, str(window_seconds)]
        await cast(Awaitable[int], self._end_script(keys=full_keys, args=args))

    def _attempt_keys(self, keys: list[str]) -> list[str]:
        return [f"{self._prefix}:{key}{suffix}" for key in keys for suffix in ("", ":inflight")]
