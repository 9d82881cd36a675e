"""Push fatigue (P10): at most 3 pending login requests per account; 3 consecutive denials or
expiries pause push for an hour, tell the user on another channel, and an approval resets the
count. Time moves on a MovableClock (make_services(clock=...)); the app is the real GraphQL one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pyotp
import pytest

from gateway.container import Services
from gateway.core.jobs import JOB_NOTICE_SEND, QUEUE_MAINTENANCE
from gateway.core.notices import Notice
from gateway.factors.push.models import LoginRequest, LoginRequestStatus
from tests.conftest import MovableClock
from tests.push_helpers import (
    OK,
    PushAccount,
    api,
    approve,
    code_of,
    deny,
    login,
    outbox_rows,
    push_account,
    request_node,
    settings_of,
    verify,
)

PAUSE_SECONDS = 3600
WITHOUT_PUSH = ["APP_CODE", "BACKUP_CODE"]


@dataclass
class Clocked:
    clock: MovableClock
    services: Services
    http: httpx.AsyncClient


@pytest.fixture
async def clocked(
    make_services: Callable[..., Services], clock: MovableClock
) -> AsyncIterator[Clocked]:
    services = make_services(clock=clock)
    async with api(services) as http:
        yield Clocked(clock, services, http)


async def requests_of(account: PushAccount) -> int:
    return await LoginRequest.filter(user_id=account.user_id).count()


async def pause_notices(account: PushAccount) -> int:
    rows = await outbox_rows(
        JOB_NOTICE_SEND, user_id=str(account.user_id), notice=Notice.PUSH_PAUSED.value
    )
    assert all(row.queue == QUEUE_MAINTENANCE for row in rows)
    return len(rows)


async def login_and_deny(http: httpx.AsyncClient, account: PushAccount) -> dict[str, Any]:
    challenge = await login(http, account.username)
    assert challenge["methods"][0] == "PUSH", challenge
    node = await request_node(http, account.app.token, challenge)
    assert code_of(await deny(http, account.app, node)) == OK
    return challenge


async def login_and_approve(http: httpx.AsyncClient, account: PushAccount) -> dict[str, Any]:
    challenge = await login(http, account.username)
    assert challenge["methods"][0] == "PUSH", challenge
    node = await request_node(http, account.app.token, challenge)
    assert code_of(await approve(http, account.app, node, challenge["matchNumber"])) == OK
    return challenge


async def assert_push_offered(http: httpx.AsyncClient, account: PushAccount) -> None:
    before = await requests_of(account)
    challenge = await login(http, account.username)
    assert challenge["methods"] == ["PUSH", *WITHOUT_PUSH], challenge
    assert challenge["matchNumber"] is not None
    assert await requests_of(account) == before + 1


async def assert_push_not_offered(http: httpx.AsyncClient, account: PushAccount) -> None:
    before = await requests_of(account)
    challenge = await login(http, account.username)
    assert challenge["methods"] == WITHOUT_PUSH, challenge
    assert challenge["matchNumber"] is None
    assert await requests_of(account) == before
    assert await LoginRequest.filter(challenge_id=UUID(challenge["id"])).count() == 0


async def expire_due(services: Services) -> None:
    async with services.uow() as work:
        await services.approvals.expire_due(work)


# At most 3 pending ---------------------------------------------------------------------------


async def test_p10_at_most_three_pending_requests_per_account(clocked: Clocked) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    challenges = [await login(http, account.username) for _ in range(3)]
    assert all(c["methods"][0] == "PUSH" for c in challenges)
    assert await requests_of(account) == 3

    # The 4th login: no request, no PUSH; the other methods still complete it.
    fourth = await login(http, account.username)
    assert fourth["methods"] == WITHOUT_PUSH
    assert fourth["matchNumber"] is None
    assert await requests_of(account) == 3
    assert await LoginRequest.filter(challenge_id=UUID(fourth["id"])).count() == 0
    code = pyotp.TOTP(account.app.login_code_secret).at(clock.now)
    assert code_of(await verify(http, fourth, "APP_CODE", code)) == OK

    # An answered request frees its slot...
    node = await request_node(http, account.app.token, challenges[0])
    assert code_of(await approve(http, account.app, node, challenges[0]["matchNumber"])) == OK
    await assert_push_offered(http, account)
    await assert_push_not_offered(http, account)
    # ...and so does time: requests past their expiry are not pending any more.
    clock.advance(clocked.services.settings.challenge_ttl_seconds)
    await assert_push_offered(http, account)


async def test_p10_twenty_concurrent_logins_open_three_requests(
    make_services: Callable[..., Services],
) -> None:
    """A push-bombing script logs in many times at once: the limit holds under the race (on
    PostgreSQL the logins run in parallel transactions). The password throttle would hold
    part of such a burst back itself (L3: checks in flight count toward its limit); it is
    raised here so that all twenty reach the pending-request limit."""
    services = make_services(login_failures_per_account=50)
    async with api(services) as client:
        account = await push_account(client)
        challenges = await asyncio.gather(*(login(client, account.username) for _ in range(20)))

    assert await requests_of(account) == 3
    offered = [c for c in challenges if c["methods"][0] == "PUSH"]
    assert len(offered) == 3
    assert all(c["methods"] == WITHOUT_PUSH for c in challenges if c not in offered)


async def test_p10_the_pending_limit_is_per_account(client: httpx.AsyncClient) -> None:
    busy = await push_account(client)
    calm = await push_account(client)
    for _ in range(3):
        await login(client, busy.username)
    await assert_push_not_offered(client, busy)
    await assert_push_offered(client, calm)


# Three consecutive denials or expiries ------------------------------------------------------


async def test_p10_three_consecutive_denials_pause_push_for_an_hour_and_tell_the_user(
    clocked: Clocked,
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    bystander = await push_account(http)
    for denied in range(1, 4):
        await login_and_deny(http, account)
        assert await pause_notices(account) == (1 if denied == 3 else 0)

    # Paused: login falls back to the other methods; the device is still enrolled.
    await assert_push_not_offered(http, account)
    assert len((await settings_of(http, account.app.token))["devices"]) == 1
    # Only this account is paused.
    await assert_push_offered(http, bystander)

    clock.advance(PAUSE_SECONDS - 1)
    await assert_push_not_offered(http, account)
    clock.advance(1)
    await assert_push_offered(http, account)
    assert await pause_notices(account) == 1


async def test_p10_three_expiries_pause_push_and_tell_the_user(clocked: Clocked) -> None:
    http, clock, services = clocked.http, clocked.clock, clocked.services
    account = await push_account(http)
    challenges = [await login(http, account.username) for _ in range(3)]
    assert all(c["methods"][0] == "PUSH" for c in challenges)

    clock.advance(services.settings.challenge_ttl_seconds)
    await expire_due(services)
    rows = await LoginRequest.filter(user_id=account.user_id)
    assert {row.status for row in rows} == {LoginRequestStatus.EXPIRED}
    assert await pause_notices(account) == 1

    await assert_push_not_offered(http, account)
    clock.advance(PAUSE_SECONDS)
    await assert_push_offered(http, account)


async def test_p10_denials_and_expiries_count_together(clocked: Clocked) -> None:
    http, clock, services = clocked.http, clocked.clock, clocked.services
    account = await push_account(http)
    await login_and_deny(http, account)
    await login_and_deny(http, account)
    assert await pause_notices(account) == 0
    await login(http, account.username)
    clock.advance(services.settings.challenge_ttl_seconds)
    await expire_due(services)
    assert await pause_notices(account) == 1
    await assert_push_not_offered(http, account)


async def test_p10_a_denial_by_three_wrong_numbers_counts(clocked: Clocked) -> None:
    http = clocked.http
    account = await push_account(http)
    await login_and_deny(http, account)
    await login_and_deny(http, account)
    challenge = await login(http, account.username)
    node = await request_node(http, account.app.token, challenge)
    wrong = [n for n in range(10, 100) if n != challenge["matchNumber"]][:3]
    for number in wrong:
        assert code_of(await approve(http, account.app, node, number)) == "MATCH_NUMBER_MISMATCH"
    assert (await LoginRequest.get(id=UUID(node["id"]))).status is LoginRequestStatus.DENIED
    assert await pause_notices(account) == 1
    await assert_push_not_offered(http, account)


async def test_p10_an_approval_resets_the_count(clocked: Clocked) -> None:
    http = clocked.http
    account = await push_account(http)
    await login_and_deny(http, account)
    await login_and_deny(http, account)
    await login_and_approve(http, account)
    await login_and_deny(http, account)
    await login_and_deny(http, account)
    # 2 denials, an approval, 2 denials: never 3 in a row.
    assert await pause_notices(account) == 0
    challenge = await login(http, account.username)
    assert challenge["methods"][0] == "PUSH"
    # The third consecutive one pauses.
    node = await request_node(http, account.app.token, challenge)
    assert code_of(await deny(http, account.app, node)) == OK
    assert await pause_notices(account) == 1
    await assert_push_not_offered(http, account)


async def test_p10_completing_with_a_code_does_not_count_as_an_expiry(clocked: Clocked) -> None:
    """A request closed because its challenge was completed another way is EXPIRED, but the
    user did log in: it must not push the account toward a pause."""
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    totp = pyotp.TOTP(account.app.login_code_secret)
    for _ in range(3):
        challenge = await login(http, account.username)
        assert challenge["methods"][0] == "PUSH"
        assert code_of(await verify(http, challenge, "APP_CODE", totp.at(clock.now))) == OK
        clock.advance(30)
    assert await pause_notices(account) == 0
    await assert_push_offered(http, account)
