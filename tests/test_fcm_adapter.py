"""The FCM adapter (P2, P10) against FakeFcm: a real HTTP server speaking FCM HTTP v1 and
Google's OAuth token endpoint, reached through the real firebase-admin and google-auth."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import firebase_admin
import httpx
import pytest

from gateway.factors.push.port import MAX_BATCH, PushMessage, PushOutcome
from tests.fakes.fcm import (
    GOOGLE_TOKEN_AUDIENCE,
    INTERNAL,
    INVALID_ARGUMENT,
    INVALID_PAYLOAD,
    OK,
    QUOTA_EXCEEDED,
    SENDER_ID_MISMATCH,
    UNAVAILABLE,
    UNREGISTERED,
    Answer,
    FakeFcm,
)
from workers.adapters.fcm import FcmSender, fcm_send_url


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm(project_id="kanmon-test") as fake:
        yield fake


@pytest.fixture
def credentials_file(fcm: FakeFcm, tmp_path: Path) -> Path:
    return fcm.write_service_account(tmp_path / "service-account.json")


@pytest.fixture
async def sender(fcm: FakeFcm, credentials_file: Path) -> AsyncIterator[FcmSender]:
    made = await FcmSender.from_settings(str(credentials_file), None, fcm.endpoint)
    try:
        yield made
    finally:
        await made.close()


def push(token: str, *, ttl: int = 90, request_id: str | None = None) -> PushMessage:
    return PushMessage(
        device_id=uuid.uuid4(),
        token=token,
        request_id=request_id or f"lr_{uuid.uuid4().hex}",
        ttl_seconds=ttl,
    )


def device_token() -> str:
    return f"fcm-token-{uuid.uuid4().hex}"


async def test_p2_push_reaches_the_endpoint_with_high_priority_ttl_and_apns_priority(
    fcm: FakeFcm, sender: FcmSender
) -> None:
    message = push(device_token(), ttl=87)
    before = int(time.time())
    results = await sender.send([message])
    after = int(time.time())

    assert [(r.device_id, r.outcome, r.detail) for r in results] == [
        (message.device_id, PushOutcome.SENT, None)
    ]
    assert [r.path for r in fcm.requests] == ["/v1/projects/kanmon-test/messages:send"]
    [accepted] = fcm.sent_to(message.token)
    assert accepted.android == {"priority": "high", "ttl": "87s"}
    assert set(accepted.apns) == {"headers"}
    assert accepted.apns["headers"]["apns-priority"] == "10"
    expiration = int(accepted.apns["headers"]["apns-expiration"])
    assert before + 87 <= expiration <= after + 87


async def test_p10_payload_carries_only_type_and_request_id(
    fcm: FakeFcm, sender: FcmSender
) -> None:
    message = push(device_token(), request_id="lr_0123456789")
    await sender.send([message])

    [accepted] = fcm.messages
    assert accepted.data == {"type": "login_request", "request_id": "lr_0123456789"}
    # A data message: no notification block, nothing but the target, data and platform options.
    assert set(accepted.message) == {"token", "data", "android", "apns"}
    assert accepted.token == message.token


async def test_p2_each_fcm_error_maps_to_its_outcome_per_message_in_one_batch(
    fcm: FakeFcm, sender: FcmSender
) -> None:
    expected = {
        OK: (PushOutcome.SENT, None),
        UNREGISTERED: (PushOutcome.UNREGISTERED, "UNREGISTERED"),
        SENDER_ID_MISMATCH: (PushOutcome.SENDER_ID_MISMATCH, "SENDER_ID_MISMATCH"),
        QUOTA_EXCEEDED: (PushOutcome.RETRY, "QUOTA_EXCEEDED"),
        UNAVAILABLE: (PushOutcome.RETRY, "UNAVAILABLE"),
        INTERNAL: (PushOutcome.RETRY, "INTERNAL"),
        INVALID_ARGUMENT: (PushOutcome.UNREGISTERED, "INVALID_REGISTRATION_TOKEN"),
        INVALID_PAYLOAD: (PushOutcome.FAILED, "INVALID_ARGUMENT"),
    }
    tokens: dict[Answer, str] = {}
    for answer in expected:
        tokens[answer] = device_token()
        fcm.answer_always(tokens[answer], answer)
    messages = [push(tokens[answer]) for answer in expected]

    results = await sender.send(messages)

    assert [r.device_id for r in results] == [m.device_id for m in messages]
    assert {a: (r.outcome, r.detail) for a, r in zip(expected, results, strict=True)} == expected
    for message, result in zip(messages, results, strict=True):
        assert message.token not in (result.detail or "")
    # Only the OK message was accepted.
    assert [m.token for m in fcm.messages] == [tokens[OK]]


async def test_p2_server_errors_get_one_immediate_library_retry_then_retry_outcome(
    fcm: FakeFcm, sender: FcmSender
) -> None:
    flaky, down, throttled = device_token(), device_token(), device_token()
    fcm.script(flaky, UNAVAILABLE, OK)  # the library's own retry succeeds
    fcm.answer_always(down, INTERNAL)
    fcm.answer_always(throttled, QUOTA_EXCEEDED)

    results = await sender.send([push(flaky), push(down), push(throttled)])

    assert [r.outcome for r in results] == [PushOutcome.SENT, PushOutcome.RETRY, PushOutcome.RETRY]
    # 500/503: one attempt plus one library retry (configured down from 4); 429: never retried.
    assert len(fcm.requests_to(flaky)) == 2
    assert len(fcm.requests_to(down)) == 2
    assert len(fcm.requests_to(throttled)) == 1


async def test_p2_more_than_500_messages_are_sent_in_batches_of_at_most_500(
    fcm: FakeFcm, sender: FcmSender
) -> None:
    messages = [push(device_token()) for _ in range(MAX_BATCH + 1)]

    results = await sender.send(messages)

    # firebase-admin refuses a batch over 500: all sent means the adapter split them.
    assert [r.device_id for r in results] == [m.device_id for m in messages]
    assert {r.outcome for r in results} == {PushOutcome.SENT}
    assert sorted(m.token or "" for m in fcm.messages) == sorted(m.token for m in messages)
    # Batches go one after another: the 501st request arrives only once the first 500 were all
    # answered, so the first batch held 500 and the second the one left.
    for index, request in enumerate(fcm.requests):
        assert request.answered_before >= (index // MAX_BATCH) * MAX_BATCH
    assert fcm.requests[MAX_BATCH].answered_before == MAX_BATCH


async def test_fcm_endpoint_override_still_applies(fcm: FakeFcm, sender: FcmSender) -> None:
    """Fails when a firebase-admin upgrade moves `_MessagingService._fcm_url`: the request would
    then go to Google (and fail without network or with the fake's credentials)."""
    results = await sender.send([push(device_token())])

    assert [r.outcome for r in results] == [PushOutcome.SENT]
    assert [r.path for r in fcm.requests] == ["/v1/projects/kanmon-test/messages:send"]
    assert fcm_send_url(fcm.endpoint + "/", "p") == f"{fcm.endpoint}/v1/projects/p/messages:send"


async def test_p2_oauth_token_comes_from_the_service_accounts_token_uri(
    fcm: FakeFcm, sender: FcmSender
) -> None:
    await sender.send([push(device_token())])
    await sender.send([push(device_token()), push(device_token())])

    # One token for all three messages, fetched once from the file's token_uri (the fake's:
    # it recorded the request) with a JWT assertion signed by the file's private key.
    [token_request] = fcm.token_requests
    assert token_request.claims is not None
    assert token_request.claims["iss"] == fcm.client_email
    assert token_request.claims["aud"] == GOOGLE_TOKEN_AUDIENCE
    assert "https://www.googleapis.com/auth/firebase" in token_request.claims["scope"].split()
    assert {r.headers["authorization"] for r in fcm.requests} == {
        f"Bearer {token_request.access_token}"
    }


async def test_fake_fcm_refuses_requests_without_the_bearer_token_it_issued(
    fcm: FakeFcm,
) -> None:
    url = fcm_send_url(fcm.endpoint, fcm.project_id)
    body = {"message": {"token": device_token(), "data": {"type": "login_request"}}}
    async with httpx.AsyncClient() as http:
        anonymous = await http.post(url, json=body)
        forged = await http.post(url, json=body, headers={"Authorization": "Bearer ya29.forged"})

    assert anonymous.status_code == forged.status_code == 401
    assert anonymous.json()["error"]["status"] == "UNAUTHENTICATED"
    assert fcm.messages == []
    assert [r.authorized for r in fcm.requests] == [False, False]


async def test_p2_project_id_falls_back_to_the_file_and_can_be_overridden(
    fcm: FakeFcm, tmp_path: Path
) -> None:
    from_file = await FcmSender.from_settings(
        fcm.write_service_account(tmp_path / "a.json"), None, fcm.endpoint
    )
    overridden = await FcmSender.from_settings(
        fcm.write_service_account(tmp_path / "b.json", project_id="another-project"),
        fcm.project_id,
        fcm.endpoint,
    )
    try:
        assert from_file.project_id == overridden.project_id == "kanmon-test"
        assert from_file.app_name != overridden.app_name
        results = await overridden.send([push(device_token())])
        assert [r.outcome for r in results] == [PushOutcome.SENT]
    finally:
        await from_file.close()
        await overridden.close()


async def test_p2_expired_requests_are_not_pushed(fcm: FakeFcm, sender: FcmSender) -> None:
    live, expired = push(device_token()), push(device_token(), ttl=0)

    results = await sender.send([expired, live])

    assert [(r.outcome, r.detail) for r in results] == [
        (PushOutcome.FAILED, "expired"),
        (PushOutcome.SENT, None),
    ]
    assert [m.token for m in fcm.messages] == [live.token]


async def test_close_deletes_the_firebase_app(fcm: FakeFcm, credentials_file: Path) -> None:
    made = await FcmSender.from_settings(credentials_file, None, fcm.endpoint)
    await made.send([push(device_token())])

    await made.close()

    with pytest.raises(ValueError, match="does not exist"):
        firebase_admin.get_app(made.app_name)
    with pytest.raises(RuntimeError, match="closed"):
        await made.send([push(device_token())])
