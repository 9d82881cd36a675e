"""Login and challenges (L2, L3, L5, L7) and the code throttles (F5). Clock-driven rules run
against the domain services on a MovableClock (make_services(clock=clock)); the contract's
shapes and error codes are checked through the GraphQL API."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pyotp
import pytest

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session, User
from gateway.accounts.service import Client, IssuedSession
from gateway.app import create_app
from gateway.container import Services
from gateway.core.audit import SecurityEvent
from gateway.core.code_throttle import FactorThrottle
from gateway.core.crypto import token_digest
from gateway.core.errors import DomainError, RateLimited
from gateway.core.outcome import Outcome
from gateway.core.passwords import Passwords
from gateway.factors.base import TwoFactorMethod
from gateway.login.models import ChallengeStatus, LoginChallenge
from gateway.login.service import ChallengeView
from gateway.settings import Settings
from tests.conftest import MovableClock
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    SETTINGS,
    VERIFY,
    app_client,
    data,
    gql,
    random_ip,
    sign_up,
)
from tests.statements import counted_statements, on_postgres

REAUTHENTICATE = "mutation($p: String!) { reauthenticate(password: $p) }"

TOTP = TwoFactorMethod.TOTP
BACKUP = TwoFactorMethod.BACKUP_CODE
WEB = Client(ClientKind.WEB, None, None)
SESSION = "SESSION"

LOGIN_CHALLENGE = """
query($id: ID!, $t: String!) {
  loginChallenge(id: $id, token: $t) { id status methods expiresAt }
}"""


# Domain-layer helpers ------------------------------------------------------------------------


@dataclass
class DomainAccount:
    user_id: UUID
    username: str
    secret: str
    backup_code: str


async def domain_account(services: Services, clock: MovableClock, username: str) -> DomainAccount:
    """Sign-up, TOTP confirmed at the clock's time, 2FA on; the clock then moves to the next
    TOTP step, so a login code of the current time has not been used yet (T2)."""
    async with services.uow():
        user = await services.accounts.sign_up(username, PASSWORD)
        issued = await services.accounts.issue_session(user.id, WEB, password_proved=True)
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    async with services.uow():
        enrollment = await services.security.begin_totp(session)
    async with services.uow():
        await services.security.confirm_totp(session, totp_at(enrollment.secret, clock.now))
    async with services.uow() as work:
        _, first = await services.security.enable(session, work)
    clock.advance(30)
    return DomainAccount(user.id, username, enrollment.secret, first.code)


async def domain_challenge(
    services: Services, username: str, kind: ClientKind = ClientKind.WEB
) -> ChallengeView:
    async with services.uow() as work:
        outcome = await services.login.login(username, PASSWORD, Client(kind, None, None), work)
    result = outcome.unwrap()
    assert isinstance(result, ChallengeView)
    return result


async def attempt(
    services: Services, challenge: ChallengeView, method: TwoFactorMethod, code: str
) -> IssuedSession | DomainError:
    """One verification as the GraphQL edge runs it: one unit of work, commit, then report."""
    try:
        async with services.uow() as work:
            outcome = await services.login.verify(
                str(challenge.id), challenge.token, method, code, None, work
            )
    except DomainError as error:
        return error
    if outcome.error is not None:
        return outcome.error
    assert outcome.value is not None
    return outcome.value


def code_of(result: IssuedSession | DomainError) -> str:
    return result.code if isinstance(result, DomainError) else SESSION


def totp_at(secret: str, moment: datetime) -> str:
    code: str = pyotp.TOTP(secret).at(moment)
    return code


def wrong_totp(secret: str, moment: datetime) -> str:
    """A 6-digit code that matches no step inside the drift window."""
    near = {totp_at(secret, moment + timedelta(seconds=30 * d)) for d in (-1, 0, 1)}
    return next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in near)


async def wait_out_backoff(clock: MovableClock, user_id: UUID) -> None:
    for row in await FactorThrottle.filter(user_id=user_id, blocked_until__isnull=False):
        assert row.blocked_until is not None
        if row.blocked_until > clock.now:
            clock.now = row.blocked_until


async def throttle_row(user_id: UUID, method: TwoFactorMethod) -> FactorThrottle | None:
    return await FactorThrottle.get_or_none(user_id=user_id, method=method.value)


@pytest.fixture
def clocked_services(make_services: Callable[..., Services], clock: MovableClock) -> Services:
    return make_services(clock=clock)


# GraphQL helpers -----------------------------------------------------------------------------


@dataclass
class Account:
    username: str
    token: str
    user_id: UUID
    secret: str
    backup_code: str


async def graphql_account(
    http: httpx.AsyncClient, username: str, clock: MovableClock | None = None
) -> Account:
    token = await sign_up(http, username)
    secret = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    await data(http, CONFIRM_TOTP, {"c": totp.at(clock.now) if clock else totp.now()}, token=token)
    enabled = (await data(http, ENABLE_2FA, token=token))["enableTwoFactor"]
    viewer = (await data(http, SETTINGS, token=token))["viewer"]
    return Account(username, token, UUID(viewer["id"]), secret, enabled["backupCode"]["code"])


async def open_challenge(
    http: httpx.AsyncClient, username: str, kind: str = "WEB"
) -> dict[str, Any]:
    result: dict[str, Any] = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": kind}))[
        "login"
    ]
    assert result["__typename"] == "LoginChallenge"
    return result


async def verify(
    http: httpx.AsyncClient, challenge: dict[str, Any], method: str, code: str
) -> dict[str, Any]:
    variables = {"id": challenge["id"], "t": challenge["token"], "m": method, "c": code}
    return await gql(http, VERIFY, variables)


def outcome(body: dict[str, Any]) -> str:
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    assert body["data"]["verifyLoginChallenge"]["token"]
    return SESSION


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("errors"), body
    error: dict[str, Any] = body["errors"][0]
    return error


@dataclass
class Clocked:
    clock: MovableClock
    services: Services
    http: httpx.AsyncClient


@pytest.fixture
async def clocked(
    settings: Settings, clock: MovableClock, clocked_services: Services
) -> AsyncIterator[Clocked]:
    app = create_app(settings, clocked_services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Clocked(clock, clocked_services, http)


# L2 ------------------------------------------------------------------------------------------


async def test_l2_challenge_lists_the_methods_in_api_order(clocked: Clocked, username: str) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username)
    assert challenge["status"] == "PENDING"
    assert challenge["methods"] == ["TOTP", "BACKUP_CODE"]
    assert challenge["token"]
    assert datetime.fromisoformat(challenge["expiresAt"]) == clock.now + timedelta(seconds=600)
    # Without backup codes only TOTP is left; a third-party client is never offered them.
    assert (await open_challenge(http, username, "THIRD_PARTY"))["methods"] == ["TOTP"]
    clock.advance(30)
    assert outcome(await verify(http, challenge, "BACKUP_CODE", account.backup_code)) == SESSION
    assert (await open_challenge(http, username))["methods"] == ["TOTP"]


async def test_l2_challenge_locks_at_the_fifth_wrong_code(
    clocked_services: Services, clock: MovableClock, username: str
) -> None:
    services = clocked_services
    account = await domain_account(services, clock, username)
    challenge = await domain_challenge(services, username)
    for expected_attempts in range(1, 5):
        await wait_out_backoff(clock, account.user_id)
        result = await attempt(services, challenge, TOTP, wrong_totp(account.secret, clock.now))
        assert code_of(result) == "INVALID_CODE"
        row = await LoginChallenge.get(id=challenge.id)
        assert (row.status, row.wrong_attempts) == (ChallengeStatus.PENDING, expected_attempts)

    await wait_out_backoff(clock, account.user_id)
    result = await attempt(services, challenge, TOTP, wrong_totp(account.secret, clock.now))
    assert code_of(result) == "CHALLENGE_LOCKED"
    assert (await services.login.view(str(challenge.id), challenge.token)).status == "LOCKED"

    # Locked means locked: right codes of either method are refused without being spent.
    await wait_out_backoff(clock, account.user_id)
    clock.advance(30)
    right = totp_at(account.secret, clock.now)
    assert code_of(await attempt(services, challenge, TOTP, right)) == "CHALLENGE_LOCKED"
    assert code_of(await attempt(services, challenge, BACKUP, account.backup_code)) == (
        "CHALLENGE_LOCKED"
    )
    assert await Session.filter(user_id=account.user_id).count() == 1
    # The refused backup code was never evaluated: it completes a new challenge.
    fresh = await domain_challenge(services, username)
    assert code_of(await attempt(services, fresh, BACKUP, account.backup_code)) == SESSION


async def test_l2_challenge_expires_after_the_ttl(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock, challenge_ttl_seconds=120)
    account = await domain_account(services, clock, username)
    challenge = await domain_challenge(services, username)
    assert challenge.expires_at == clock.now + timedelta(seconds=120)

    clock.advance(119)
    view = await services.login.view(str(challenge.id), challenge.token)
    assert view.status == ChallengeStatus.PENDING
    clock.advance(1)
    view = await services.login.view(str(challenge.id), challenge.token)
    assert view.status == ChallengeStatus.EXPIRED

    right = totp_at(account.secret, clock.now)
    assert code_of(await attempt(services, challenge, TOTP, right)) == "CHALLENGE_EXPIRED"
    assert code_of(await attempt(services, challenge, BACKUP, account.backup_code)) == (
        "CHALLENGE_EXPIRED"
    )
    assert await Session.filter(user_id=account.user_id).count() == 1
    # Nothing was spent: the same TOTP step and backup code complete a new challenge.
    fresh = await domain_challenge(services, username)
    assert code_of(await attempt(services, fresh, TOTP, right)) == SESSION


async def test_l2_expired_challenge_shows_expired_over_graphql(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username)
    clock.advance(600)
    variables = {"id": challenge["id"], "t": challenge["token"]}
    assert (await data(http, LOGIN_CHALLENGE, variables))["loginChallenge"]["status"] == "EXPIRED"
    body = await verify(http, challenge, "BACKUP_CODE", account.backup_code)
    assert outcome(body) == "CHALLENGE_EXPIRED"


async def test_l2_login_challenge_query_shows_the_status(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await graphql_account(client, username)
    challenge = await open_challenge(client, username)
    variables = {"id": challenge["id"], "t": challenge["token"]}
    pending = (await data(client, LOGIN_CHALLENGE, variables))["loginChallenge"]
    assert pending == {
        "id": challenge["id"],
        "status": "PENDING",
        "methods": ["TOTP", "BACKUP_CODE"],
        "expiresAt": challenge["expiresAt"],
    }
    assert outcome(await verify(client, challenge, "BACKUP_CODE", account.backup_code)) == SESSION
    completed = (await data(client, LOGIN_CHALLENGE, variables))["loginChallenge"]
    assert completed["status"] == "COMPLETED"


async def test_l2_wrong_token_or_unknown_id_is_not_found_and_malformed_id_is_bad_input(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await graphql_account(client, username)
    challenge = await open_challenge(client, username)
    other = await open_challenge(client, username)
    cases = {
        "wrong token": {"id": challenge["id"], "t": other["token"]},
        "unknown id": {"id": str(uuid.uuid4()), "t": challenge["token"]},
        "empty token": {"id": challenge["id"], "t": ""},
    }
    for case, variables in cases.items():
        body = await gql(client, LOGIN_CHALLENGE, variables)
        assert error_of(body)["extensions"]["code"] == "NOT_FOUND", case
        body = await verify(
            client, {"id": variables["id"], "token": variables["t"]}, "BACKUP_CODE", "x"
        )
        assert outcome(body) == "NOT_FOUND", case

    malformed = {"id": "not-a-uuid", "t": challenge["token"]}
    body = await gql(client, LOGIN_CHALLENGE, malformed)
    assert error_of(body)["extensions"]["code"] == "BAD_USER_INPUT"
    body = await verify(client, {"id": "not-a-uuid", "token": challenge["token"]}, "TOTP", "1")
    assert outcome(body) == "BAD_USER_INPUT"

    # None of those counted against the real challenge, which still completes.
    assert (await LoginChallenge.get(id=challenge["id"])).wrong_attempts == 0
    assert outcome(await verify(client, challenge, "BACKUP_CODE", account.backup_code)) == SESSION


# L3 ------------------------------------------------------------------------------------------


async def test_l3_wrong_password_and_unknown_user_give_the_same_error(
    client: httpx.AsyncClient, username: str
) -> None:
    await sign_up(client, username)
    wrong_password = await gql(client, LOGIN, {"u": username, "p": "not the password", "k": "WEB"})
    unknown_user = await gql(
        client, LOGIN, {"u": f"{username}_nobody", "p": "not the password", "k": "WEB"}
    )
    assert wrong_password["data"] is None
    assert unknown_user["data"] is None
    first, second = error_of(wrong_password), error_of(unknown_user)
    assert first["extensions"] == second["extensions"] == {"code": "INVALID_CREDENTIALS"}
    assert first["message"] == second["message"]
    assert username not in first["message"]


async def test_l3_per_account_throttle_answers_rate_limited_with_retry_after(
    make_services: Callable[..., Services], username: str
) -> None:
    services = make_services(login_failures_per_account=3)
    async with app_client(services, random_ip()) as http:
        await sign_up(http, username)
        bystander = f"{username}_b"
        await sign_up(http, bystander)
        for _ in range(3):
            body = await gql(http, LOGIN, {"u": username, "p": "wrong password", "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == "INVALID_CREDENTIALS"

        # Even the right password is refused now, with a retryAfter.
        body = await gql(http, LOGIN, {"u": username.upper(), "p": PASSWORD, "k": "WEB"})
        error = error_of(body)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        retry_after = error["extensions"]["retryAfter"]
        assert isinstance(retry_after, int)
        assert 1 <= retry_after <= services.settings.login_failure_window_seconds

        # Another account from the same address is not affected.
        body = await gql(http, LOGIN, {"u": bystander, "p": PASSWORD, "k": "WEB"})
        assert body["data"]["login"]["__typename"] == "Session"

        # Unknown usernames are throttled the same way (no enumeration through the throttle).
        ghost = f"{username}_ghost"
        for _ in range(3):
            body = await gql(http, LOGIN, {"u": ghost, "p": "wrong password", "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == "INVALID_CREDENTIALS"
        body = await gql(http, LOGIN, {"u": ghost, "p": "wrong password", "k": "WEB"})
        assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"


SCRIPT_COMMANDS = ("eval", "evalsha", "script|load", "script")
# The password throttle's scripts: an attempt's beginning and its end.
PASSWORD_SCRIPTS = 2


async def script_commands(services: Services) -> dict[str, int]:
    """Calls of the script commands so far, for the whole server (INFO commandstats; Redis 7 and
    valkey name SCRIPT LOAD `script|load`, Redis 6 counts every SCRIPT subcommand as `script`)."""
    stats = await services.redis.info("commandstats")
    return {n: int(stats.get(f"cmdstat_{n}", {}).get("calls", 0)) for n in SCRIPT_COMMANDS}


async def test_l3_the_throttle_keeps_counting_after_redis_forgets_its_scripts(
    make_services: Callable[..., Services], username: str
) -> None:
    """The windows run as scripts cached by Redis (EVALSHA); a restarted Redis has none, and a
    check must then load them again rather than fail open or answer INTERNAL. Their text goes to
    Redis once per script after a flush, not with every check (EVAL): counted by the server."""
    services = make_services(login_failures_per_account=2)
    async with app_client(services, random_ip()) as http:
        await sign_up(http, username)
        bystander = f"{username}_b"
        await sign_up(http, bystander)
        for _ in range(2):
            await services.redis.script_flush()
            body = await gql(http, LOGIN, {"u": username, "p": "wrong password", "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == "INVALID_CREDENTIALS"
        await services.redis.script_flush()
        body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"

        await services.redis.script_flush()
        before = await script_commands(services)
        checks = 4
        for _ in range(checks):
            # An attempt begun and ended, then one refused at its beginning: three script runs.
            body = await gql(http, LOGIN, {"u": bystander, "p": PASSWORD, "k": "WEB"})
            assert body["data"]["login"]["__typename"] == "Session"
            body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"
        after = await script_commands(services)
    calls = {n: after[n] - before[n] for n in SCRIPT_COMMANDS}
    assert calls["evalsha"] >= 3 * checks, calls
    # Each script's text sent at most once since the flush, however it was sent.
    assert calls["eval"] + calls["script|load"] + calls["script"] <= PASSWORD_SCRIPTS, calls


async def test_l3_a_right_password_clears_the_accounts_earlier_wrong_ones(
    make_services: Callable[..., Services], username: str
) -> None:
    """`succeeded` skips its write only when `check` saw an empty window: here it must not."""
    services = make_services(login_failures_per_account=3)
    async with app_client(services, random_ip()) as http:
        await sign_up(http, username)
        for _ in range(2):
            for _ in range(2):
                body = await gql(http, LOGIN, {"u": username, "p": "wrong password", "k": "WEB"})
                assert error_of(body)["extensions"]["code"] == "INVALID_CREDENTIALS"
            body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
            assert body["data"]["login"]["__typename"] == "Session"


async def test_l3_per_ip_throttle_answers_rate_limited(
    make_services: Callable[..., Services], username: str
) -> None:
    services = make_services(login_failures_per_ip=3)
    names = [f"{username}_{i}" for i in range(3)]
    address = random_ip()
    async with app_client(services, address) as http:
        for name in [username, *names]:
            await sign_up(http, name)
        for name in names:
            body = await gql(http, LOGIN, {"u": name, "p": "wrong password", "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == "INVALID_CREDENTIALS"
        body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        error = error_of(body)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] >= 1
    async with app_client(services, random_ip()) as http:
        body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        assert body["data"]["login"]["__typename"] == "Session"


def random_ipv6_prefix() -> str:
    """A /64 of unique local addresses no other test uses: its first four groups."""
    return "fd" + secrets.token_hex(1) + ":" + ":".join(secrets.token_hex(2) for _ in range(3))


async def test_l3_ipv6_addresses_count_per_64_in_the_per_ip_window(
    make_services: Callable[..., Services], username: str
) -> None:
    """An IPv6 subscriber holds a whole /64: guesses from a fresh address of the same /64 each
    time still fill one window, and a neighbouring /64 is not affected."""
    services = make_services(login_failures_per_ip=3)
    prefix = random_ipv6_prefix()
    names = [f"{username}_{i}" for i in range(3)]
    async with app_client(services, random_ip()) as http:
        for name in [username, *names]:
            await sign_up(http, name)
    for index, name in enumerate(names):
        async with app_client(services, f"{prefix}::{index + 1:x}") as http:
            body = await gql(http, LOGIN, {"u": name, "p": "wrong password", "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == "INVALID_CREDENTIALS"
    async with app_client(services, f"{prefix}:1234:5678:9abc:def0") as http:
        body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"
    async with app_client(services, f"{random_ipv6_prefix()}::1") as http:
        body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        assert body["data"]["login"]["__typename"] == "Session"


async def test_l3_a_burst_of_parallel_wrong_passwords_gets_exactly_the_limit_checked(
    make_services: Callable[..., Services], username: str
) -> None:
    """Each check counts itself before argon2 runs: 30 guesses sent at once get 5 answers and
    25 RATE_LIMITED, and the right password after them is refused too."""
    services = make_services(login_failures_per_account=5)
    async with app_client(services, random_ip()) as http:
        await sign_up(http, username)
        guesses = [
            gql(http, LOGIN, {"u": username, "p": f"guess number {i}", "k": "WEB"})
            for i in range(30)
        ]
        codes = [error_of(body)["extensions"]["code"] for body in await asyncio.gather(*guesses)]
        assert codes.count("INVALID_CREDENTIALS") == 5, codes
        assert codes.count("RATE_LIMITED") == 25, codes
        body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"


async def test_l3_a_window_full_only_of_checks_in_flight_asks_for_a_second_not_its_life(
    make_services: Callable[..., Services], username: str
) -> None:
    """Checks still waiting for argon2 hold their place toward the limit, but say nothing yet
    about the password: the answer is "retry in a second", and once they turn out right the
    place is free again. Only failures close the window for its whole life."""
    services = make_services(login_failures_per_account=2)
    guard = services.accounts.guard
    key = username.casefold()
    first = await guard.check(key, None)
    second = await guard.check(key, None)
    with pytest.raises(RateLimited) as in_flight:
        await guard.check(key, None)
    assert in_flight.value.retry_after == 1
    await guard.succeeded(first)
    await guard.succeeded(second)

    for _ in range(2):
        await guard.failed(await guard.check(key, None))
    with pytest.raises(RateLimited) as full:
        await guard.check(key, None)
    window = services.settings.login_failure_window_seconds
    assert window - 5 <= full.value.retry_after <= window


async def test_l3_a3_a_check_that_dies_midway_leaves_the_window_without_counting(
    make_services: Callable[..., Services], username: str
) -> None:
    """A check that raises after it started (here cancelled while argon2 runs; the database
    going down does the same) must not hold its place for the in-flight lifetime: with a
    limit of 1, the right password right after it was RATE_LIMITED for 30 s."""
    services = make_services(login_failures_per_account=1)
    user = await services.accounts.sign_up(username, PASSWORD)
    # A costly hash, so the check is still at argon2 when it is cancelled.
    slow = await Passwords(memory_kib=64 * 1024, time_cost=3).hash(PASSWORD)
    await User.filter(id=user.id).update(password_hash=slow)
    in_flight = f"kanmon:throttle:pw:acct:{username.casefold()}:inflight"
    client = Client(ClientKind.WEB, None, random_ip())

    async def log_in() -> object:
        async with services.uow() as work:
            return await services.login.login(username, PASSWORD, client, work)

    async def reauthenticate() -> None:
        session = await services.accounts.session_for_token(issued.token)
        assert session is not None
        await services.accounts.reauthenticate(session, PASSWORD, client.ip_address)

    issued = await services.accounts.issue_session(user.id, client, password_proved=False)
    for check in (log_in, reauthenticate):
        task = asyncio.create_task(check())
        while not await services.redis.zcard(in_flight):
            assert not task.done(), "the check ended before it could be cancelled"
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await services.redis.zcard(in_flight) == 0, check.__name__
    outcome = await log_in()
    assert isinstance(outcome, Outcome)
    assert isinstance(outcome.unwrap(), IssuedSession)


async def test_l3_a3_parallel_reauthenticate_guesses_get_exactly_the_limit_checked(
    make_services: Callable[..., Services], username: str
) -> None:
    """A stolen session cannot guess its way into the A3 window faster than the throttle."""
    services = make_services(login_failures_per_account=4)
    async with app_client(services, random_ip()) as http:
        token = await sign_up(http, username)
        guesses = [
            gql(http, REAUTHENTICATE, {"p": f"guess number {i}"}, token=token) for i in range(20)
        ]
        codes = [error_of(body)["extensions"]["code"] for body in await asyncio.gather(*guesses)]
        assert codes.count("INVALID_CREDENTIALS") == 4, codes
        assert codes.count("RATE_LIMITED") == 16, codes
        body = await gql(http, REAUTHENTICATE, {"p": PASSWORD}, token=token)
        assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"


async def test_l3_right_passwords_do_not_fill_the_windows(
    make_services: Callable[..., Services], username: str
) -> None:
    """A check is counted before argon2 and taken back when the password is right: many
    people logging in from one address (a campus, a carrier's NAT) never reach the limit."""
    services = make_services(login_failures_per_account=2, login_failures_per_ip=2)
    async with app_client(services, random_ip()) as http:
        token = await sign_up(http, username)
        logins = [gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}) for _ in range(2)]
        for body in await asyncio.gather(*logins):
            assert body["data"]["login"]["__typename"] == "Session", body
        for _ in range(4):
            body = await gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
            assert body["data"]["login"]["__typename"] == "Session", body
            assert (await gql(http, REAUTHENTICATE, {"p": PASSWORD}, token=token))["data"] == {
                "reauthenticate": True
            }
        # Both windows are still empty: two wrong passwords are answered, the third is not.
        for expected in ("INVALID_CREDENTIALS", "INVALID_CREDENTIALS", "RATE_LIMITED"):
            body = await gql(http, LOGIN, {"u": username, "p": "wrong password", "k": "WEB"})
            assert error_of(body)["extensions"]["code"] == expected


