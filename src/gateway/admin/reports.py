"""O1: what operators look at when logins stall: the outbox backlog, stuck SMS, queue depth.

Read-only except `replay_outbox`, which hands stuck outbox rows to arq now (the sweeper's job,
S4, on demand). Nothing here returns a phone number or a message body: numbers are masked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from redis.asyncio import Redis
from tortoise.queryset import QuerySet

from gateway.core.clock import utc_now
from gateway.core.jobs import QUEUES, queue_key
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.factors.sms.models import SmsMessage, SmsStatus
from gateway.factors.sms.phones import mask

SWEEP_BATCH = 500
STUCK_SMS_STATUSES = (SmsStatus.QUEUED, SmsStatus.SENDING)


def health_check_key(queue: str) -> str:
    """The key a running arq worker of `queue` refreshes (workers.settings sets the same)."""
    return f"{queue_key(queue)}:health-check"


def _age(created_at: datetime, now: datetime) -> timedelta:
    return max(now - created_at, timedelta(0))


# Outbox (S4) -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxBacklog:
    queue: str
    undispatched: int
    oldest_age: timedelta | None


@dataclass(frozen=True)
class StuckOutboxRow:
    id: UUID
    queue: str
    job_name: str
    age: timedelta
    attempts: int


async def outbox_backlog() -> list[OutboxBacklog]:
    """Undispatched rows per queue (every known queue, also when empty) and the oldest's age."""
    now = utc_now()
    pending = OutboxMessage.filter(dispatched_at__isnull=True)
    names = set(await pending.distinct().values_list("queue", flat=True))
    found = []
    for queue in [*QUEUES, *sorted(str(n) for n in names - set(QUEUES))]:
        rows = pending.filter(queue=queue)
        count = await rows.count()
        oldest = await rows.order_by("created_at").first() if count else None
        found.append(OutboxBacklog(queue, count, _age(oldest.created_at, now) if oldest else None))
    return found


def _stuck_rows(older_than: timedelta, now: datetime) -> QuerySet[OutboxMessage]:
    return OutboxMessage.filter(dispatched_at__isnull=True, created_at__lt=now - older_than)


async def stuck_outbox(older_than: timedelta, limit: int = 50) -> tuple[list[StuckOutboxRow], int]:
    """Rows not handed to arq `older_than` after they committed: the oldest `limit`, and how
    many there are in all."""
    now = utc_now()
    query = _stuck_rows(older_than, now)
    total = await query.count()
    rows = await query.order_by("created_at").limit(limit)
    return [
        StuckOutboxRow(r.id, r.queue, r.job_name, _age(r.created_at, now), r.dispatch_attempts)
        for r in rows
    ], total


@dataclass(frozen=True)
class Replay:
    dispatched: int
    remaining: int


async def replay_outbox(relay: OutboxRelay, older_than: timedelta) -> Replay:
    """S4 on demand: dispatches every stuck row now (arq's `_job_id` keeps a row that was in
    fact delivered from running twice); `remaining` counts rows still stuck afterwards."""
    dispatched = 0
    while True:
        sent = await relay.sweep(older_than, limit=SWEEP_BATCH)
        dispatched += sent
        if sent < SWEEP_BATCH:
            break
    remaining = await _stuck_rows(older_than, utc_now()).count()
    return Replay(dispatched, remaining)


# SMS (S3, S4) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StuckSms:
    id: UUID
    status: SmsStatus
    attempts: int
    provider: str | None
    error_code: str | None
    masked_number: str
    age: timedelta


async def stuck_sms(older_than: timedelta, limit: int = 100) -> tuple[list[StuckSms], int]:
    """Messages still QUEUED or SENDING `older_than` after they were created, oldest first, and
    how many there are in all. The number is masked; the body is never read."""
    now = utc_now()
    query = SmsMessage.filter(status__in=STUCK_SMS_STATUSES, created_at__lt=now - older_than)
    total = await query.count()
    rows = (
        await query.order_by("created_at")
        .limit(limit)
        .only("id", "status", "attempts", "provider", "error_code", "to_number", "created_at")
    )
    return [
        StuckSms(
            r.id,
            r.status,
            r.attempts,
            r.provider,
            r.error_code,
            mask(r.to_number),
            _age(r.created_at, now),
        )
        for r in rows
    ], total


# arq queues (O2) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    depth: int
    # The longest a job that is due has waited; deferred jobs are counted but not due yet.
    oldest_due_age: timedelta | None
    worker_alive: bool


async def queue_depths(redis: Redis) -> list[QueueDepth]:
    """Per queue: jobs in arq's sorted set (scores are due times in ms), the oldest due job's
    wait, and whether a worker's health-check key is there (it expires unless refreshed)."""
    now_ms = time.time() * 1000
    found = []
    for queue in QUEUES:
        key = queue_key(queue)
        depth = int(await redis.zcard(key))
        oldest = await redis.zrangebyscore(key, "-inf", now_ms, start=0, num=1, withscores=True)
        age = timedelta(milliseconds=now_ms - float(oldest[0][1])) if oldest else None
        alive = bool(await redis.exists(health_check_key(queue)))
        found.append(QueueDepth(queue, depth, age, alive))
    return found
