"""P2, S4: a login request made while Redis is unreachable is not lost: its outbox row stays
undispatched, the sweeper sends it once Redis answers, and the device gets its push once."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from redis.asyncio.connection import ConnectionPool

from gateway.accounts.clients import ClientKind
from gateway.accounts.service import Client
from gateway.container import Services
from gateway.core.jobs import JOB_PUSH_FAN_OUT
from gateway.core.outbox import OutboxMessage, OutboxRelay
from gateway.core.uow import UnitOfWorkFactory
from gateway.factors.push.models import LoginRequest
from gateway.login.service import ChallengeView
from gateway.settings import Settings
from tests.conftest import run_worker
from tests.fakes.fcm import FakeFcm
from tests.graphql_client import PASSWORD
from tests.push_helpers import fcm_overrides, push_account

PUSH = "push"


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm(project_id="kanmon-outage") as fake:
        yield fake


def _unreachable_redis() -> ArqRedis:
    pool = ConnectionPool(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    return ArqRedis(connection_pool=pool)


async def test_p2_s4_request_made_while_redis_is_down_is_swept_and_pushed_once(
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fcm: FakeFcm,
    tmp_path: Path,
) -> None:
    await run_worker(settings, PUSH)  # leftovers of other tests go out without FCM
    account = await push_account(client)
    broken = _unreachable_redis()
    # Redis goes away between the commit and the hand-off to arq.
    outage = dataclasses.replace(services, uow=UnitOfWorkFactory(OutboxRelay(broken), broken))
    try:
        async with outage.uow() as work:
            outcome = await outage.login.login(
                account.username, PASSWORD, Client(ClientKind.WEB, "Firefox", None), work
            )
    finally:
        await broken.aclose()
    challenge = outcome.unwrap()
    assert isinstance(challenge, ChallengeView)
    request = await LoginRequest.get(challenge_id=challenge.id)
    row = await OutboxMessage.get(id=request.id)
    assert (row.job_name, row.dispatched_at) == (JOB_PUSH_FAN_OUT, None)

    with_fcm = settings.model_copy(update=fcm_overrides(fcm, tmp_path, "kanmon-outage"))
    await run_worker(with_fcm, PUSH)
    assert fcm.sent_to(account.apps[0].push_token) == []

    assert await services.relay.sweep(older_than=timedelta(0)) >= 1
    await run_worker(with_fcm, PUSH)
    [message] = fcm.sent_to(account.apps[0].push_token)
    assert message.data == {"type": "login_request", "request_id": str(request.id)}

    # A second sweep finds nothing left, and the job does not push twice.
    await services.relay.sweep(older_than=timedelta(0))
    await run_worker(with_fcm, PUSH)
    assert len(fcm.sent_to(account.apps[0].push_token)) == 1