# L5 ------------------------------------------------------------------------------------------


async def test_l5_a_completed_challenge_cannot_be_completed_again(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username)
    clock.advance(30)
    assert outcome(await verify(http, challenge, "TOTP", totp_at(account.secret, clock.now))) == (
        SESSION
    )
    clock.advance(30)
    again = [
        await verify(http, challenge, "TOTP", totp_at(account.secret, clock.now)),
        await verify(http, challenge, "BACKUP_CODE", account.backup_code),
    ]
    assert [outcome(body) for body in again] == ["CHALLENGE_CLOSED", "CHALLENGE_CLOSED"]
    # Exactly one session came out of the challenge (the other is the sign-up session), and
    # the refused codes were not spent.
    assert await Session.filter(user_id=account.user_id).count() == 2
    row = await LoginChallenge.get(id=challenge["id"])
    assert (row.status, row.wrong_attempts) == (ChallengeStatus.COMPLETED, 0)
    fresh = await open_challenge(http, username)
    assert outcome(await verify(http, fresh, "BACKUP_CODE", account.backup_code)) == SESSION


async def test_l5_f3_a_completed_challenge_writes_its_session_and_events_together(
    clocked: Clocked, username: str
) -> None:
    """The success path writes the challenge, the security events and the session in one
    statement on PostgreSQL: each of them must still carry what the ORM used to write."""
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username, kind="MOBILE_WEB")
    clock.advance(30)
    before = await SecurityEvent.filter(user_id=account.user_id).order_by("-id").first()
    assert before is not None

    body = await verify(http, challenge, "BACKUP_CODE", account.backup_code)

    token = body["data"]["verifyLoginChallenge"]["token"]
    row = await Session.get(token_hash=token_digest(token))
    assert row.user_id == account.user_id  # type: ignore[attr-defined]
    assert (row.client_kind, row.revoked_at) == (ClientKind.MOBILE_WEB, None)
    # A3: the password was proved when the challenge opened, 30 s ago.
    assert row.password_verified_at == clock.now - timedelta(seconds=30)
    assert row.created_at == clock.now
    assert row.expires_at > clock.now
    viewer = (await data(http, SETTINGS, token=token))["viewer"]
    assert UUID(viewer["id"]) == account.user_id
    spent = await LoginChallenge.get(id=challenge["id"])
    assert (spent.status, spent.completed_at) == (ChallengeStatus.COMPLETED, clock.now)
    events = await SecurityEvent.filter(user_id=account.user_id, id__gt=before.id).order_by("id")
    assert [(e.kind, e.detail) for e in events] == [
        ("login.succeeded", "BACKUP_CODE"),
        ("backup_code.used", None),
    ]
    assert all(e.created_at == clock.now for e in events)
    again = await verify(http, challenge, "TOTP", totp_at(account.secret, clock.now))
    assert outcome(again) == "CHALLENGE_CLOSED"


