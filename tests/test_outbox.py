"""S4 for the foundation's jobs: an outbox row commits with the change, the relay hands it to
arq after commit, the sweeper re-sends what a Redis outage kept from being dispatched, and the
redrive re-sends what Redis lost after dispatch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple
from uuid import UUID, uuid4

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from redis.asyncio.connection import ConnectionPool

from gateway.container import Services, build_services, redis_client
from gateway.core.audit import SecurityEvent
from gateway.core.clock import utc_now
from gateway.core.jobs import JOB_BACKUP_CODES_INVALIDATE, QUEUE_MAINTENANCE, JobRequest
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.core.uow import UnitOfWorkFactory
from gateway.dev import start_embedded_redis
from gateway.factors.push.models import LoginRequest, PushSend
from gateway.settings import Settings
from tests.conftest import FAST_PASSWORDS, run_worker
from tests.fakes.fcm import QUOTA_EXCEEDED, FakeFcm
from tests.push_helpers import api, fcm_overrides, login, push_account, unique_push_token
from workers.redrive import REDRIVE_AFTER, redrive_lost_jobs
from workers.settings import JOB_OUTBOX_REDRIVE, worker_options


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


# S4: Redis loses a job after dispatch ------------------------------------------------------


@pytest.fixture
async def lossy_redis() -> AsyncIterator[tuple[str, ArqRedis]]:
    """A Redis-compatible server of this test's own, which it may empty."""
    server, url = start_embedded_redis()
    client = redis_client(url)
    try:
        yield url, client
    finally:
        await client.aclose()
        server.terminate()


def test_s4_the_maintenance_worker_runs_the_redrive_every_minute(settings: Settings) -> None:
    crons = {c.name: c for c in worker_options(settings, QUEUE_MAINTENANCE)["cron_jobs"]}
    assert crons[JOB_OUTBOX_REDRIVE].second == {45}


class LossyPush(NamedTuple):
    """The real services with FCM pointed at a fake, on a Redis of the test's own."""

    fcm: FakeFcm
    settings: Settings
    services: Services
    redis: ArqRedis


@pytest.fixture
async def lossy_push(
    settings: Settings, lossy_redis: tuple[str, ArqRedis], tmp_path: Path
) -> AsyncIterator[LossyPush]:
    url, client = lossy_redis
    async with FakeFcm(project_id="kanmon-test") as fcm:
        custom = settings.model_copy(update={"redis_url": url, **fcm_overrides(fcm, tmp_path)})
        services = build_services(custom, client, passwords=FAST_PASSWORDS)
        try:
            yield LossyPush(fcm, custom, services, client)
        finally:
            await services.close()


async def dispatched_long_ago(request: LoginRequest) -> None:
    """Moves the request and its fan-out's outbox row past the re-drive's quiet time."""
    then = utc_now() - REDRIVE_AFTER - timedelta(minutes=1)
    await LoginRequest.filter(id=request.id).update(created_at=then)
    await OutboxMessage.filter(id=request.id).update(dispatched_at=then)


async def test_s4_p2_a_fan_out_redis_lost_after_dispatch_is_redriven_and_pushed_once(
    lossy_push: LossyPush,
) -> None:
    fcm, custom, services, client = lossy_push
    async with api(services) as http:
        account = await push_account(http)
        challenge = await login(http, account.username)
    request = await LoginRequest.get(challenge_id=UUID(challenge["id"]))
    job_key = job_key_prefix + str(request.id)
    assert await client.exists(job_key)

    await client.flushdb()  # this test's own server only
    assert await run_worker(custom, "push") == 0
    await redrive_lost_jobs(services)
    assert not await client.exists(job_key), "too soon after dispatch"

    await dispatched_long_ago(request)
    await redrive_lost_jobs(services)
    assert await client.exists(job_key)
    await redrive_lost_jobs(services)  # queued: arq refuses a second copy
    assert await run_worker(custom, "push") >= 1
    # Its sends are recorded (and its result is kept): never again.
    await redrive_lost_jobs(services)
    assert not await client.exists(job_key)
    await run_worker(custom, "push")
    assert len(fcm.requests_to(account.app.push_token)) == 1
    (send,) = await PushSend.filter(request_id=request.id)
    assert (send.outcome, send.attempts) == ("sent", 1)


async def test_s4_p2_a_fan_out_retry_redis_lost_is_redriven_for_the_failed_device_only(
    lossy_push: LossyPush,
) -> None:
    """The first try reached one device and failed transiently for the other; Redis then lost
    the deferred retry. The re-drive starts the job again at try 1, and it sends to the device
    still owed a message, not to the one that has it."""
    fcm, custom, services, client = lossy_push
    failing, fine = unique_push_token("quota"), unique_push_token("fine")
    fcm.script(failing, QUOTA_EXCEEDED)
    async with api(services) as http:
        account = await push_account(http, push_tokens=[failing, fine])
        challenge = await login(http, account.username)
    request = await LoginRequest.get(challenge_id=UUID(challenge["id"]))
    await run_worker(custom, "push", max_jobs=1)  # the first try; its retry is deferred
    assert len(fcm.requests_to(failing)) == 1
    assert len(fcm.requests_to(fine)) == 1
    await client.flushdb()  # this test's own server only: the retry is lost

    await dispatched_long_ago(request)
    assert await redrive_lost_jobs(services) == 1
    assert await run_worker(custom, "push") >= 1
    # Both settled now: nothing more to re-drive.
    await dispatched_long_ago(request)
    assert await redrive_lost_jobs(services) == 0
    assert [m.data["request_id"] for m in fcm.sent_to(failing)] == [str(request.id)]
    assert len(fcm.requests_to(failing)) == 2
    assert len(fcm.requests_to(fine)) == 1
    sends = {row.device_id: row for row in await PushSend.filter(request_id=request.id)}
    by_token = {app.push_token: sends[UUID(app.device_id)] for app in account.apps}
    assert (by_token[failing].outcome, by_token[failing].attempts) == ("sent", 2)
    assert (by_token[fine].outcome, by_token[fine].attempts) == ("sent", 1)
