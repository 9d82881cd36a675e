"""Login requests and their answers (L4, L5, P2, P4, P5, P6, H6): push first, the device's
signature over the exact message, number matching, one decision, one session."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pyotp
import pytest

from gateway.accounts.models import Session
from gateway.container import Services
from gateway.core.audit import SecurityEvent
from gateway.core.crypto import token_digest
from gateway.core.errors import Forbidden
from gateway.core.jobs import JOB_PUSH_FAN_OUT, QUEUE_PUSH
from gateway.core.outbox import OutboxMessage
from gateway.factors.push.models import Device, LoginRequest, LoginRequestStatus
from gateway.factors.sms.models import SmsCode, SmsCodePurpose
from gateway.login.models import ChallengeStatus, LoginChallenge
from tests.conftest import MovableClock
from tests.graphql_client import gql
from tests.push_helpers import (
    OK,
    AppDevice,
    PushAccount,
    api,
    approve,
    challenge_view,
    code_of,
    complete,
    deny,
    event_kinds,
    login,
    login_requests,
    push_account,
    random_ip,
    request_node,
    unique_push_token,
    verify,
)
from tests.sms_helpers import User, fresh_number, messages_to, verified_phone
from tests.statements import counted_statements, on_postgres


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


async def sessions_of(user_id: UUID) -> int:
    return await Session.filter(user_id=user_id).count()


async def request_row(challenge: dict[str, Any]) -> LoginRequest:
    return await LoginRequest.get(challenge_id=UUID(challenge["id"]))


async def assert_untouched(
    http: httpx.AsyncClient, account: PushAccount, challenge: dict[str, Any], sessions: int
) -> None:
    """Nothing an answer could change has changed."""
    row = await request_row(challenge)
    assert row.status is LoginRequestStatus.PENDING
    assert (row.decided_at, row.decided_by, row.wrong_matches) == (None, None, 0)
    assert (await challenge_view(http, challenge))["status"] == "PENDING"
    assert code_of(await complete(http, challenge)) == "CHALLENGE_NOT_APPROVED"
    assert await sessions_of(account.user_id) == sessions
    kinds = await event_kinds(account.user_id)
    assert "login_request.approved" not in kinds
    assert "login_request.denied" not in kinds


# L4, P2 --------------------------------------------------------------------------------------


async def test_l4_p2_web_login_starts_push_with_a_match_number_and_one_pending_request(
    services: Services,
) -> None:
    ip = random_ip()
    async with api(services, ip) as http:
        account = await push_account(http)
        challenge = await login(http, account.username, "WEB", "Firefox 128 on macOS")
    assert challenge["__typename"] == "LoginChallenge"
    assert challenge["methods"] == ["PUSH", "APP_CODE", "BACKUP_CODE"]
    assert isinstance(challenge["matchNumber"], int)
    assert 10 <= challenge["matchNumber"] <= 99

    rows = await LoginRequest.filter(challenge_id=UUID(challenge["id"]))
    assert len(rows) == 1
    row = rows[0]
    assert row.status is LoginRequestStatus.PENDING
    assert row.user_id == account.user_id
    assert row.match_number == challenge["matchNumber"]
    assert row.browser == "Firefox 128 on macOS"
    assert row.ip_address == ip
    assert row.expires_at == datetime.fromisoformat(challenge["expiresAt"])
    nonce = base64.urlsafe_b64decode(row.nonce + "=" * (-len(row.nonce) % 4))
    assert len(nonce) * 8 >= 128

    # The app sees the same request, without the number (it must come from the waiting page).
    async with api(services, ip) as http:
        node = await request_node(http, account.app.token, challenge)
    assert node["status"] == "PENDING"
    assert node["nonce"] == row.nonce
    assert node["browser"] == "Firefox 128 on macOS"
    assert node["ipAddress"] == ip
    assert node["matchNumberRequired"] is True
    assert str(challenge["matchNumber"]) not in {str(v) for v in node.values()}

    # S4: the fan-out job was written with the request (job id = request id).
    outbox = await OutboxMessage.get(id=row.id)
    assert outbox.queue == QUEUE_PUSH
    assert outbox.job_name == JOB_PUSH_FAN_OUT
    assert outbox.payload == {"request_id": str(row.id)}
    assert outbox.dispatched_at is not None


@pytest.mark.parametrize(
    ("ip", "location"),
    [("133.11.0.1", "JP"), ("::ffff:133.11.0.1", "JP"), ("2001:4860:4860::8888", "US")],
)
async def test_p2_the_app_sees_the_country_the_login_came_from(
    services: Services, ip: str, location: str
) -> None:
    """The rough location is the country the address is allocated to (ISO 3166-1), for the
    app to name in the user's language; an IPv4 client seen by a dual-stack listener counts
    as its IPv4 address."""
    async with api(services, ip) as http:
        account = await push_account(http)
        challenge = await login(http, account.username, "WEB", "Firefox")
        node = await request_node(http, account.app.token, challenge)
    assert (node["ipAddress"], node["location"]) == (ip, location)
    row = await LoginRequest.get(challenge_id=UUID(challenge["id"]))
    assert row.location == location


async def test_p2_a_private_address_has_no_location(services: Services) -> None:
    async with api(services, "10.1.2.3") as http:
        account = await push_account(http)
        challenge = await login(http, account.username, "WEB", "Firefox")
        node = await request_node(http, account.app.token, challenge)
    assert (node["ipAddress"], node["location"]) == ("10.1.2.3", None)


async def test_l4_no_sms_code_is_sent_when_push_is_primary_even_with_a_verified_phone(
    services: Services,
) -> None:
    async with api(services) as http:
        account = await push_account(http)
        session = await services.accounts.session_for_token(account.app.token)
        assert session is not None
        number = fresh_number()
        await verified_phone(services, User(account.user_id, account.username, session, ""), number)
        assert len(await messages_to(number)) == 1  # the verification code

        challenge = await login(http, account.username)
    assert challenge["methods"] == ["PUSH", "SMS", "APP_CODE", "BACKUP_CODE"]
    assert await SmsCode.filter(challenge_id=UUID(challenge["id"])).count() == 0
    assert await SmsCode.filter(user_id=account.user_id, purpose=SmsCodePurpose.LOGIN).count() == 0
    assert len(await messages_to(number)) == 1
    assert await LoginRequest.filter(challenge_id=UUID(challenge["id"])).count() == 1


async def test_l4_without_a_device_no_login_request_is_created(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    # The device's session logs out: no device, no request (and 2FA went off with it).
    await client.post(
        "/graphql",
        json={"query": "mutation { logout }"},
        headers={"Authorization": f"Bearer {account.app.token}"},
    )
    before = await LoginRequest.filter(user_id=account.user_id).count()
    result = await login(client, account.username)
    assert result["__typename"] == "Session"
    assert await LoginRequest.filter(user_id=account.user_id).count() == before


# P4: the happy path, then everything that is not it ------------------------------------------


async def test_p4_p5_a_signed_approval_with_the_number_lets_the_waiting_client_complete(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    sessions = await sessions_of(account.user_id)

    body = await approve(client, account.app, node, challenge["matchNumber"])
    assert code_of(body) == OK, body
    assert body["data"]["approveLoginRequest"] == {"id": node["id"], "status": "APPROVED"}
    row = await request_row(challenge)
    assert row.status is LoginRequestStatus.APPROVED
    assert row.decided_by == UUID(account.app.device_id)
    assert row.decided_at is not None
    assert (await challenge_view(client, challenge))["status"] == "APPROVED"
    # Written in the same statement as the decision (gateway.factors.push.store).
    [event] = await SecurityEvent.filter(user_id=account.user_id, kind="login_request.approved")
    assert (event.ip_address, event.created_at) == (row.ip_address, row.decided_at)
    device = await Device.get(id=UUID(account.app.device_id))
    assert device.last_seen_at == row.decided_at
    assert await sessions_of(account.user_id) == sessions  # no session until completion

    body = await complete(client, challenge)
    assert code_of(body) == OK, body
    session = body["data"]["completeLoginChallenge"]
    assert session["clientKind"] == "WEB"
    assert await sessions_of(account.user_id) == sessions + 1
    assert (await challenge_view(client, challenge))["status"] == "COMPLETED"


async def test_p4_p5_p6_round_trips_of_an_approval_and_its_completion_stay_within_budget(
    client: httpx.AsyncClient,
) -> None:
    """README, performance: session with its device, one locking read of user and request,
    one decision statement (that the session is still the device's, then request, device,
    event, fatigue) and the challenge's move. SQLite has no data-modifying WITH, so its
    decision and the completion take more statements."""
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)

    with counted_statements() as sql:
        body = await approve(client, account.app, node, challenge["matchNumber"])

    assert code_of(body) == OK, body
    assert len(sql) == (4 if on_postgres() else 8), sql

    # P5: the waiting client's completion is the verify path's lock and completion statement.
    with counted_statements() as sql:
        body = await complete(client, challenge)
    assert code_of(body) == OK, body
    assert len(sql) == (2 if on_postgres() else 4), sql


@dataclass(frozen=True)
class Forgery:
    name: str
    approve: bool


FORGERIES = [
    Forgery("no signature", True),
    Forgery("garbage", True),
    Forgery("64 random bytes", True),
    Forgery("another device's key", True),
    Forgery("another user's device key", True),
    Forgery("another request", True),
    Forgery("another nonce", True),
    Forgery("a deny signature used to approve", True),
    Forgery("signed number differs from the sent one", True),
    Forgery("an approve signature used to deny", False),
    Forgery("deny: another request", False),
    Forgery("deny: another device's key", False),
]


@pytest.mark.parametrize("forgery", FORGERIES, ids=[f.name for f in FORGERIES])
async def test_p4_forged_or_misdirected_signatures_are_refused_and_change_nothing(
    client: httpx.AsyncClient, forgery: Forgery
) -> None:
    account = await push_account(client, devices=2)
    stranger = await push_account(client)
    me, sibling = account.apps
    challenge = await login(client, account.username)
    other_challenge = await login(client, account.username)
    node = await request_node(client, me.token, challenge)
    other = await request_node(client, me.token, other_challenge)
    number = challenge["matchNumber"]
    rid, nonce = node["id"], node["nonce"]
    signatures = {
        "no signature": "",
        "garbage": "not a signature",
        "64 random bytes": base64.b64encode(bytes(range(64))).decode(),
        "another device's key": sibling.key.approve(rid, nonce, number),
        "another user's device key": stranger.app.key.approve(rid, nonce, number),
        "another request": me.key.approve(other["id"], other["nonce"], number),
        "another nonce": me.key.approve(rid, other["nonce"], number),
        "a deny signature used to approve": me.key.deny(rid, nonce),
        "signed number differs from the sent one": me.key.approve(rid, nonce, (number % 90) + 10),
        "an approve signature used to deny": me.key.approve(rid, nonce, number),
        "deny: another request": me.key.deny(other["id"], other["nonce"]),
        "deny: another device's key": sibling.key.deny(rid, nonce),
    }
    sessions = await sessions_of(account.user_id)
    if forgery.approve:
        body = await approve(client, me, node, number, signature=signatures[forgery.name])
    else:
        body = await deny(client, me, node, signature=signatures[forgery.name])
    assert code_of(body) == "INVALID_SIGNATURE", body
    await assert_untouched(client, account, challenge, sessions)
    # The other request was not answered either.
    assert (await request_row(other_challenge)).status is LoginRequestStatus.PENDING

    # The request still works for the real thing.
    assert code_of(await approve(client, me, node, number)) == OK
    assert code_of(await complete(client, challenge)) == OK


async def test_p4_a_replayed_approval_is_refused(client: httpx.AsyncClient) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    signature = account.app.key.approve(node["id"], node["nonce"], challenge["matchNumber"])
    first = await approve(client, account.app, node, challenge["matchNumber"], signature=signature)
    assert code_of(first) == OK
    decided_at = (await request_row(challenge)).decided_at

    replay = await approve(client, account.app, node, challenge["matchNumber"], signature=signature)
    assert code_of(replay) == "REQUEST_NOT_PENDING"
    row = await request_row(challenge)
    assert (row.status, row.decided_at) == (LoginRequestStatus.APPROVED, decided_at)
    assert (await event_kinds(account.user_id)).count("login_request.approved") == 1
    # A deny after the approval cannot turn it round either.
    assert code_of(await deny(client, account.app, node)) == "REQUEST_NOT_PENDING"
    assert (await challenge_view(client, challenge))["status"] == "APPROVED"


async def test_p4_a_wrong_match_number_leaves_the_request_pending_and_the_third_denies_it(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    right = challenge["matchNumber"]
    wrongs = [n for n in range(10, 100) if n != right][:3]
    sessions = await sessions_of(account.user_id)

    for attempt, wrong in enumerate(wrongs[:2], start=1):
        body = await approve(client, account.app, node, wrong)  # validly signed, wrong number
        assert code_of(body) == "MATCH_NUMBER_MISMATCH"
        row = await request_row(challenge)
        assert (row.status, row.wrong_matches) == (LoginRequestStatus.PENDING, attempt)
        assert (await challenge_view(client, challenge))["status"] == "PENDING"
        assert code_of(await complete(client, challenge)) == "CHALLENGE_NOT_APPROVED"

    body = await approve(client, account.app, node, wrongs[2])
    assert code_of(body) == "MATCH_NUMBER_MISMATCH"
    row = await request_row(challenge)
    assert row.status is LoginRequestStatus.DENIED
    assert (await challenge_view(client, challenge))["status"] == "DENIED"
    assert "login_request.denied" in await event_kinds(account.user_id)
    # Denied means denied: the right number no longer helps, the challenge is closed.
    assert code_of(await approve(client, account.app, node, right)) == "REQUEST_NOT_PENDING"
    assert code_of(await complete(client, challenge)) == "CHALLENGE_CLOSED"
    assert code_of(await verify(client, challenge, "BACKUP_CODE", str(account.backup_code))) == (
        "CHALLENGE_CLOSED"
    )
    assert await sessions_of(account.user_id) == sessions


async def test_p4_a_missing_match_number_when_required_is_a_mismatch(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    assert node["matchNumberRequired"] is True
    sessions = await sessions_of(account.user_id)
    # Signed over `{id}:{nonce}:APPROVE` (the form without a number), no number sent.
    body = await approve(client, account.app, node, None, send_number=False)
    assert code_of(body) == "MATCH_NUMBER_MISMATCH"
    row = await request_row(challenge)
    assert (row.status, row.wrong_matches) == (LoginRequestStatus.PENDING, 1)
    assert (await challenge_view(client, challenge))["status"] == "PENDING"
    assert code_of(await complete(client, challenge)) == "CHALLENGE_NOT_APPROVED"
    assert await sessions_of(account.user_id) == sessions
    assert code_of(await approve(client, account.app, node, challenge["matchNumber"])) == OK


async def test_p4_without_number_matching_the_approval_signs_no_number(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(push_number_matching=False)
    async with api(services) as http:
        account = await push_account(http)
        challenge = await login(http, account.username)
        assert challenge["methods"][0] == "PUSH"
        assert challenge["matchNumber"] is None
        node = await request_node(http, account.app.token, challenge)
        assert node["matchNumberRequired"] is False
        # A signature over a number is not the message for this request.
        body = await approve(http, account.app, node, 42)
        assert code_of(body) == "INVALID_SIGNATURE"
        body = await approve(http, account.app, node, None, send_number=False)
        assert code_of(body) == OK, body
        assert code_of(await complete(http, challenge)) == OK


async def test_p4_approve_and_deny_racing_exactly_one_wins(
    make_services: Callable[..., Services],
) -> None:
    # Many denials in a row would pause push (P10); that rule has its own tests.
    services = make_services(push_fatigue_threshold=1_000)
    outcomes: set[str] = set()
    async with api(services) as http:
        account = await push_account(http)
        for _ in range(12):
            challenge = await login(http, account.username)
            assert challenge["methods"][0] == "PUSH"
            node = await request_node(http, account.app.token, challenge)
            calls = (
                approve(http, account.app, node, challenge["matchNumber"]),
                deny(http, account.app, node),
            )
            approved, denied = await asyncio.gather(*calls)
            results = (code_of(approved), code_of(denied))
            assert sorted(results) == sorted([OK, "REQUEST_NOT_PENDING"]), results
            row = await request_row(challenge)
            view = await challenge_view(http, challenge)
            if results[0] == OK:
                outcomes.add("approve")
                assert approved["data"]["approveLoginRequest"]["status"] == "APPROVED"
                assert row.status is LoginRequestStatus.APPROVED
                assert view["status"] == "APPROVED"
                assert code_of(await complete(http, challenge)) == OK
            else:
                outcomes.add("deny")
                assert denied["data"]["denyLoginRequest"]["status"] == "DENIED"
                assert row.status is LoginRequestStatus.DENIED
                assert view["status"] == "DENIED"
                assert code_of(await complete(http, challenge)) == "CHALLENGE_CLOSED"
        kinds = await event_kinds(account.user_id)
    assert kinds.count("login_request.approved") + kinds.count("login_request.denied") == 12
    assert outcomes


async def test_p4_approval_after_expiry_is_request_not_pending(clocked: Clocked) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    challenge = await login(http, account.username)
    node = await request_node(http, account.app.token, challenge)
    clock.advance(clocked.services.settings.challenge_ttl_seconds)

    body = await approve(http, account.app, node, challenge["matchNumber"])
    assert code_of(body) == "REQUEST_NOT_PENDING"
    assert code_of(await deny(http, account.app, node)) == "REQUEST_NOT_PENDING"
    row = await request_row(challenge)
    assert row.decided_at is None
    assert row.status in {LoginRequestStatus.PENDING, LoginRequestStatus.EXPIRED}
    assert (await request_node(http, account.app.token, challenge))["status"] == "EXPIRED"
    assert (await challenge_view(http, challenge))["status"] == "EXPIRED"
    assert code_of(await complete(http, challenge)) == "CHALLENGE_EXPIRED"
    assert "login_request.approved" not in await event_kinds(account.user_id)


async def test_p4_answering_from_a_session_that_is_not_the_devices_is_forbidden(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    sessions = await sessions_of(account.user_id)
    signature = account.app.key.approve(node["id"], node["nonce"], challenge["matchNumber"])
    # The user's own WEB session (from completing another challenge) holds no device.
    other = await login(client, account.username)
    backup = await verify(client, other, "BACKUP_CODE", str(account.backup_code))
    assert code_of(backup) == OK
    web_token = backup["data"]["verifyLoginChallenge"]["token"]
    sessions += 1
    web = AppDevice(web_token, account.app.key, "", "", "", {})
    body = await approve(client, web, node, challenge["matchNumber"], signature=signature)
    assert code_of(body) == "FORBIDDEN"
    assert code_of(await deny(client, web, node)) == "FORBIDDEN"
    await assert_untouched(client, account, challenge, sessions)


async def test_p4_g4_an_answer_needs_a_usable_session(client: httpx.AsyncClient) -> None:
    """The session and its device are read in one statement: a forged, revoked or expired
    bearer token still answers nothing."""
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    sessions = await sessions_of(account.user_id)
    number = challenge["matchNumber"]
    signature = account.app.key.approve(node["id"], node["nonce"], number)
    key = account.app.key
    forged = AppDevice("x" * 43, key, "", "", "", {})
    assert code_of(await approve(client, forged, node, number, signature=signature)) == (
        "UNAUTHENTICATED"
    )
    digest = token_digest(account.app.token)
    await Session.filter(token_hash=digest).update(expires_at=datetime.now(UTC))
    body = await approve(client, account.app, node, number, signature=signature)
    assert code_of(body) == "UNAUTHENTICATED"
    assert code_of(await deny(client, account.app, node)) == "UNAUTHENTICATED"
    await Session.filter(token_hash=digest).update(
        expires_at=datetime.now(UTC) + timedelta(days=1), revoked_at=datetime.now(UTC)
    )
    body = await approve(client, account.app, node, number, signature=signature)
    assert code_of(body) == "UNAUTHENTICATED"
    await assert_untouched(client, account, challenge, sessions)


async def test_p4_an_answer_after_another_field_read_the_session_still_acts_for_the_device(
    client: httpx.AsyncClient,
) -> None:
    """The session may already be loaded without its device (another field of the same
    operation): the device is then read on its own."""
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    number = challenge["matchNumber"]
    document = """
    mutation($d: ID!, $t: String!, $id: ID!, $s: String!, $m: Int) {
      updatePushToken(deviceId: $d, pushToken: $t) { id }
      approveLoginRequest(id: $id, signature: $s, matchNumber: $m) { id status }
    }"""
    variables = {
        "d": account.app.device_id,
        "t": unique_push_token(),
        "id": node["id"],
        "s": account.app.key.approve(node["id"], node["nonce"], number),
        "m": number,
    }
    body = await gql(client, document, variables, token=account.app.token)
    assert code_of(body) == OK, body
    assert body["data"]["approveLoginRequest"]["status"] == "APPROVED"
    assert (await request_row(challenge)).status is LoginRequestStatus.APPROVED


@pytest.mark.parametrize("wrong_number", [False, True])
async def test_p7_a2_an_answer_read_before_a_logout_that_won_the_lock_changes_nothing(
    client: httpx.AsyncClient, services: Services, wrong_number: bool
) -> None:
    """The race of a stolen phone's approval with its owner's logout: the approval read its
    session and device before the transaction, and the logout of that session committed first
    (it held the user's row lock). The answer must not stand, wrong number or right."""
    account = await push_account(client, devices=2)
    stolen, kept = account.apps
    challenge = await login(client, account.username)
    node = await request_node(client, stolen.token, challenge)
    found = await services.approvals.app_session(stolen.token)
    assert found is not None
    session, device = found

    assert (await gql(client, "mutation { logout }", token=stolen.token))["data"] == {
        "logout": True
    }
    number = challenge["matchNumber"] + (1 if wrong_number else 0)
    signature = stolen.key.approve(node["id"], node["nonce"], number)
    with pytest.raises(Forbidden):
        async with services.uow() as work:
            await services.approvals.decide(
                session, device, node["id"], signature, approve=True, match_number=number, work=work
            )

    request = await LoginRequest.get(id=UUID(node["id"]))
    assert (request.status, request.wrong_matches) == (LoginRequestStatus.PENDING, 0)
    assert (await challenge_view(client, challenge))["status"] == "PENDING"
    assert "login_request.approved" not in await event_kinds(account.user_id)
    # The phone still enrolled answers as before.
    assert code_of(await approve(client, kept, node, challenge["matchNumber"])) == OK


async def test_p4_another_users_request_is_not_found(client: httpx.AsyncClient) -> None:
    owner = await push_account(client)
    intruder = await push_account(client)
    challenge = await login(client, owner.username)
    node = await request_node(client, owner.app.token, challenge)
    sessions = await sessions_of(owner.user_id)
    number = challenge["matchNumber"]
    # Signed with the intruder's own key, or replaying the owner's valid signature.
    own_key = intruder.app.key.approve(node["id"], node["nonce"], number)
    stolen = owner.app.key.approve(node["id"], node["nonce"], number)
    for signature in (own_key, stolen):
        body = await approve(client, intruder.app, node, number, signature=signature)
        assert code_of(body) == "NOT_FOUND"
    stolen_deny = owner.app.key.deny(node["id"], node["nonce"])
    body = await deny(client, intruder.app, node, signature=stolen_deny)
    assert code_of(body) == "NOT_FOUND"
    assert (await login_requests(client, intruder.app.token))["edges"] == []
    await assert_untouched(client, owner, challenge, sessions)


# P5, L5 --------------------------------------------------------------------------------------


async def test_p5_l5_complete_before_approval_then_exactly_once(client: httpx.AsyncClient) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    sessions = await sessions_of(account.user_id)
    assert code_of(await complete(client, challenge)) == "CHALLENGE_NOT_APPROVED"
    assert await sessions_of(account.user_id) == sessions

    node = await request_node(client, account.app.token, challenge)
    assert code_of(await approve(client, account.app, node, challenge["matchNumber"])) == OK
    first = await complete(client, challenge)
    assert code_of(first) == OK
    assert await sessions_of(account.user_id) == sessions + 1
    assert code_of(await complete(client, challenge)) == "CHALLENGE_CLOSED"
    assert await sessions_of(account.user_id) == sessions + 1
    # A wrong challenge token buys nothing.
    forged = {"id": challenge["id"], "token": "x" * 43}
    assert code_of(await complete(client, forged)) == "NOT_FOUND"
    # Nor can the spent challenge be completed with a code.
    assert code_of(await verify(client, challenge, "BACKUP_CODE", str(account.backup_code))) == (
        "CHALLENGE_CLOSED"
    )


async def test_p5_l5_twenty_concurrent_completions_give_exactly_one_session(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    assert code_of(await approve(client, account.app, node, challenge["matchNumber"])) == OK
    sessions = await sessions_of(account.user_id)

    bodies = await asyncio.gather(*(complete(client, challenge) for _ in range(20)))
    codes = [code_of(body) for body in bodies]
    assert codes.count(OK) == 1, codes
    assert set(codes) == {OK, "CHALLENGE_CLOSED"}, codes
    assert await sessions_of(account.user_id) == sessions + 1
    push_logins = SecurityEvent.filter(
        user_id=account.user_id, kind="login.succeeded", detail="PUSH"
    )
    assert await push_logins.count() == 1
    row = await LoginChallenge.get(id=UUID(challenge["id"]))
    assert row.status is ChallengeStatus.COMPLETED


# P6 ------------------------------------------------------------------------------------------


async def test_p6_a_denial_ends_the_challenge_and_records_an_event(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    sessions = await sessions_of(account.user_id)

    body = await deny(client, account.app, node)
    assert code_of(body) == OK, body
    assert body["data"]["denyLoginRequest"] == {"id": node["id"], "status": "DENIED"}
    row = await request_row(challenge)
    assert row.status is LoginRequestStatus.DENIED
    assert row.decided_by == UUID(account.app.device_id)
    assert (await challenge_view(client, challenge))["status"] == "DENIED"
    assert "login_request.denied" in await event_kinds(account.user_id)

    # The denied challenge is spent for every method.
    body = await verify(client, challenge, "BACKUP_CODE", str(account.backup_code))
    assert code_of(body) == "CHALLENGE_CLOSED"
    assert code_of(await complete(client, challenge)) == "CHALLENGE_CLOSED"
    assert code_of(await approve(client, account.app, node, challenge["matchNumber"])) == (
        "REQUEST_NOT_PENDING"
    )
    assert await sessions_of(account.user_id) == sessions
    # The backup code was not spent by the refused attempt.
    fresh = await login(client, account.username)
    assert code_of(await verify(client, fresh, "BACKUP_CODE", str(account.backup_code))) == OK


@pytest.mark.parametrize("method", ["BACKUP_CODE", "APP_CODE"])
async def test_l5_a_challenge_completed_with_a_code_expires_its_request(
    clocked: Clocked, method: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    challenge = await login(http, account.username)
    node = await request_node(http, account.app.token, challenge)
    code = (
        str(account.backup_code)
        if method == "BACKUP_CODE"
        else pyotp.TOTP(account.app.login_code_secret).at(clock.now)
    )
    assert code_of(await verify(http, challenge, method, code)) == OK
    assert (await request_row(challenge)).status is LoginRequestStatus.EXPIRED
    assert (await request_node(http, account.app.token, challenge))["status"] == "EXPIRED"
    assert (await login_requests(http, account.app.token))["edges"] == []
    assert code_of(await approve(http, account.app, node, challenge["matchNumber"])) == (
        "REQUEST_NOT_PENDING"
    )
    assert (await challenge_view(http, challenge))["status"] == "COMPLETED"


@pytest.mark.parametrize("method", ["PUSH", "APP_CODE"])
async def test_a3_the_window_starts_when_the_password_was_proved_not_when_the_login_completed(
    clocked: Clocked, method: str
) -> None:
    """A login completed late in its challenge's life does not stretch the A3 window past
    the password it proved at `login` (API.md: proving the password there starts it)."""
    http, clock = clocked.http, clocked.clock
    settings = clocked.services.settings
    account = await push_account(http)
    challenge = await login(http, account.username)
    late = settings.challenge_ttl_seconds - 60
    clock.advance(late)
    if method == "PUSH":
        node = await request_node(http, account.app.token, challenge)
        assert code_of(await approve(http, account.app, node, challenge["matchNumber"])) == OK
        body = await complete(http, challenge)
        token = body["data"]["completeLoginChallenge"]["token"]
    else:
        code = pyotp.TOTP(account.app.login_code_secret).at(clock.now)
        body = await verify(http, challenge, method, code)
        token = body["data"]["verifyLoginChallenge"]["token"]
    create = "mutation { createTemporaryPassword { expiresAt } }"
    assert code_of(await gql(http, create, token=token)) == OK  # still inside the window

    clock.advance(settings.reauth_window_seconds - late + 1)
    assert code_of(await gql(http, create, token=token)) == "REAUTHENTICATION_REQUIRED"


# H6 ------------------------------------------------------------------------------------------


async def test_h6_login_requests_list_pending_newest_first_with_pages_and_a_status_filter(
    clocked: Clocked,
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    token = account.app.token
    challenges = []
    for _ in range(3):
        clock.advance(1)
        challenges.append(await login(http, account.username))
    ids = [str((await request_row(c)).id) for c in challenges]

    # Default: PENDING, newest first.
    default = await http.post(
        "/graphql",
        json={"query": "query { viewer { loginRequests { edges { node { id status } } } } }"},
        headers={"Authorization": f"Bearer {token}"},
    )
    listed = [e["node"]["id"] for e in default.json()["data"]["viewer"]["loginRequests"]["edges"]]
    assert listed == ids[::-1]

    page = await login_requests(http, token, first=2)
    assert [e["node"]["id"] for e in page["edges"]] == [ids[2], ids[1]]
    assert page["pageInfo"]["hasNextPage"] is True
    assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
    rest = await login_requests(http, token, first=2, after=page["pageInfo"]["endCursor"])
    assert [e["node"]["id"] for e in rest["edges"]] == [ids[0]]
    assert rest["pageInfo"]["hasNextPage"] is False
    node = rest["edges"][0]["node"]
    assert node["status"] == "PENDING"
    assert datetime.fromisoformat(node["expiresAt"]) - datetime.fromisoformat(
        node["createdAt"]
    ) == timedelta(seconds=clocked.services.settings.challenge_ttl_seconds)

    # Answer two of them: the pending list shrinks, the status filter finds them.
    middle = await request_node(http, token, challenges[1])
    assert code_of(await approve(http, account.app, middle, challenges[1]["matchNumber"])) == OK
    oldest = await request_node(http, token, challenges[0])
    assert code_of(await deny(http, account.app, oldest)) == OK
    pending = await login_requests(http, token)
    assert [e["node"]["id"] for e in pending["edges"]] == [ids[2]]
    approved = await login_requests(http, token, status="APPROVED")
    assert [e["node"]["id"] for e in approved["edges"]] == [ids[1]]
    denied = await login_requests(http, token, status="DENIED")
    assert [e["node"]["id"] for e in denied["edges"]] == [ids[0]]
    everything = await login_requests(http, token, status=None)
    assert [e["node"]["id"] for e in everything["edges"]] == ids[::-1]

    # A pending request past its time is no longer listed as pending.
    clock.advance(clocked.services.settings.challenge_ttl_seconds)
    assert (await login_requests(http, token))["edges"] == []


async def test_h6_login_requests_are_only_the_viewers(client: httpx.AsyncClient) -> None:
    owner = await push_account(client)
    other = await push_account(client)
    await login(client, owner.username)
    assert len((await login_requests(client, owner.app.token))["edges"]) == 1
    assert (await login_requests(client, other.app.token))["edges"] == []


async def test_p4_a_second_device_of_the_account_can_answer(client: httpx.AsyncClient) -> None:
    account = await push_account(client, devices=2)
    challenge = await login(client, account.username)
    second = account.apps[1]
    node = await request_node(client, second.token, challenge)
    assert code_of(await approve(client, second, node, challenge["matchNumber"])) == OK
    assert (await request_row(challenge)).decided_by == UUID(second.device_id)


async def test_p4_an_app_session_of_the_user_without_a_device_cannot_answer(
    client: httpx.AsyncClient,
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    # The same user on a second phone, logged in with a backup code, never enrolled.
    ios = await login(client, account.username, "IOS", None)
    body = await verify(client, ios, "BACKUP_CODE", str(account.backup_code))
    assert code_of(body) == OK, body
    unenrolled = AppDevice(
        body["data"]["verifyLoginChallenge"]["token"], account.app.key, "", "", "", {}
    )
    sessions = await sessions_of(account.user_id)
    signature = account.app.key.approve(node["id"], node["nonce"], challenge["matchNumber"])
    body = await approve(client, unenrolled, node, challenge["matchNumber"], signature=signature)
    assert code_of(body) == "FORBIDDEN"
    await assert_untouched(client, account, challenge, sessions)


async def test_h6_paging_reaches_every_request_however_many_there_are(
    client: httpx.AsyncClient,
) -> None:
    """A long-lived account has hundreds of answered requests; walking the pages with
    `after` must reach all of them, with hasNextPage true until the last page."""
    account = await push_account(client)
    now = datetime.now(UTC)
    rows = [
        LoginRequest(
            id=uuid4(),
            user_id=account.user_id,
            challenge_id=uuid4(),
            nonce=f"nonce{i}",
            status=LoginRequestStatus.DENIED,
            match_number=None,
            expires_at=now - timedelta(days=1, seconds=i) + timedelta(minutes=10),
            created_at=now - timedelta(days=1, seconds=i),
        )
        for i in range(450)
    ]
    await LoginRequest.bulk_create(rows)
    expected = [str(r.id) for r in rows]  # newest first

    seen: list[str] = []
    after: str | None = None
    for _ in range(10):
        page = await login_requests(
            client, account.app.token, status="DENIED", first=100, after=after
        )
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert len(seen) == 450
    assert seen == expected


async def test_p5_an_approved_challenge_cannot_be_exchanged_after_it_expired(
    clocked: Clocked,
) -> None:
    """L2: a challenge lives 10 minutes; an approval does not make its token a credential
    that buys a session forever."""
    http, clock = clocked.http, clocked.clock
    account = await push_account(http)
    challenge = await login(http, account.username)
    node = await request_node(http, account.app.token, challenge)
    assert code_of(await approve(http, account.app, node, challenge["matchNumber"])) == OK
    sessions = await sessions_of(account.user_id)
    clock.advance(clocked.services.settings.challenge_ttl_seconds + 24 * 3600)
    assert code_of(await complete(http, challenge)) == "CHALLENGE_EXPIRED"
    assert await sessions_of(account.user_id) == sessions
