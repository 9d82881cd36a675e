"""Backup codes (B1-B6, H7, H8) through the GraphQL API, with a real database, Redis and arq
worker. Tests that need back-off or expiry to pass use an app whose services run on a
MovableClock, so nothing sleeps."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
import pyotp
import pytest
from arq.connections import ArqRedis
from arq.constants import result_key_prefix

from gateway.accounts.models import Session
from gateway.app import create_app
from gateway.container import Services
from gateway.core.code_throttle import FactorThrottle
from gateway.core.jobs import JOB_BACKUP_CODES_INVALIDATE, queue_key
from gateway.core.outbox import OutboxMessage
from gateway.factors.backup_codes.models import BackupCode, BackupCodeStatus
from gateway.login.models import LoginChallenge
from gateway.settings import Settings
from tests.conftest import MovableClock, run_worker
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    NEW_BACKUP_CODE,
    PASSWORD,
    SETTINGS,
    VERIFY,
    data,
    gql,
    sign_up,
)

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O or U
GROUP = f"[{ALPHABET}]{{4}}"
CODE_SHAPE = re.compile(rf"^{GROUP}-{GROUP}-{GROUP}$")
SESSION = "SESSION"

LOGIN_CHALLENGE = """
query($id: ID!, $t: String!) { loginChallenge(id: $id, token: $t) { status methods } }"""
EVENTS = """
query { viewer { securityEvents(first: 100) { edges { node { kind detail } } } } }"""
DISABLE_2FA = "mutation { disableTwoFactor { twoFactorEnabled backupCodesActive } }"


@dataclass
class Clocked:
    """The real app over httpx, whose services read the test's MovableClock."""

    clock: MovableClock
    services: Services
    http: httpx.AsyncClient


@dataclass
class Account:
    username: str
    token: str
    user_id: UUID
    secret: str
    codes: list[str] = field(default_factory=list)  # backup codes, in the order obtained


@pytest.fixture
async def clocked(
    settings: Settings, make_services: Callable[..., Services], clock: MovableClock
) -> AsyncIterator[Clocked]:
    services = make_services(clock=clock)
    app = create_app(settings, services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Clocked(clock, services, http)


async def two_factor_account(
    http: httpx.AsyncClient, username: str, clock: MovableClock | None = None
) -> Account:
    """Sign-up, TOTP confirmed, 2FA on: the account holds its first backup code (B1)."""
    token = await sign_up(http, username)
    secret = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    await data(http, CONFIRM_TOTP, {"c": totp.at(clock.now) if clock else totp.now()}, token=token)
    enabled = (await data(http, ENABLE_2FA, token=token))["enableTwoFactor"]
    viewer = (await data(http, SETTINGS, token=token))["viewer"]
    return Account(username, token, UUID(viewer["id"]), secret, [enabled["backupCode"]["code"]])


async def add_codes(http: httpx.AsyncClient, account: Account, count: int) -> None:
    for _ in range(count):
        issued = (await data(http, NEW_BACKUP_CODE, token=account.token))["newBackupCode"]
        account.codes.append(issued["code"])


async def open_challenge(
    http: httpx.AsyncClient, username: str, kind: str = "WEB"
) -> dict[str, Any]:
    result: dict[str, Any] = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": kind}))[
        "login"
    ]
    assert result["__typename"] == "LoginChallenge"
    return result


async def use_code(
    http: httpx.AsyncClient, challenge: dict[str, Any], code: str, method: str = "BACKUP_CODE"
) -> dict[str, Any]:
    variables = {"id": challenge["id"], "t": challenge["token"], "m": method, "c": code}
    return await gql(http, VERIFY, variables)


def outcome(body: dict[str, Any]) -> str:
    """SESSION when a session was issued, else the error's extensions.code."""
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    assert body["data"]["verifyLoginChallenge"]["token"]
    return SESSION


async def wait_out_backoff(clock: MovableClock, user_id: UUID) -> None:
    """Moves the clock past every F5 back-off of the user, so the next attempt is evaluated."""
    for row in await FactorThrottle.filter(user_id=user_id, blocked_until__isnull=False):
        assert row.blocked_until is not None
        if row.blocked_until > clock.now:
            clock.now = row.blocked_until