async def test_l2_l5_round_trips_of_a_login_and_a_totp_check_stay_within_budget(
    clocked: Clocked, username: str
) -> None:
    """README, performance: a login is one read (user and enrolled methods) and one insert; a
    TOTP check is 5 statements on PostgreSQL (locks, F5 counter, credential, T2 step, one
    completion statement). SQLite has no data-modifying WITH, so its completion takes three."""
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    clock.advance(30)

    with counted_statements() as login_sql:
        challenge = await open_challenge(http, username)
    with counted_statements() as verify_sql:
        body = await verify(http, challenge, "TOTP", totp_at(account.secret, clock.now))

    assert outcome(body) == SESSION
    assert len(login_sql) == 2, login_sql
    assert len(verify_sql) == (5 if on_postgres() else 7), verify_sql


async def test_l5_concurrent_totp_verifications_of_one_challenge_give_one_session(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username)
    clock.advance(30)
    code = totp_at(account.secret, clock.now)

    bodies = await asyncio.gather(*(verify(http, challenge, "TOTP", code) for _ in range(20)))

    results = [outcome(body) for body in bodies]
    assert results.count(SESSION) == 1
    assert set(results) - {SESSION} <= {"CHALLENGE_CLOSED", "INVALID_CODE", "RATE_LIMITED"}
    assert await Session.filter(user_id=account.user_id).count() == 2
    succeeded = await SecurityEvent.filter(user_id=account.user_id, kind="login.succeeded")
    assert [event.detail for event in succeeded] == ["TOTP"]


