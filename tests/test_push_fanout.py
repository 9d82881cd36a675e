"""The push fan-out end to end (P2, P10): a login creates a request, the relay queues
`push.fan_out`, a real arq worker (burst mode) sends one FCM data message per device to FakeFcm
(real HTTP, FCM v1 errors), switches dead tokens off and retries only the devices that failed
transiently."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from gateway.factors.push.models import Device, LoginRequest, PushSend
from gateway.settings import Settings
from tests.conftest import run_worker
from tests.fakes.fcm import (
    INTERNAL,
    QUOTA_EXCEEDED,
    SENDER_ID_MISMATCH,
    UNAVAILABLE,
    UNREGISTERED,
    FakeFcm,
)
from tests.graphql_client import data
from tests.push_helpers import (
    UPDATE_PUSH_TOKEN,
    PushAccount,
    fcm_overrides,
    login,
    login_requests,
    push_account,
    settings_of,
    unique_push_token,
)
from tests.statements import counted_statements
from workers.settings import PUSH_CONCURRENCY

PUSH = "push"


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm(project_id="kanmon-test") as fake:
        yield fake


@pytest.fixture
async def fcm_settings(settings: Settings, fcm: FakeFcm, tmp_path: Path) -> Settings:
    """The suite's settings with FCM pointed at the fake. Jobs other tests left on the push
    queue are drained first, without FCM, so this test's worker runs only its own."""
    await run_worker(settings, PUSH)
    return settings.model_copy(update=fcm_overrides(fcm, tmp_path))


async def request_id_of(challenge: dict[str, Any]) -> str:
    return str((await LoginRequest.get(challenge_id=UUID(challenge["id"]))).id)


async def sends_of(request_id: str) -> dict[UUID, PushSend]:
    return {row.device_id: row for row in await PushSend.filter(request_id=UUID(request_id))}


async def push_enabled_by_id(http: httpx.AsyncClient, account: PushAccount) -> dict[str, bool]:
    devices = (await settings_of(http, account.app.token))["devices"]
    return {d["id"]: d["pushEnabled"] for d in devices}


async def test_p2_p10_one_data_message_per_device_carrying_only_type_and_request_id(
    client: httpx.AsyncClient, fcm: FakeFcm, fcm_settings: Settings
) -> None:
    account = await push_account(client, devices=2)
    challenge = await login(client, account.username, "WEB", "Firefox")
    request_id = await request_id_of(challenge)
    row = await LoginRequest.get(id=UUID(request_id))

    assert await run_worker(fcm_settings, PUSH) >= 1

    for app in account.apps:
        [message] = fcm.sent_to(app.push_token)
        assert len(fcm.requests_to(app.push_token)) == 1
        assert message.data == {"type": "login_request", "request_id": request_id}
        assert set(message.message) == {"token", "data", "android", "apns"}
        assert message.android["priority"] == "high"
        ttl = int(message.android["ttl"].removesuffix("s"))
        assert 0 < ttl <= 600
        assert message.apns["headers"]["apns-priority"] == "10"
        # Nothing sensitive rides on the push.
        raw = json.dumps(message.message)
        for secret in (row.nonce, "Firefox", account.username):
            assert secret not in raw
    sends = await sends_of(request_id)
    assert {str(d) for d in sends} == {app.device_id for app in account.apps}
    assert all((s.outcome, s.attempts) == ("sent", 1) for s in sends.values())
    assert all(s.sent_at is not None for s in sends.values())

    # The job is done: running the worker again sends nothing more.
    await run_worker(fcm_settings, PUSH)
    assert all(len(fcm.requests_to(app.push_token)) == 1 for app in account.apps)


