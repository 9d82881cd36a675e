"""S4 for the foundation's jobs: an outbox row commits with the change, the relay hands it to
arq after commit, and the sweeper re-sends what a Redis outage kept from being dispatched."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

from arq.connections import ArqRedis
from redis.asyncio.connection import ConnectionPool

from gateway.container import Services
from gateway.core.audit import SecurityEvent
from gateway.core.jobs import JOB_BACKUP_CODES_INVALIDATE, QUEUE_MAINTENANCE, JobRequest
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.core.uow import UnitOfWorkFactory
from gateway.settings import Settings
from tests.conftest import run_worker


def _job(user_id: str) -> JobRequest:
    return JobRequest(
        name=JOB_BACKUP_CODES_INVALIDATE,
        queue=QUEUE_MAINTENANCE,
        payload={"user_id": user_id, "reason": "test", "count": 1},
    )


def _unreachable_redis() -> ArqRedis:
    """A client for a port nothing listens on: every command fails like a Redis outage."""
    pool = ConnectionPool(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    return ArqRedis(connection_pool=pool)


async def test_s4_row_commits_with_the_change_and_the_relay_dispatches_it(
    services: Services, settings: Settings
) -> None:
    user_id = str(uuid4())
    async with services.uow() as work:
        await work.enqueue(_job(user_id))
    row = await OutboxMessage.get(id=work.pending[0].id)
    assert row.dispatched_at is not None
    assert await run_worker(settings, QUEUE_MAINTENANCE) >= 1
    assert await SecurityEvent.filter(user_id=user_id, kind="backup_codes.invalidated").count() == 1


async def test_s4_rolled_back_change_leaves_no_outbox_row(services: Services) -> None:
    user_id = str(uuid4())
    try:
        async with services.uow() as work:
            await work.enqueue(_job(user_id))
            raise RuntimeError("the business change failed")
    except RuntimeError:
        pass
    assert await OutboxMessage.filter(id=work.pending[0].id).count() == 0


async def test_s4_sweeper_dispatches_what_a_redis_outage_kept_back(
    services: Services, settings: Settings
) -> None:
    user_id = str(uuid4())
    broken = _unreachable_redis()
    try:
        async with UnitOfWorkFactory(OutboxRelay(broken), broken)() as work:
            await work.enqueue(_job(user_id))
    finally:
        await broken.aclose()
    row = await OutboxMessage.get(id=work.pending[0].id)
    assert row.dispatched_at is None
    assert row.dispatch_attempts == 1

    swept = await services.relay.sweep(older_than=timedelta(0))
    assert swept >= 1
    assert (await OutboxMessage.get(id=row.id)).dispatched_at is not None
    await run_worker(settings, QUEUE_MAINTENANCE)
    assert await SecurityEvent.filter(user_id=user_id, kind="backup_codes.invalidated").count() == 1


async def test_s4_a_message_dispatched_twice_runs_once(
    services: Services, settings: Settings
) -> None:
    user_id = str(uuid4())
    async with services.uow() as work:
        await work.enqueue(_job(user_id))
    row = work.pending[0]
    # The relay's bookkeeping was lost (process died after enqueue): the sweeper sends it again.
    await OutboxMessage.filter(id=row.id).update(dispatched_at=None)
    await services.relay.sweep(older_than=timedelta(0))
    await run_worker(settings, QUEUE_MAINTENANCE)
    assert await SecurityEvent.filter(user_id=user_id, kind="backup_codes.invalidated").count() == 1