async def test_l5_concurrent_totp_and_backup_code_on_one_challenge_give_one_session(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username)
    clock.advance(30)
    code = totp_at(account.secret, clock.now)

    calls = [verify(http, challenge, "TOTP", code) for _ in range(10)]
    calls += [verify(http, challenge, "BACKUP_CODE", account.backup_code) for _ in range(10)]
    results = [outcome(body) for body in await asyncio.gather(*calls)]

    assert results.count(SESSION) == 1
    assert await Session.filter(user_id=account.user_id).count() == 2
    winner = results.index(SESSION)
    viewer = (await data(http, SETTINGS, token=account.token))["viewer"]
    # The backup code is spent only if it was the one that completed the challenge.
    assert viewer["securitySettings"]["backupCodesActive"] == (0 if winner >= 10 else 1)


# L7 ------------------------------------------------------------------------------------------


async def test_l7_third_party_challenge_refuses_backup_codes(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username, "THIRD_PARTY")
    assert "BACKUP_CODE" not in challenge["methods"]

    body = await verify(http, challenge, "BACKUP_CODE", account.backup_code)
    error = error_of(body)
    assert error["extensions"]["code"] == "BACKUP_CODE_NOT_ALLOWED"
    assert "temporary password" in error["message"]
    # Refused before evaluation: the code is not spent and nothing was counted.
    row = await LoginChallenge.get(id=challenge["id"])
    assert (row.status, row.wrong_attempts) == (ChallengeStatus.PENDING, 0)
    assert await throttle_row(account.user_id, BACKUP) is None
    viewer = (await data(http, SETTINGS, token=account.token))["viewer"]
    assert viewer["securitySettings"]["backupCodesActive"] == 1

    clock.advance(30)
    body = await verify(http, challenge, "TOTP", totp_at(account.secret, clock.now))
    assert body["data"]["verifyLoginChallenge"]["clientKind"] == "THIRD_PARTY"


