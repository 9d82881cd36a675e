"""Accounts and sessions (A1-A3), password login without 2FA (L1), settings (F2) and the
security event pages (F3)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pyotp
import pytest
from arq.connections import ArqRedis
from tortoise import connections
from tortoise.backends.base.client import TransactionalDBClient

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session as SessionRow
from gateway.accounts.models import User
from gateway.accounts.service import Client
from gateway.app import create_app
from gateway.container import Services, build_services
from gateway.core.errors import ReauthenticationRequired
from gateway.core.passwords import Passwords
from gateway.settings import Settings
from tests.conftest import MovableClock
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    NEW_BACKUP_CODE,
    PASSWORD,
    SETTINGS,
    SIGN_UP,
    GraphQLError,
    data,
    gql,
    sign_up,
)
from tests.statements import counted_statements

WEB = Client(kind=ClientKind.WEB, name=None, ip_address=None)
VIEWER = "{ viewer { username } }"
TEMPORARY_PASSWORD = "mutation { createTemporaryPassword { password expiresAt } }"
REAUTHENTICATE = "mutation($p: String!) { reauthenticate(password: $p) }"
EVENTS = """
query($first: Int!, $after: String) { viewer { securityEvents(first: $first, after: $after) {
  edges { cursor node { id kind createdAt detail } } pageInfo { hasNextPage endCursor } } } }"""


@pytest.fixture
async def clocked(
    settings: Settings, make_services: Callable[..., Services], clock: MovableClock
) -> AsyncIterator[httpx.AsyncClient]:
    """The app over services whose clock the test moves."""
    app = create_app(settings, make_services(clock=clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def argon2_parameters(encoded: str) -> dict[str, int]:
    match = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[^$]+\$[^$]+", encoded)
    assert match, encoded
    return {"m": int(match[1]), "t": int(match[2]), "p": int(match[3])}


async def domain_account(services: Services, username: str) -> str:
    """Signs up through the domain layer; returns the first session's bearer token."""
    async with services.uow():
        user = await services.accounts.sign_up(username, PASSWORD)
        issued = await services.accounts.issue_session(user.id, WEB, password_proved=True)
    return issued.token


async def load_session(services: Services, token: str) -> SessionRow:
    session = await services.accounts.session_for_token(token)
    assert session is not None
    return session


async def domain_two_factor(services: Services, clock: MovableClock, token: str) -> None:
    """TOTP confirmed and 2FA on, through the domain layer."""
    session = await load_session(services, token)
    enrollment = await services.security.begin_totp(session)
    await services.security.confirm_totp(session, pyotp.TOTP(enrollment.secret).at(clock.now))
    async with services.uow() as work:
        await services.security.enable(session, work)


# --- A1 -----------------------------------------------------------------------------------


async def test_a1_usernames_are_unique_case_insensitively(
    client: httpx.AsyncClient, username: str
) -> None:
    await sign_up(client, username)
    for variant in (username.upper(), username.swapcase(), username.capitalize(), username):
        body = await gql(client, SIGN_UP, {"u": variant, "p": PASSWORD, "k": "WEB"})
        assert [e["extensions"]["code"] for e in body["errors"]] == ["USERNAME_TAKEN"], variant
    assert await User.filter(username_key=username.casefold()).count() == 1


async def test_a1_password_is_stored_as_an_argon2id_hash(
    client: httpx.AsyncClient, username: str
) -> None:
    await sign_up(client, username)
    user = await User.get(username_key=username.casefold())
    argon2_parameters(user.password_hash)
    assert PASSWORD not in user.password_hash


async def test_a1_production_password_hashing_meets_owasp_minimum() -> None:
    passwords = Passwords()
    encoded = await passwords.hash(PASSWORD)
    parameters = argon2_parameters(encoded)
    assert parameters["m"] >= 19 * 1024
    assert parameters["t"] >= 2
    assert parameters["p"] >= 1
    assert await passwords.verify(encoded, PASSWORD)
    assert not await passwords.verify(encoded, PASSWORD + "!")


