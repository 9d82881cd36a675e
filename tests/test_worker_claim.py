"""O2, S4: the workers' one-round-trip claim of a job (workers.runner) keeps arq's guarantees:
a job runs once however many workers poll its queue, never while another worker holds it,
never before it is due; and the relay's one-round-trip enqueue (gateway.core.job_queue)
writes jobs arq runs, once per id."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from uuid import uuid4

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import Job
from arq.worker import Worker

from gateway.core.job_queue import JobQueue
from gateway.core.jobs import (
    JOB_BACKUP_CODES_INVALIDATE,
    QUEUE_MAINTENANCE,
    deserialize,
    queue_key,
)
from gateway.settings import Settings
from tests.conftest import run_worker
from workers.runner import KanmonWorker
from workers.settings import worker_options

# arq 0.28.0's Worker.start_jobs, which KanmonWorker.start_jobs follows but for the claim. When
# this fails, arq changed it: compare the two, carry the change over, then update the digest.
ARQ_START_JOBS_SHA256 = "b45797cfa40bed7fe6e9b8b8100c5f5b4144fe85112155c4e355df6ed8521f5f"


def test_o2_arq_start_jobs_is_the_one_the_worker_follows() -> None:
    source = inspect.getsource(Worker.start_jobs).encode()
    assert hashlib.sha256(source).hexdigest() == ARQ_START_JOBS_SHA256


async def _enqueue(redis: ArqRedis, count: int, defer_ms: int = 0) -> list[str]:
    queue = JobQueue(redis)
    ids = [str(uuid4()) for _ in range(count)]
    for job_id in ids:
        payload = {"user_id": str(uuid4()), "reason": "claim test", "count": 1}
        added = await queue.enqueue(JOB_BACKUP_CODES_INVALIDATE, payload, job_id, QUEUE_MAINTENANCE)
        assert added
    if defer_ms:
        due = {job_id: await redis.zscore(queue_key(QUEUE_MAINTENANCE), job_id) for job_id in ids}
        await redis.zadd(
            queue_key(QUEUE_MAINTENANCE), {j: float(s or 0) + defer_ms for j, s in due.items()}
        )
    return ids


async def _drained(settings: Settings) -> None:
    """Jobs other tests left queued would be counted here."""
    await run_worker(settings, QUEUE_MAINTENANCE)


async def _commands(redis: ArqRedis, *names: str) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {n: int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in names}


async def test_o2_two_workers_on_one_queue_run_each_job_once(
    settings: Settings, redis: ArqRedis
) -> None:
    await _drained(settings)
    ids = await _enqueue(redis, 40)
    workers = [
        KanmonWorker(
            **worker_options(settings, QUEUE_MAINTENANCE), burst=True, handle_signals=False
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.cron_jobs = []
    try:
        await asyncio.gather(*(w.main() for w in workers))
    finally:
        for worker in workers:
            await worker.close()
    assert sum(w.jobs_complete for w in workers) == len(ids)
    assert sum(w.jobs_failed for w in workers) == 0
    assert await redis.exists(*(result_key_prefix + job_id for job_id in ids)) == len(ids)


RunJob = Callable[[str, int], Awaitable[None]]


def _polling_worker(
    settings: Settings, redis: ArqRedis, run_job: RunJob | None = None
) -> KanmonWorker:
    """A worker that is not running: its `start_jobs` is called as its poll would call it.
    `run_job` stands in for arq's when the claim, not the job, is under test."""
    worker = KanmonWorker(
        **worker_options(settings, QUEUE_MAINTENANCE), redis_pool=redis, handle_signals=False
    )
    if run_job is not None:
        worker.run_job = run_job  # type: ignore[method-assign]
    return worker


async def test_o2_a_job_held_by_another_worker_is_not_started(
    settings: Settings, redis: ArqRedis
) -> None:
    await _drained(settings)
    [held] = await _enqueue(redis, 1)
    await redis.set(in_progress_key_prefix + held, b"1", px=60_000)
    worker = _polling_worker(settings, redis)
    await worker.start_jobs([held.encode()])
    assert not worker.tasks
    assert worker.job_counter == 0
    assert await redis.pttl(in_progress_key_prefix + held) > 0  # still the other worker's

    await redis.delete(in_progress_key_prefix + held)  # the other worker went away
    assert await run_worker(settings, QUEUE_MAINTENANCE) == 1
    assert await redis.zscore(queue_key(QUEUE_MAINTENANCE), held) is None


async def test_o2_a_job_not_yet_due_is_not_started(settings: Settings, redis: ArqRedis) -> None:
    """A poll that saw the job as due (clock skew between workers) is refused by the claim."""
    await _drained(settings)
    [later] = await _enqueue(redis, 1, defer_ms=60_000)
    worker = _polling_worker(settings, redis)
    await worker.start_jobs([later.encode()])
    assert not worker.tasks
    assert worker.job_counter == 0
    assert not await redis.exists(in_progress_key_prefix + later)
    await redis.zrem(queue_key(QUEUE_MAINTENANCE), later)
    await redis.delete(job_key_prefix + later)