# F5 ------------------------------------------------------------------------------------------


async def test_f5_three_free_failures_then_rate_limited_with_doubling_retry_after(
    clocked_services: Services, clock: MovableClock, username: str
) -> None:
    """Per account and method, across challenges: failure n >= 3 makes the next attempt wait
    2^(n-2) s."""
    services = clocked_services
    account = await domain_account(services, clock, username)

    async def fail_once() -> None:
        challenge = await domain_challenge(services, username)
        wrong = wrong_totp(account.secret, clock.now)
        assert code_of(await attempt(services, challenge, TOTP, wrong)) == "INVALID_CODE"

    for _ in range(3):
        await fail_once()  # answered at once, no waiting in between

    # 2, 4, 8 ... s, capped at 15 minutes (2^10 = 1024 > 900 from the 12th failure on).
    schedule = [(n, min(2 ** (n - 2), 900)) for n in range(3, 14)]
    assert schedule[:3] == [(3, 2), (4, 4), (5, 8)]
    assert schedule[-2:] == [(12, 900), (13, 900)]
    for failures, wait in schedule:
        challenge = await domain_challenge(services, username)
        refused = await attempt(services, challenge, TOTP, wrong_totp(account.secret, clock.now))
        assert isinstance(refused, RateLimited)
        assert refused.retry_after == wait
        assert refused.extensions == {"code": "RATE_LIMITED", "retryAfter": wait}
        clock.advance(wait - 1)
        challenge = await domain_challenge(services, username)  # long waits outlive the last
        refused = await attempt(services, challenge, TOTP, wrong_totp(account.secret, clock.now))
        assert isinstance(refused, RateLimited)
        assert refused.retry_after == 1
        row = await throttle_row(account.user_id, TOTP)
        assert row is not None
        assert row.consecutive_failures == failures
        clock.advance(1)
        await fail_once()