# --- A2 -----------------------------------------------------------------------------------


async def test_a2_session_token_is_stored_only_as_its_sha256_digest(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    user = await User.get(username_key=username.casefold())
    rows = await SessionRow.filter(user_id=user.id)
    assert len(rows) == 1
    assert rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
    raw = await connections.get("default").execute_query_dict("SELECT * FROM sessions")
    dumped = json.dumps(raw, default=str)
    assert token not in dumped
    assert rows[0].token_hash in dumped


async def test_a2_logout_revokes_the_session(client: httpx.AsyncClient, username: str) -> None:
    first = await sign_up(client, username)
    login = (await data(client, LOGIN, {"u": username, "p": PASSWORD, "k": "IOS"}))["login"]
    second = login["token"]
    assert (await data(client, VIEWER, token=first))["viewer"] == {"username": username}
    assert (await data(client, "mutation { logout }", token=first)) == {"logout": True}
    assert (await data(client, VIEWER, token=first))["viewer"] is None
    assert (await data(client, "mutation { logout }", token=first)) == {"logout": False}
    # Only that session is revoked.
    assert (await data(client, VIEWER, token=second))["viewer"] == {"username": username}


async def test_a2_logout_without_a_session_returns_false(client: httpx.AsyncClient) -> None:
    assert await data(client, "mutation { logout }") == {"logout": False}


async def test_a2_expired_session_gives_no_viewer(
    clocked: httpx.AsyncClient, clock: MovableClock, settings: Settings, username: str
) -> None:
    token = await sign_up(clocked, username)
    clock.advance(settings.session_ttl_seconds - 1)
    assert (await data(clocked, VIEWER, token=token))["viewer"] == {"username": username}
    clock.advance(2)
    assert (await data(clocked, VIEWER, token=token))["viewer"] is None
    with pytest.raises(GraphQLError) as refused:
        await data(clocked, BEGIN_TOTP, token=token)
    assert refused.value.code == "UNAUTHENTICATED"


# --- A3 -----------------------------------------------------------------------------------


async def test_a3_sensitive_changes_outside_the_window_need_reauthentication(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    token = await domain_account(services, username)
    await domain_two_factor(services, clock, token)
    clock.advance(899)
    inside = await services.security.create_temporary_password(await load_session(services, token))
    assert inside.password
    clock.advance(2)
    session = await load_session(services, token)
    with pytest.raises(ReauthenticationRequired):
        async with services.uow() as work:
            await services.security.remove_totp(session, work)
    with pytest.raises(ReauthenticationRequired):
        async with services.uow() as work:
            await services.security.disable(session, work)
    with pytest.raises(ReauthenticationRequired):
        await services.security.create_temporary_password(session)
    unchanged = await services.security.settings(session.user.id)
    assert unchanged.two_factor_enabled is True
    assert unchanged.totp_enabled is True
    assert unchanged.backup_codes_active == 1
    assert await unchanged.temporary_password_expires_at() == inside.expires_at


async def test_a3_reauthenticate_reopens_the_window(
    make_services: Callable[..., Services], clock: MovableClock, username: str
) -> None:
    services = make_services(clock=clock)
    token = await domain_account(services, username)
    await domain_two_factor(services, clock, token)
    clock.advance(901)
    await services.accounts.reauthenticate(await load_session(services, token), PASSWORD, None)
    session = await load_session(services, token)
    issued = await services.security.create_temporary_password(session)
    assert issued.password
    async with services.uow() as work:
        disabled = await services.security.disable(session, work)
    assert disabled.two_factor_enabled is False
    async with services.uow() as work:
        removed = await services.security.remove_totp(session, work)
    assert removed.settings.totp_enabled is False
    # The reopened window closes again after its length.
    clock.advance(901)
    with pytest.raises(ReauthenticationRequired):
        await services.security.create_temporary_password(await load_session(services, token))


async def test_a3_graphql_answers_reauthentication_required_then_reauthenticate_works(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    clock.advance(901)
    with pytest.raises(GraphQLError) as refused:
        await data(clocked, TEMPORARY_PASSWORD, token=token)
    assert refused.value.code == "REAUTHENTICATION_REQUIRED"
    assert await data(clocked, REAUTHENTICATE, {"p": PASSWORD}, token=token) == {
        "reauthenticate": True
    }
    issued = (await data(clocked, TEMPORARY_PASSWORD, token=token))["createTemporaryPassword"]
    assert issued["password"]


async def test_a3_reauthenticate_with_a_wrong_password_is_invalid_credentials(
    clocked: httpx.AsyncClient, clock: MovableClock, username: str
) -> None:
    token = await sign_up(clocked, username)
    clock.advance(901)
    with pytest.raises(GraphQLError) as wrong:
        await data(clocked, REAUTHENTICATE, {"p": PASSWORD + "x"}, token=token)
    assert wrong.value.code == "INVALID_CREDENTIALS"
    with pytest.raises(GraphQLError) as still_closed:
        await data(clocked, TEMPORARY_PASSWORD, token=token)
    assert still_closed.value.code == "REAUTHENTICATION_REQUIRED"


# --- L1 -----------------------------------------------------------------------------------


async def test_l1_right_password_without_two_factor_gives_a_session(
    client: httpx.AsyncClient, username: str
) -> None:
    await sign_up(client, username)
    login = (await data(client, LOGIN, {"u": username.upper(), "p": PASSWORD, "k": "ANDROID"}))[
        "login"
    ]
    assert login["__typename"] == "Session"
    assert login["clientKind"] == "ANDROID"
    assert (await data(client, VIEWER, token=login["token"]))["viewer"] == {"username": username}


# --- F2, F3 -------------------------------------------------------------------------------


class WatchedPasswords(Passwords):
    """Notes, for each verify, whether a database transaction is open meanwhile, and the most
    verifies that ran at once."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(memory_kib=1024, time_cost=1, parallelism=1, threads=threads)
        self.in_transaction: list[bool] = []
        self.hashed_in_transaction: list[bool] = []
        self.running = 0
        self.most_at_once = 0
        self._guard = threading.Lock()

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        self.in_transaction.append(isinstance(connections.get("default"), TransactionalDBClient))
        return await super().verify(stored_hash, password)

    async def hash(self, password: str) -> str:
        self.hashed_in_transaction.append(
            isinstance(connections.get("default"), TransactionalDBClient)
        )
        return await super().hash(password)

    def _verify_sync(self, stored_hash: str, password: str) -> bool:
        with self._guard:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            # Long enough for every queued verify to be handed to the pool meanwhile.
            for _ in range(20):
                super()._verify_sync(stored_hash, password)
            return super()._verify_sync(stored_hash, password)
        finally:
            with self._guard:
                self.running -= 1


async def test_l1_the_password_is_checked_with_no_transaction_open(
    settings: Settings, redis: ArqRedis, username: str
) -> None:
    """argon2 takes tens of milliseconds (more while logins queue for the cores): the
    `login` mutation holds no database connection in a transaction meanwhile."""
    passwords = WatchedPasswords()
    services = build_services(settings, redis, passwords=passwords)
    app = create_app(settings, services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        await sign_up(http, username)
        login = await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
        assert login["login"]["token"]
        body = await gql(http, LOGIN, {"u": username, "p": "wrong", "k": "WEB"})
        assert body["errors"][0]["extensions"]["code"] == "INVALID_CREDENTIALS"
    assert passwords.in_transaction == [False, False]
    # The probe sees a transaction when there is one: the domain-level login runs in the
    # caller's unit of work.
    async with services.uow() as work:
        await services.login.login(username, PASSWORD, WEB, work)
    assert passwords.in_transaction == [False, False, True]


async def test_a1_sign_up_hashes_the_password_with_no_transaction_open(
    settings: Settings, redis: ArqRedis, username: str
) -> None:
    """As for login: a sign-up waiting for a core holds no database connection."""
    passwords = WatchedPasswords()
    services = build_services(settings, redis, passwords=passwords)
    app = create_app(settings, services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as http:
        await sign_up(http, username)
    assert passwords.hashed_in_transaction == [False]
    # The probe sees a transaction when there is one.
    async with services.uow():
        await services.accounts.sign_up(f"{username}_2", PASSWORD)
    assert passwords.hashed_in_transaction == [False, True]
    assert (
        await User.filter(username_key__in=[username.lower(), f"{username}_2".lower()]).count() == 2
    )


async def test_l1_a_gateway_process_hashes_at_most_its_share_of_passwords_at_once(
    settings: Settings, redis: ArqRedis
) -> None:
    """`kanmon serve --workers N` gives each process cores / N argon2 threads
    (KANMON_ARGON2_THREADS): more hashes at once only evict each other from the caches."""
    built = build_services(settings.model_copy(update={"argon2_threads": 1}), redis)
    assert built.accounts.passwords._pool._max_workers == 1
    passwords = WatchedPasswords(threads=1)
    stored = await passwords.hash(PASSWORD)
    results = await asyncio.gather(*(passwords.verify(stored, PASSWORD) for _ in range(6)))
    assert results == [True] * 6
    assert passwords.most_at_once == 1
    two = WatchedPasswords(threads=2)
    assert all(await asyncio.gather(*(two.verify(stored, PASSWORD) for _ in range(6))))
    assert two.most_at_once == 2


async def test_f2_settings_never_show_codes(client: httpx.AsyncClient, username: str) -> None:
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(enrollment["secret"]).now()}, token=token)
    first = (await data(client, ENABLE_2FA, token=token))["enableTwoFactor"]["backupCode"]
    second = (await data(client, NEW_BACKUP_CODE, token=token))["newBackupCode"]
    temporary = (await data(client, TEMPORARY_PASSWORD, token=token))["createTemporaryPassword"]
    secrets = [
        enrollment["secret"],
        first["code"],
        first["code"].replace("-", ""),
        second["code"],
        second["code"].replace("-", ""),
        temporary["password"],
        temporary["password"].replace(" ", ""),
        token,
    ]
    viewer = (await data(client, SETTINGS, token=token))["viewer"]
    settings = viewer["securitySettings"]
    assert settings["twoFactorEnabled"] is True
    assert settings["totpEnabled"] is True
    assert settings["methods"] == ["TOTP", "BACKUP_CODE"]
    assert settings["backupCodesActive"] == 2
    assert settings["temporaryPasswordExpiresAt"] == temporary["expiresAt"]
    events = await data(client, EVENTS, {"first": 100}, token=token)
    shown = json.dumps([viewer, events])
    for secret in secrets:
        assert secret not in shown


SETTINGS_FIELDS = """twoFactorEnabled methods totpEnabled backupCodesActive
  temporaryPasswordExpiresAt phone { maskedNumber } devices { id }"""
# The same settings three ways: the session and the summary read together...
SETTINGS_SPREAD = (
    "query { viewer { ...V } } fragment V on Viewer { username securitySettings { "
    + SETTINGS_FIELDS
    + " } }"
)
SETTINGS_INLINE = (
    "query { viewer { username ... on Viewer { securitySettings { " + SETTINGS_FIELDS + " } } } }"
)
# ...and apart: the session is already loaded (by `first`) when `viewer` asks for the settings.
SETTINGS_APART = (
    "query { first: viewer { username } viewer { username securitySettings { "
    + SETTINGS_FIELDS
    + " } } }"
)


async def test_f2_g4_settings_read_with_the_session_match_the_separate_read(
    client: httpx.AsyncClient, username: str
) -> None:
    """README, performance: `viewer { securitySettings }` reads the session, the user and the
    summary in one statement, fragments or not; it shows what the separate read shows."""
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(enrollment["secret"]).now()}, token=token)
    await data(client, ENABLE_2FA, token=token)
    await data(client, NEW_BACKUP_CODE, token=token)
    await data(client, TEMPORARY_PASSWORD, token=token)

    apart = (await data(client, SETTINGS_APART, token=token))["viewer"]
    assert apart["securitySettings"]["methods"] == ["TOTP", "BACKUP_CODE"]
    assert apart["securitySettings"]["backupCodesActive"] == 2
    for query in (SETTINGS_SPREAD, SETTINGS_INLINE):
        with counted_statements() as statements:
            together = (await data(client, query, token=token))["viewer"]
        assert together == apart
        # The temporary password, the phone and the devices: read because the query asks.
        assert len(statements) == 4, statements
    with counted_statements() as statements:
        plain = await data(client, "{ viewer { securitySettings { methods } } }", token=token)
    assert plain["viewer"]["securitySettings"]["methods"] == ["TOTP", "BACKUP_CODE"]
    assert len(statements) == 1, statements


async def test_g4_settings_read_with_the_session_refuse_revoked_and_expired_sessions(
    clocked: httpx.AsyncClient, clock: MovableClock, settings: Settings, username: str
) -> None:
    token = await sign_up(clocked, username)
    query = "{ viewer { securitySettings { twoFactorEnabled } } }"
    assert (await data(clocked, query, token=token))["viewer"] is not None
    for bad in ("", "x" * 129, token[:-1], token + "x"):
        assert (await data(clocked, query, token=bad))["viewer"] is None, bad
    clock.advance(settings.session_ttl_seconds + 1)
    assert (await data(clocked, query, token=token))["viewer"] is None

    other = await sign_up(clocked, username + "b")
    assert (await data(clocked, query, token=other))["viewer"] is not None
    assert (await data(clocked, "mutation { logout }", token=other)) == {"logout": True}
    assert (await data(clocked, query, token=other))["viewer"] is None


async def page_all(client: httpx.AsyncClient, token: str, first: int) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        found = (await data(client, EVENTS, {"first": first, "after": after}, token=token))[
            "viewer"
        ]["securityEvents"]
        pages.append(found)
        if not found["pageInfo"]["hasNextPage"]:
            return pages
        after = found["pageInfo"]["endCursor"]
        assert after == found["edges"][-1]["cursor"]


async def test_f3_security_events_page_newest_first(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(enrollment["secret"]).now()}, token=token)
    await data(client, ENABLE_2FA, token=token)
    await data(client, TEMPORARY_PASSWORD, token=token)
    wrong = await gql(client, LOGIN, {"u": username, "p": PASSWORD + "x", "k": "WEB"})
    assert wrong["errors"][0]["extensions"]["code"] == "INVALID_CREDENTIALS"
    done_in_order = [
        "totp.enabled",
        "two_factor.enabled",
        "backup_code.issued",
        "temporary_password.created",
        "login.failed",
    ]

    everything = (await data(client, EVENTS, {"first": 100}, token=token))["viewer"][
        "securityEvents"
    ]
    assert everything["pageInfo"]["hasNextPage"] is False
    kinds = [edge["node"]["kind"] for edge in everything["edges"]]
    assert kinds == list(reversed(done_in_order))
    stamps = [edge["node"]["createdAt"] for edge in everything["edges"]]
    assert stamps == sorted(stamps, reverse=True)

    pages = await page_all(client, token, first=3)
    assert [len(p["edges"]) for p in pages] == [3, 2]
    assert [p["pageInfo"]["hasNextPage"] for p in pages] == [True, False]
    paged = [edge["node"] for p in pages for edge in p["edges"]]
    assert paged == [edge["node"] for edge in everything["edges"]]

    single = await page_all(client, token, first=1)
    assert [edge["node"]["kind"] for p in single for edge in p["edges"]] == kinds

    # Another user's events never show up here, and theirs not here.
    other = await sign_up(client, f"{username}_b")
    theirs = (await data(client, EVENTS, {"first": 100}, token=other))["viewer"]["securityEvents"]
    assert theirs["edges"] == []
    assert theirs["pageInfo"] == {"hasNextPage": False, "endCursor": None}
