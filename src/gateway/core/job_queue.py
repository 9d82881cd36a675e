"""arq's enqueue in one Redis round trip.

`ArqRedis.enqueue_job` checks for an existing job under WATCH and then writes it in MULTI/EXEC:
three round trips per job, each a write that wakes Redis and a read, on the path from a login's
commit to its SMS or push. The script below does the same check and the same two writes
atomically, in arq's own key layout and job format (`arq.jobs.serialize_job`), so arq workers
cannot tell its jobs from `enqueue_job`'s."""

from __future__ import annotations

from typing import Any

from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from gateway.core.jobs import queue_key, serialize

# KEYS: job, result, queue. ARGV: expiry (ms), job bytes, score (ms), job id.
# A job whose id is queued or whose result is kept is not enqueued again (outbox replays).
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


class JobQueue:
    def __init__(self, redis: Redis) -> None:
        # redis-py runs it with EVALSHA and loads it again after a Redis restart.
        self._enqueue = redis.register_script(_ENQUEUE)

    async def enqueue(self, name: str, payload: dict[str, Any], job_id: str, queue: str) -> bool:
        """False when a job with this id is already queued or has a kept result."""
        now = timestamp_ms()
        job = serialize_job(name, (payload,), {}, None, now, serializer=serialize)
        keys = [job_key_prefix + job_id, result_key_prefix + job_id, queue_key(queue)]
        added = await self._enqueue(keys=keys, args=[expires_extra_ms, job, now, job_id])
        return bool(added)