async def test_o2_a_claimed_job_is_marked_in_progress_for_its_timeout(
    settings: Settings, redis: ArqRedis
) -> None:
    await _drained(settings)
    [due] = await _enqueue(redis, 1)
    worker = _polling_worker(settings, redis, _never_run)
    await worker.start_jobs([due.encode()])
    assert list(worker.tasks) == [due]
    await worker.tasks[due]
    ttl = await redis.pttl(in_progress_key_prefix + due)
    assert 0 < ttl <= worker.in_progress_timeout_s * 1000
    # A second claim, by this worker or another, is refused while the mark lives.
    other = _polling_worker(settings, redis)
    await other.start_jobs([due.encode()])
    assert not other.tasks
    await redis.delete(in_progress_key_prefix + due)
    assert await run_worker(settings, QUEUE_MAINTENANCE) == 1


async def _never_run(job_id: str, score: int) -> None:
    """Ends at once: the job is claimed and marked, never run."""


async def test_o2_a_job_running_here_is_passed_over_without_a_round_trip(
    settings: Settings, redis: ArqRedis
) -> None:
    await _drained(settings)
    [running] = await _enqueue(redis, 1)
    release = asyncio.Event()

    async def held_open(job_id: str, score: int) -> None:
        await release.wait()

    worker = _polling_worker(settings, redis, held_open)
    await worker.start_jobs([running.encode()])
    assert worker.job_counter == 1
    before = await _commands(redis, "evalsha")
    await worker.start_jobs([running.encode()])  # the next poll meets it again
    assert await _commands(redis, "evalsha") == before
    assert worker.job_counter == 1
    release.set()
    await worker.tasks[running]
    await redis.delete(in_progress_key_prefix + running)
    assert await run_worker(settings, QUEUE_MAINTENANCE) == 1


async def test_o2_claim_and_enqueue_take_one_round_trip_each(
    settings: Settings, redis: ArqRedis
) -> None:
    await _enqueue(redis, 1)  # both scripts loaded: a first EVALSHA may meet NOSCRIPT
    await _drained(settings)
    before = await _commands(redis, "watch", "evalsha")
    ids = await _enqueue(redis, 5)
    assert await run_worker(settings, QUEUE_MAINTENANCE) == len(ids)
    after = await _commands(redis, "watch", "evalsha")
    assert after["watch"] == before["watch"]
    assert after["evalsha"] - before["evalsha"] == 2 * len(ids)


async def test_s4_enqueue_is_once_per_id_while_the_job_or_its_result_exists(
    settings: Settings, redis: ArqRedis
) -> None:
    await _drained(settings)
    queue = JobQueue(redis)
    job_id = str(uuid4())
    payload = {"user_id": str(uuid4()), "reason": "dedupe", "count": 1}
    assert await queue.enqueue(JOB_BACKUP_CODES_INVALIDATE, payload, job_id, QUEUE_MAINTENANCE)
    assert not await queue.enqueue(JOB_BACKUP_CODES_INVALIDATE, payload, job_id, QUEUE_MAINTENANCE)
    # Counted by the job's own result: another test's late job may share the worker's run.
    assert await run_worker(settings, QUEUE_MAINTENANCE) >= 1
    assert await redis.exists(result_key_prefix + job_id)  # the maintenance queue keeps results
    result = await Job(job_id, redis, _deserializer=deserialize).result_info()
    assert result is not None
    assert result.job_try == 1
    assert not await queue.enqueue(JOB_BACKUP_CODES_INVALIDATE, payload, job_id, QUEUE_MAINTENANCE)
    assert await redis.zcard(queue_key(QUEUE_MAINTENANCE)) == 0


async def test_s4_enqueue_survives_redis_forgetting_its_scripts(
    settings: Settings, redis: ArqRedis
) -> None:
    """A restarted Redis has no scripts cached: the relay loads its script again."""
    await _drained(settings)
    queue = JobQueue(redis)
    payload = {"user_id": str(uuid4()), "reason": "restart", "count": 1}
    assert await queue.enqueue(
        JOB_BACKUP_CODES_INVALIDATE, payload, str(uuid4()), QUEUE_MAINTENANCE
    )
    await redis.script_flush()
    assert await queue.enqueue(
        JOB_BACKUP_CODES_INVALIDATE, payload, str(uuid4()), QUEUE_MAINTENANCE
    )
    await redis.script_flush()  # and the workers' claim script too
    assert await run_worker(settings, QUEUE_MAINTENANCE) == 2


async def test_w1_a_job_that_ends_cancelled_does_not_stop_the_worker_closing(
    settings: Settings,
) -> None:
    """Stopping cancels the running jobs. One cancelled outside its function (in arq's own
    bookkeeping after it) ends in CancelledError, which arq's close let escape: the shutdown
    hook and the pool's close were skipped, and `kanmon dev` exited 1 after Ctrl-C."""
    options = worker_options(settings, QUEUE_MAINTENANCE)
    hook = options["on_shutdown"]
    shut_down: list[bool] = []

    async def on_shutdown(ctx: dict[str, object]) -> None:
        shut_down.append(True)
        await hook(ctx)

    options["on_shutdown"] = on_shutdown
    worker = KanmonWorker(**options, burst=True, handle_signals=False)
    worker.cron_jobs = []
    await worker.main()  # started up; its queue drained
    worker.tasks["in arq's bookkeeping"] = asyncio.create_task(asyncio.Event().wait())

    await worker.close()

    assert shut_down == [True]
    await worker.close()  # a second close does nothing
    assert shut_down == [True]