async def settings_of(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    viewer = (await data(http, SETTINGS, token=token))["viewer"]
    result: dict[str, Any] = viewer["securitySettings"]
    return result


async def event_kinds(http: httpx.AsyncClient, token: str) -> list[tuple[str, str | None]]:
    edges = (await data(http, EVENTS, token=token))["viewer"]["securityEvents"]["edges"]
    return [(edge["node"]["kind"], edge["node"]["detail"]) for edge in edges]


def random_code() -> str:
    return "-".join("".join(secrets.choice(ALPHABET) for _ in range(4)) for _ in range(3))


# B1 ------------------------------------------------------------------------------------------


async def test_b1_enabling_two_factor_returns_the_first_backup_code(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    secret = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).now()}, token=token)
    before = await settings_of(client, token)
    assert before["backupCodesActive"] == 0
    assert "BACKUP_CODE" not in before["methods"]

    enabled = (await data(client, ENABLE_2FA, token=token))["enableTwoFactor"]

    backup = enabled["backupCode"]
    assert backup["sequence"] == 1
    assert backup["activeCount"] == 1
    assert CODE_SHAPE.fullmatch(backup["code"])
    assert enabled["settings"]["backupCodesActive"] == 1
    assert "BACKUP_CODE" in enabled["settings"]["methods"]
    # The code returned in that same answer is a working backup code.
    challenge = await open_challenge(client, username)
    assert "BACKUP_CODE" in challenge["methods"]
    assert outcome(await use_code(client, challenge, backup["code"])) == SESSION
    assert (await settings_of(client, token))["backupCodesActive"] == 0


# B2 ------------------------------------------------------------------------------------------