async def test_f5_rate_limited_over_graphql_carries_retry_after(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenge = await open_challenge(http, username)
    for _ in range(3):
        body = await verify(http, challenge, "TOTP", wrong_totp(account.secret, clock.now))
        assert outcome(body) == "INVALID_CODE"
    body = await verify(http, challenge, "TOTP", wrong_totp(account.secret, clock.now))
    assert error_of(body)["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 2}


async def test_f5_rate_limited_attempts_are_not_evaluated_or_counted(
    clocked_services: Services, clock: MovableClock, username: str
) -> None:
    services = clocked_services
    account = await domain_account(services, clock, username)
    challenge = await domain_challenge(services, username)
    for _ in range(3):
        result = await attempt(services, challenge, BACKUP, "0000-0000-0000")
        assert code_of(result) == "INVALID_BACKUP_CODE"
    blocked_until = clock.now + timedelta(seconds=2)

    # The right code is not evaluated (not spent, no session); wrong codes are not counted.
    for code in [account.backup_code, "1111-1111-1111", account.backup_code]:
        assert code_of(await attempt(services, challenge, BACKUP, code)) == "RATE_LIMITED"
    row = await throttle_row(account.user_id, BACKUP)
    assert row is not None
    assert (row.consecutive_failures, row.blocked_until) == (3, blocked_until)
    challenge_row = await LoginChallenge.get(id=challenge.id)
    assert (challenge_row.status, challenge_row.wrong_attempts) == (ChallengeStatus.PENDING, 3)
    assert await services.backup_codes.active_count(account.user_id) == 1
    assert await Session.filter(user_id=account.user_id).count() == 1

    clock.advance(2)
    assert code_of(await attempt(services, challenge, BACKUP, account.backup_code)) == SESSION


async def test_f5_failure_counters_live_in_the_database(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    account = await domain_account(services, clock, username)
    for _ in range(3):
        challenge = await domain_challenge(services, username)
        wrong = wrong_totp(account.secret, clock.now)
        assert code_of(await attempt(services, challenge, TOTP, wrong)) == "INVALID_CODE"
    row = await throttle_row(account.user_id, TOTP)
    assert row is not None
    assert row.consecutive_failures == 3
    assert row.blocked_until == clock.now + timedelta(seconds=2)
    # Services built afresh (as another gateway process would be) see the same back-off: the
    # state is in the database row, not in memory or Redis.
    other = make_services(clock=clock)
    challenge = await domain_challenge(other, username)
    refused = await attempt(other, challenge, TOTP, totp_at(account.secret, clock.now))
    assert isinstance(refused, RateLimited)
    assert refused.retry_after == 2


async def test_f5_a_success_resets_only_its_own_methods_counter(
    clocked_services: Services, clock: MovableClock, username: str
) -> None:
    services = clocked_services
    account = await domain_account(services, clock, username)
    challenge = await domain_challenge(services, username)
    for _ in range(2):
        wrong = wrong_totp(account.secret, clock.now)
        assert code_of(await attempt(services, challenge, TOTP, wrong)) == "INVALID_CODE"
        bad = "2222-2222-2222"
        assert code_of(await attempt(services, challenge, BACKUP, bad)) == "INVALID_BACKUP_CODE"

    assert code_of(await attempt(services, challenge, BACKUP, account.backup_code)) == SESSION

    backup_row = await throttle_row(account.user_id, BACKUP)
    totp_row = await throttle_row(account.user_id, TOTP)
    assert backup_row is not None
    assert totp_row is not None
    assert (backup_row.consecutive_failures, backup_row.blocked_until) == (0, None)
    assert totp_row.consecutive_failures == 2
    # The TOTP counter kept going: one more failure starts its back-off.
    fresh = await domain_challenge(services, username)
    assert code_of(await attempt(services, fresh, TOTP, wrong_totp(account.secret, clock.now))) == (
        "INVALID_CODE"
    )
    refused = await attempt(services, fresh, TOTP, totp_at(account.secret, clock.now))
    assert isinstance(refused, RateLimited)
    assert refused.retry_after == 2


async def test_f5_concurrent_wrong_codes_cannot_slip_past_the_back_off(
    clocked: Clocked, username: str
) -> None:
    """The counter is read and written under the user's lock: ten wrong codes fired at once on
    ten challenges get exactly the three free evaluations, and every one of them is counted."""
    http, clock = clocked.http, clocked.clock
    account = await graphql_account(http, username, clock)
    challenges = [await open_challenge(http, username) for _ in range(10)]
    wrong = wrong_totp(account.secret, clock.now)

    bodies = await asyncio.gather(*(verify(http, c, "TOTP", wrong) for c in challenges))

    results = sorted(outcome(body) for body in bodies)
    assert results == ["INVALID_CODE"] * 3 + ["RATE_LIMITED"] * 7
    row = await throttle_row(account.user_id, TOTP)
    assert row is not None
    assert (row.consecutive_failures, row.blocked_until) == (3, clock.now + timedelta(seconds=2))
