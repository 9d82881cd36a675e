"""Transactional outbox (S4): jobs are rows written with the change that caused them, handed
to arq only after commit by the relay, re-sent by the sweeper if that hand-off was lost, and
re-driven if Redis lost the job after the hand-off."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from redis.asyncio import Redis
from tortoise import fields
from tortoise.models import Model

from gateway.core.clock import utc_now
from gateway.core.job_queue import JobQueue
from gateway.core.jobs import JobRequest

log = logging.getLogger(__name__)


class OutboxMessage(Model):
    id = fields.UUIDField(primary_key=True)
    queue = fields.CharField(max_length=32)
    job_name = fields.CharField(max_length=64)
    payload: fields.JSONField[dict[str, Any]] = fields.JSONField()
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    dispatched_at = fields.DatetimeField(null=True, db_index=True)
    dispatch_attempts = fields.IntField(default=0)

    class Meta:
        table = "outbox_messages"


async def add(job: JobRequest) -> OutboxMessage:
    """Writes the row on the current connection: inside a transaction it commits with it."""
    row_id = UUID(job.job_id) if job.job_id else uuid4()
    return await OutboxMessage.create(
        id=row_id, queue=job.queue, job_name=job.name, payload=job.payload
    )


class OutboxRelay:
    def __init__(self, redis: Redis) -> None:
        self._queue = JobQueue(redis)

    async def dispatch(self, messages: list[OutboxMessage]) -> int:
        """Enqueues each message with its row id as the arq job id, so a message dispatched
        twice (relay, then sweeper) is one job while it or its result exists."""
        done = []
        for message in messages:
            try:
                await self._queue.enqueue(
                    message.job_name, message.payload, str(message.id), message.queue
                )
            except Exception:  # Redis down: the sweeper retries; the row is the source of truth.
                log.warning("outbox dispatch failed", extra={"outbox_id": str(message.id)})
                await OutboxMessage.filter(id=message.id).update(
                    dispatch_attempts=message.dispatch_attempts + 1
                )
                continue
            done.append(message.id)
        if done:
            await OutboxMessage.filter(id__in=done).update(dispatched_at=utc_now())
        return len(done)

    async def sweep(self, older_than: timedelta, limit: int = 500) -> int:
        cutoff = utc_now() - older_than
        stuck = (
            await OutboxMessage.filter(dispatched_at__isnull=True, created_at__lt=cutoff)
            .order_by("created_at")
            .limit(limit)
        )
        return await self.dispatch(stuck)

    async def redrive(self, ids: Collection[UUID], dispatched_before: datetime) -> int:
        """S4: enqueues again the rows `ids`, dispatched before `dispatched_before`, whose work
        the caller found unfinished in the database. Redis may have lost their jobs after the
        hand-off (a restart without persistence, the last second of an AOF). The same job id is
        used, and arq's rule holds: while the job or its kept result is in Redis nothing is
        enqueued, so a job still queued, deferred for a retry, running or finished is never
        doubled. Returns how many jobs were enqueued again."""
        if not ids:
            return 0
        rows = await OutboxMessage.filter(id__in=list(ids), dispatched_at__lt=dispatched_before)
        redriven = 0
        for row in rows:
            try:
                added = await self._queue.enqueue(row.job_name, row.payload, str(row.id), row.queue)
            except Exception:  # Redis down: the next run tries again.
                log.warning("outbox redrive failed", extra={"outbox_id": str(row.id)})
                continue
            if not added:
                continue
            redriven += 1
            log.warning(
                "outbox job lost by Redis enqueued again",
                extra={"outbox_id": str(row.id), "job": row.job_name},
            )
            await OutboxMessage.filter(id=row.id).update(dispatched_at=utc_now())
        return redriven
