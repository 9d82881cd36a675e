"""The arq worker every Kanmon process runs: arq's own, with a job's claim in one round trip.

arq claims a job under WATCH (is it running elsewhere? is it still queued, and due?) and marks it
in progress in MULTI/EXEC: four Redis round trips per job, a third of a push worker's Redis
traffic and about a tenth of its CPU per fan-out job on a 2-core machine. The script below makes
the same checks and the same mark atomically, and a job this worker is running is passed over
without asking Redis (a job stays in the queue until it ends, so each poll meets the running ones
again). Everything else (polling, running, retries, results, health checks, shutdown) is arq's,
but for `close`, which runs the shutdown hook also when Redis is gone, for losing Redis while
running, which arq ends the worker on and this one waits out (workers.redis_loss), and for the
worker's own pool, whose commands are bounded as the gateway's are (`main`).
`start_jobs` follows arq 0.28's line for line but for the claim; tests/test_worker_claim.py fails
when arq's own changes, so an upgrade is reviewed."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.container import bounded_pool
from workers.redis_loss import REDIS_LOST, RedisLoss

log = logging.getLogger(__name__)

# KEYS: in-progress key, queue. ARGV: job id, in-progress ttl (ms), now (ms).
# Returns the job's score, or nothing when it is running elsewhere, gone, or not yet due.
_CLAIM = """
if redis.call('exists', KEYS[1]) == 1 then return false end
local score = redis.call('zscore', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[3]) then return false end
redis.call('psetex', KEYS[1], ARGV[2], '1')
return score
"""


class KanmonWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claim: AsyncScript | None = None
        self._closed = False
        self._redis = RedisLoss()

    async def close(self) -> None:
        """arq removes its health key before `on_shutdown`: with Redis gone (often why the
        worker stops) that raises first, the hook never runs, and an open SQLite connection's
        thread then keeps the process from exiting. The hook runs regardless.

        arq's close also cancels the running jobs, then gathers them without
        return_exceptions: a job cancelled outside its function (in arq's shielded
        `finish_job`) ends in CancelledError, which that gather raised, skipping the hook and
        the pool's close; `kanmon dev` then exited 1 after Ctrl-C when started with SIGINT
        ignored (CI, background jobs). The jobs are cancelled and awaited here first, so arq's
        gather finds none left. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)  # what arq's close does first
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        try:
            await super().close()
        except RedisError:
            log.warning("worker closing without Redis")
            if self.on_shutdown is not None:
                await self.on_shutdown(self.ctx)
            raise

    async def main(self) -> None:
        """arq's, on a pool of its own that gives up on each command after the gateway's bound
        (container.REDIS_COMMAND_TIMEOUT_SECONDS), built once Redis answers. arq's pool had no
        read timeout: a frozen Redis (accepting connections, answering nothing) held its
        startup ping, or any poll later, for good, where a bounded command raises
        redis' TimeoutError and the poll goes through the Redis-loss path like a refused one.

        At startup the worker waits for Redis as it waits out a lost one: it says so once,
        retries with the same growing, jittered wait, and says when Redis answered. Exiting
        instead would only have it restarted into the same wait by its supervisor, with a
        back-off that keeps growing after Redis is back; jobs wait in Redis either way, and a
        signal still stops it at once."""
        if self._pool is None:
            self._pool = await self._answering_pool()
        await super().main()

    async def _answering_pool(self) -> ArqRedis:
        assert self.redis_settings is not None  # arq keeps them when it was given no pool
        pool = bounded_pool(
            self.redis_settings,
            default_queue_name=self.queue_name,
            expires_extra_ms=self.expires_extra_ms,
        )
        try:
            while True:
                try:
                    await pool.ping()
                except REDIS_LOST as error:
                    self._redis.failed(error)
                else:
                    self._redis.answered()
                    return pool
                await asyncio.sleep(self._redis.next_delay())
        except BaseException:
            await pool.aclose()
            raise

    async def _poll_iteration(self) -> None:
        """arq's poll, tried again with a growing wait while Redis cannot be reached, where arq
        let the error end `main` and the worker with it. Only a signal (which cancels the wait)
        or a burst's end stops the worker. Nothing is lost by retrying the whole poll: it reads
        the queue afresh, and the claim script, gone with a restarted Redis, is loaded again on
        NOSCRIPT by redis-py."""
        while True:
            try:
                await super()._poll_iteration()
            except REDIS_LOST as error:
                self._redis.failed(error)
                # Recorded as soon as Redis answers: one that restarted empty lost the key, and
                # `kanmon admin queues` would show no live worker until the next interval.
                self._last_health_check = 0
            else:
                self._redis.answered()
                return
            await asyncio.sleep(self._redis.next_delay())

    async def run_job(self, job_id: str, score: int) -> None:
        """A job whose bookkeeping (reading it, recording its end) met a lost Redis ends here,
        counted in the outage's report, rather than raising again from arq's next poll once
        Redis is back (which would report the outage twice). Its in-progress mark makes it run
        again after its timeout, or the outbox sweeper re-drives it if Redis came back empty."""
        try:
            await super().run_job(job_id, score)
        except REDIS_LOST as error:
            self._redis.failed(error, job=True)

    def _claim_script(self) -> AsyncScript:
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM)
        return self._claim

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        claim = self._claim_script()
        for job_id_b in job_ids:
            await self.sem.acquire()

            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return

            self.job_counter = self.job_counter + 1

            job_id = job_id_b.decode()
            if job_id in self.tasks and not self.tasks[job_id].done():
                # Running here: a job stays queued until it ends, so every poll meets it again.
                self._release_sem_dec_counter_on_complete()
                continue
            ttl_ms = int(self.in_progress_timeout_s * 1000)
            keys = [in_progress_key_prefix + job_id, self.queue_name]
            try:
                score = await claim(keys=keys, args=[job_id, ttl_ms, timestamp_ms()])
            except BaseException:
                # Not started: its slot is free again for the poll that follows (arq's would
                # stay taken, one fewer job at a time after each Redis loss).
                self._release_sem_dec_counter_on_complete()
                raise
            if score is None:
                # running elsewhere, finished and removed, or re-queued for later
                self._release_sem_dec_counter_on_complete()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