async def test_p2_a_push_worker_keeps_many_fan_outs_in_flight(
    client: httpx.AsyncClient, fcm: FakeFcm, fcm_settings: Settings
) -> None:
    """FCM is tens of milliseconds away: a worker with few sends in flight (arq's default is 10
    jobs) is capped at that many per round trip to FCM, however idle its CPU."""
    accounts = [await push_account(client) for _ in range(PUSH_CONCURRENCY // 3 + 1)]
    for account in accounts:
        for n in range(3):  # P10: at most 3 pending requests per account
            await login(client, account.username, "WEB", f"browser {n}")
    fcm.hold_answers(PUSH_CONCURRENCY, timeout=10)

    assert await run_worker(fcm_settings, PUSH) == 3 * len(accounts)
    assert fcm.most_held == PUSH_CONCURRENCY
    for account in accounts:
        assert len(fcm.sent_to(account.apps[0].push_token)) == 3
        assert len(fcm.requests_to(account.apps[0].push_token)) == 3  # none retried


async def test_p2_a_first_try_is_two_statements_whatever_the_number_of_devices(
    client: httpx.AsyncClient, fcm: FakeFcm, fcm_settings: Settings
) -> None:
    """README, performance: the job reads the request with its pushable devices in one
    statement and records every send of the batch in one more."""
    account = await push_account(client, devices=3)
    challenge = await login(client, account.username)
    request_id = await request_id_of(challenge)

    with counted_statements() as statements:
        assert await run_worker(fcm_settings, PUSH) >= 1

    assert len(statements) == 2, statements
    assert statements[1].startswith('INSERT INTO "push_sends"')
    sends = await sends_of(request_id)
    assert {str(d) for d in sends} == {app.device_id for app in account.apps}
    assert all((s.outcome, s.attempts) == ("sent", 1) for s in sends.values())
    assert all(len(fcm.sent_to(app.push_token)) == 1 for app in account.apps)


async def test_p2_unregistered_and_sender_id_mismatch_switch_only_that_device_off(
    client: httpx.AsyncClient, fcm: FakeFcm, fcm_settings: Settings
) -> None:
    tokens = [unique_push_token("gone"), unique_push_token("mismatch"), unique_push_token("ok")]
    fcm.answer_always(tokens[0], UNREGISTERED)
    fcm.answer_always(tokens[1], SENDER_ID_MISMATCH)
    account = await push_account(client, push_tokens=tokens)
    gone, mismatch, alive = account.apps
    challenge = await login(client, account.username)
    request_id = await request_id_of(challenge)

    await run_worker(fcm_settings, PUSH)

    assert [m.data["request_id"] for m in fcm.sent_to(alive.push_token)] == [request_id]
    assert len(fcm.requests_to(gone.push_token)) == 1
    assert len(fcm.requests_to(mismatch.push_token)) == 1
    assert await push_enabled_by_id(client, account) == {
        gone.device_id: False,
        mismatch.device_id: False,
        alive.device_id: True,
    }
    reasons = {
        str(d.id): d.push_disabled_reason for d in await Device.filter(user_id=account.user_id)
    }
    assert reasons == {
        gone.device_id: "unregistered",
        mismatch.device_id: "sender_id_mismatch",
        alive.device_id: None,
    }
    sends = await sends_of(request_id)
    assert sends[UUID(gone.device_id)].outcome == "unregistered"
    assert sends[UUID(mismatch.device_id)].outcome == "sender_id_mismatch"
    assert sends[UUID(alive.device_id)].outcome == "sent"

    # The next request goes to the live device only; the dead ones are not tried again.
    nxt = await login(client, account.username)
    assert nxt["methods"][0] == "PUSH"
    await run_worker(fcm_settings, PUSH)
    assert len(fcm.sent_to(alive.push_token)) == 2
    assert len(fcm.requests_to(gone.push_token)) == 1
    assert len(fcm.requests_to(mismatch.push_token)) == 1


async def test_p2_an_account_whose_only_token_died_gets_no_push_but_keeps_2fa(
    client: httpx.AsyncClient, fcm: FakeFcm, fcm_settings: Settings
) -> None:
    token = unique_push_token("dead")
    fcm.answer_always(token, UNREGISTERED)
    account = await push_account(client, push_tokens=[token])
    await login(client, account.username)
    await run_worker(fcm_settings, PUSH)

    settings = await settings_of(client, account.app.token)
    assert [d["pushEnabled"] for d in settings["devices"]] == [False]
    assert settings["twoFactorEnabled"] is True
    # The settings list what a login offers: no PUSH until the app sends a new token (P9).
    assert settings["methods"] == ["APP_CODE", "BACKUP_CODE"]
    challenge = await login(client, account.username)
    assert challenge["methods"] == ["APP_CODE", "BACKUP_CODE"]
    renewed = {"d": account.app.device_id, "t": unique_push_token("renewed")}
    await data(client, UPDATE_PUSH_TOKEN, renewed, token=account.app.token)
    assert (await settings_of(client, account.app.token))["methods"] == [
        "PUSH",
        "APP_CODE",
        "BACKUP_CODE",
    ]


async def test_p2_transient_errors_are_retried_for_the_failed_devices_only(
    client: httpx.AsyncClient, fcm: FakeFcm, fcm_settings: Settings
) -> None:
    quota, unavailable, internal, fine = (
        unique_push_token("quota"),
        unique_push_token("unavailable"),
        unique_push_token("internal"),
        unique_push_token("fine"),
    )
    fcm.script(quota, QUOTA_EXCEEDED)
    # 5xx: whether the library retries once by itself or not, two failures then success.
    fcm.script(unavailable, UNAVAILABLE, UNAVAILABLE)
    fcm.script(internal, INTERNAL, INTERNAL)
    account = await push_account(client, push_tokens=[quota, unavailable, internal, fine])
    challenge = await login(client, account.username)
    request_id = await request_id_of(challenge)

    await run_worker(fcm_settings, PUSH)

    # Every device got exactly one delivered message for the request...
    for token in (quota, unavailable, internal, fine):
        assert [m.data["request_id"] for m in fcm.sent_to(token)] == [request_id], token
    # ...the healthy one was asked once, the failed ones again after their failure.
    assert len(fcm.requests_to(fine)) == 1
    assert [r.answer for r in fcm.requests_to(quota)] == [QUOTA_EXCEEDED, "OK"]
    assert len(fcm.requests_to(unavailable)) == 3
    assert len(fcm.requests_to(internal)) == 3
    sends = await sends_of(request_id)
    by_token = {app.push_token: sends[UUID(app.device_id)] for app in account.apps}
    assert all(s.outcome == "sent" for s in by_token.values())
    assert by_token[fine].attempts == 1
    assert by_token[quota].attempts == 2
    # Transient failures switch nothing off.
    assert set((await push_enabled_by_id(client, account)).values()) == {True}


async def test_p2_p3_without_fcm_settings_nothing_is_sent_and_the_request_is_listed(
    client: httpx.AsyncClient, fcm: FakeFcm, settings: Settings
) -> None:
    assert settings.fcm_credentials is None
    await run_worker(settings, PUSH)  # other tests' jobs
    account = await push_account(client)
    challenge = await login(client, account.username)
    request_id = await request_id_of(challenge)

    assert await run_worker(settings, PUSH) >= 1

    assert fcm.requests == []
    sends = await sends_of(request_id)
    assert [s.outcome for s in sends.values()] == ["failed"]
    assert all(s.sent_at is None for s in sends.values())
    listed = await login_requests(client, account.app.token)
    assert [(e["node"]["id"], e["node"]["status"]) for e in listed["edges"]] == [
        (request_id, "PENDING")
    ]
    # Not reachable through FCM is not a dead token: push stays on and is still offered.
    assert list((await push_enabled_by_id(client, account)).values()) == [True]
    assert (await login(client, account.username))["methods"][0] == "PUSH"