async def test_b2_new_codes_follow_in_sequence_and_a_sixth_active_is_refused(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    for expected in range(2, 6):
        issued = (await data(client, NEW_BACKUP_CODE, token=account.token))["newBackupCode"]
        assert (issued["sequence"], issued["activeCount"]) == (expected, expected)
        account.codes.append(issued["code"])
    assert len(set(account.codes)) == 5

    refused = await gql(client, NEW_BACKUP_CODE, token=account.token)
    assert refused["errors"][0]["extensions"]["code"] == "BACKUP_CODE_LIMIT"
    assert (await settings_of(client, account.token))["backupCodesActive"] == 5
    rows = await BackupCode.filter(user_id=account.user_id).order_by("sequence")
    assert [row.sequence for row in rows] == [1, 2, 3, 4, 5]

    # Using the oldest makes room for exactly one more, which is the 6th in sequence.
    first_use = await use_code(client, await open_challenge(client, username), account.codes[0])
    assert outcome(first_use) == SESSION
    issued = (await data(client, NEW_BACKUP_CODE, token=account.token))["newBackupCode"]
    assert (issued["sequence"], issued["activeCount"]) == (6, 5)
    refused = await gql(client, NEW_BACKUP_CODE, token=account.token)
    assert refused["errors"][0]["extensions"]["code"] == "BACKUP_CODE_LIMIT"


async def test_b2_f3_every_issued_code_is_a_security_event_and_a_refusal_is_not(
    client: httpx.AsyncClient, username: str
) -> None:
    """A new backup code is a new way past the second factor: the user can see when each
    was issued (by sequence number, never the code)."""
    account = await two_factor_account(client, username)
    await add_codes(client, account, 4)
    refused = await gql(client, NEW_BACKUP_CODE, token=account.token)
    assert refused["errors"][0]["extensions"]["code"] == "BACKUP_CODE_LIMIT"

    events = await event_kinds(client, account.token)
    issued = [detail for kind, detail in events if kind == "backup_code.issued"]
    assert issued == ["5", "4", "3", "2", "1"]  # newest first; the refusal added none
    details = " ".join(detail or "" for _, detail in events)
    for code in account.codes:
        assert code not in details
        assert code.replace("-", "") not in details


async def test_b2_sequence_numbers_are_never_reused_after_invalidation(
    clocked: Clocked, username: str
) -> None:
    http = clocked.http
    account = await two_factor_account(http, username, clocked.clock)
    await add_codes(http, account, 2)

    out_of_order = await use_code(http, await open_challenge(http, username), account.codes[2])
    assert outcome(out_of_order) == "BACKUP_CODE_OUT_OF_ORDER"
    assert (await settings_of(http, account.token))["backupCodesActive"] == 0

    issued = (await data(http, NEW_BACKUP_CODE, token=account.token))["newBackupCode"]
    assert (issued["sequence"], issued["activeCount"]) == (4, 1)

    # Turning 2FA off invalidates the set too (F1); turning it on again continues the sequence.
    assert (await data(http, DISABLE_2FA, token=account.token))["disableTwoFactor"] == {
        "twoFactorEnabled": False,
        "backupCodesActive": 0,
    }
    enabled = (await data(http, ENABLE_2FA, token=account.token))["enableTwoFactor"]
    assert (enabled["backupCode"]["sequence"], enabled["backupCode"]["activeCount"]) == (5, 1)

    rows = await BackupCode.filter(user_id=account.user_id).order_by("sequence")
    assert [(row.sequence, row.status) for row in rows] == [
        (1, BackupCodeStatus.INVALIDATED),
        (2, BackupCodeStatus.INVALIDATED),
        (3, BackupCodeStatus.INVALIDATED),
        (4, BackupCodeStatus.INVALIDATED),
        (5, BackupCodeStatus.ACTIVE),
    ]
    # And the new code of the new set works.
    await wait_out_backoff(clocked.clock, account.user_id)
    challenge = await open_challenge(http, username)
    assert outcome(await use_code(http, challenge, enabled["backupCode"]["code"])) == SESSION


# B3 ------------------------------------------------------------------------------------------


async def test_b3_codes_are_twelve_unambiguous_characters_in_groups_of_four(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    await add_codes(client, account, 4)
    for code in account.codes:
        assert CODE_SHAPE.fullmatch(code), code
        compact = code.replace("-", "")
        assert len(compact) == 12
        assert not set(compact) & set("ILOU")
    assert len(set(account.codes)) == 5


async def test_b3_input_is_accepted_in_any_case_with_or_without_spaces_or_dashes(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    await add_codes(client, account, 4)
    first, second, third, fourth, fifth = account.codes
    typed = [
        first.replace("-", "").lower(),  # lower case, no separators
        second.replace("-", " ").lower(),  # lower case, spaces
        " " + third.replace("-", "") + " ",  # upper case, padded
        fourth[:7].lower() + fourth[7:],  # mixed case, dashes kept
        " - ".join(fifth.split("-")),  # dashes and spaces together
    ]
    for text in typed:
        challenge = await open_challenge(client, username)
        assert outcome(await use_code(client, challenge, text)) == SESSION, text
    assert (await settings_of(client, account.token))["backupCodesActive"] == 0


async def test_b3_the_database_holds_no_plaintext_code(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    await add_codes(client, account, 2)
    rows = await BackupCode.filter(user_id=account.user_id).order_by("sequence")
    assert len(rows) == 3
    stored = " ".join(
        str(getattr(row, name)) for row in rows for name in row._meta.fields_map
    ).upper()
    for code in account.codes:
        compact = code.replace("-", "")
        assert compact not in stored
        assert code not in stored
        assert hashlib.sha256(compact.encode()).hexdigest().upper() not in stored  # keyed
    assert len({row.code_hash for row in rows}) == 3


# B4 ------------------------------------------------------------------------------------------


async def test_b4_out_of_order_code_invalidates_the_whole_set(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await two_factor_account(http, username, clock)
    await add_codes(http, account, 2)
    # Challenges opened while the codes were active, so each one still offers BACKUP_CODE.
    challenges = [await open_challenge(http, username) for _ in range(4)]
    assert all("BACKUP_CODE" in c["methods"] for c in challenges)

    body = await use_code(http, challenges[0], account.codes[1])
    assert outcome(body) == "BACKUP_CODE_OUT_OF_ORDER"
    assert "order" in body["errors"][0]["message"]
    assert (await settings_of(http, account.token))["backupCodesActive"] == 0

    for challenge, code in zip(challenges[1:], account.codes, strict=True):
        await wait_out_backoff(clock, account.user_id)
        assert outcome(await use_code(http, challenge, code)) == "INVALID_BACKUP_CODE", code

    rows = await BackupCode.filter(user_id=account.user_id)
    assert {row.status for row in rows} == {BackupCodeStatus.INVALIDATED}
    # A new challenge no longer offers backup codes at all.
    assert (await open_challenge(http, username))["methods"] == ["TOTP"]


async def test_b4_worker_records_one_invalidation_event_even_if_the_job_is_enqueued_twice(
    clocked: Clocked, username: str, settings: Settings, redis: ArqRedis
) -> None:
    http = clocked.http
    account = await two_factor_account(http, username, clocked.clock)
    await add_codes(http, account, 2)
    body = await use_code(http, await open_challenge(http, username), account.codes[2])
    assert outcome(body) == "BACKUP_CODE_OUT_OF_ORDER"

    # The codes are already dead; the event is the worker's job, so it is not there yet.
    kinds = [kind for kind, _ in await event_kinds(http, account.token)]
    assert "backup_codes.invalidated" not in kinds
    messages = [
        m
        for m in await OutboxMessage.filter(job_name=JOB_BACKUP_CODES_INVALIDATE)
        if m.payload["user_id"] == str(account.user_id)
    ]
    assert len(messages) == 1
    message = messages[0]
    assert message.dispatched_at is not None
    assert message.payload["reason"] == "out_of_order"

    # Enqueued a second time (as the sweeper would after a lost hand-off), then run.
    await clocked.services.relay.dispatch([message])
    await run_worker(settings, "maintenance")
    events = [e for e in await event_kinds(http, account.token) if e[0].startswith("backup_codes")]
    assert events == [("backup_codes.invalidated", "out_of_order: 3 codes")]

    # The same job delivered again after its result is gone (an arq retry, or a re-enqueue
    # once the result expired) runs again, and still records the event once.
    await redis.delete(f"{result_key_prefix}{message.id}")
    job = await redis.enqueue_job(
        message.job_name,
        message.payload,
        _job_id=str(message.id),
        _queue_name=queue_key(message.queue),
    )
    assert job is not None
    await run_worker(settings, "maintenance")
    assert await redis.exists(f"{result_key_prefix}{message.id}")
    events = [e for e in await event_kinds(http, account.token) if e[0].startswith("backup_codes")]
    assert events == [("backup_codes.invalidated", "out_of_order: 3 codes")]


async def test_b4_concurrent_out_of_order_and_oldest_codes_leave_no_usable_code(
    clocked: Clocked, username: str
) -> None:
    """The order check and the invalidation are one atomic step: whichever request wins, once
    an out-of-order code was refused, no code of that set works any more."""
    http, clock = clocked.http, clocked.clock
    for round_ in range(20):
        name = f"{username}_{round_}"
        account = await two_factor_account(http, name, clock)
        await add_codes(http, account, 2)
        oldest, _middle, newest = account.codes
        racing = [await open_challenge(http, name) for _ in range(2)]
        checks = [await open_challenge(http, name) for _ in range(3)]

        # Alternate which request starts first, so both interleavings get exercised.
        if round_ % 2:
            third, first = await asyncio.gather(
                use_code(http, racing[1], newest), use_code(http, racing[0], oldest)
            )
        else:
            first, third = await asyncio.gather(
                use_code(http, racing[0], oldest), use_code(http, racing[1], newest)
            )
        # The middle code stays active in either order, so the newest is always out of order.
        assert outcome(third) == "BACKUP_CODE_OUT_OF_ORDER"
        assert outcome(first) in {SESSION, "INVALID_BACKUP_CODE"}
        oldest_won = outcome(first) == SESSION

        rows = {
            row.sequence: row.status for row in await BackupCode.filter(user_id=account.user_id)
        }
        assert rows == {
            1: BackupCodeStatus.USED if oldest_won else BackupCodeStatus.INVALIDATED,
            2: BackupCodeStatus.INVALIDATED,
            3: BackupCodeStatus.INVALIDATED,
        }
        for challenge, code in zip(checks, account.codes, strict=True):
            await wait_out_backoff(clock, account.user_id)
            assert outcome(await use_code(http, challenge, code)) == "INVALID_BACKUP_CODE"
        sessions = await Session.filter(user_id=account.user_id).count()
        assert sessions == 1 + int(oldest_won)


# B5 ------------------------------------------------------------------------------------------


async def test_b5_unknown_spent_and_invalidated_codes_are_invalid_and_count_as_wrong_attempts(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await two_factor_account(http, username, clock)
    await add_codes(http, account, 2)
    first, second, third = account.codes
    assert outcome(await use_code(http, await open_challenge(http, username), first)) == SESSION
    challenge = await open_challenge(http, username)

    async def attempt(code: str) -> tuple[str, int]:
        await wait_out_backoff(clock, account.user_id)
        result = outcome(await use_code(http, challenge, code))
        row = await LoginChallenge.get(id=challenge["id"])
        return result, row.wrong_attempts

    assert await attempt(random_code()) == ("INVALID_BACKUP_CODE", 1)  # unknown
    assert await attempt("not a backup code") == ("INVALID_BACKUP_CODE", 2)  # malformed
    assert await attempt(first) == ("INVALID_BACKUP_CODE", 3)  # spent
    assert await attempt(third) == ("BACKUP_CODE_OUT_OF_ORDER", 4)  # invalidates the set
    # The 5th wrong code (an invalidated one) locks the challenge.
    assert await attempt(second) == ("CHALLENGE_LOCKED", 5)

    status = await data(http, LOGIN_CHALLENGE, {"id": challenge["id"], "t": challenge["token"]})
    assert status["loginChallenge"]["status"] == "LOCKED"
    await wait_out_backoff(clock, account.user_id)
    totp = pyotp.TOTP(account.secret).at(clock.now)
    assert outcome(await use_code(http, challenge, totp, "TOTP")) == "CHALLENGE_LOCKED"
    throttle = await FactorThrottle.get(user_id=account.user_id, method="BACKUP_CODE")
    assert throttle.consecutive_failures == 5


async def test_b5_an_invalidated_code_is_invalid_on_a_fresh_set(
    clocked: Clocked, username: str
) -> None:
    """Codes of an invalidated set stay dead after new codes are issued."""
    http, clock = clocked.http, clocked.clock
    account = await two_factor_account(http, username, clock)
    await add_codes(http, account, 1)
    body = await use_code(http, await open_challenge(http, username), account.codes[1])
    assert outcome(body) == "BACKUP_CODE_OUT_OF_ORDER"
    await add_codes(http, account, 1)
    old_first, _, new_first = account.codes

    challenge = await open_challenge(http, username)
    assert "BACKUP_CODE" in challenge["methods"]
    assert outcome(await use_code(http, challenge, old_first)) == "INVALID_BACKUP_CODE"
    assert (await LoginChallenge.get(id=challenge["id"])).wrong_attempts == 1
    assert outcome(await use_code(http, challenge, new_first)) == SESSION


# B6 ------------------------------------------------------------------------------------------


async def test_b6_fifty_concurrent_uses_of_one_code_give_exactly_one_session(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    code = account.codes[0]
    challenges = [await open_challenge(client, username) for _ in range(50)]
    sessions_before = await Session.filter(user_id=account.user_id).count()

    bodies = await asyncio.gather(*(use_code(client, c, code) for c in challenges))

    results = [outcome(body) for body in bodies]
    assert results.count(SESSION) == 1
    assert set(results) - {SESSION} <= {"INVALID_BACKUP_CODE", "RATE_LIMITED"}
    assert await Session.filter(user_id=account.user_id).count() == sessions_before + 1
    completed = await LoginChallenge.filter(user_id=account.user_id, status="COMPLETED").count()
    assert completed == 1
    assert (await settings_of(client, account.token))["backupCodesActive"] == 0
