"""Temporary passwords (L6, A3, F2) through the GraphQL API. Windows and expiry are driven by
an app whose services run on a MovableClock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pyotp
import pytest

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session
from gateway.app import create_app
from gateway.container import Services
from gateway.factors.temporary_passwords.models import TemporaryPassword
from gateway.settings import Settings
from tests.conftest import MovableClock
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    SETTINGS,
    data,
    gql,
    sign_up,
)

CREATE = "mutation { createTemporaryPassword { password expiresAt } }"
REAUTHENTICATE = "mutation($p: String!) { reauthenticate(password: $p) }"
PASSWORD_SHAPE = re.compile(r"^[a-z]{4} [a-z]{4} [a-z]{4} [a-z]{4}$")
HOUR = 3600


@dataclass
class Clocked:
    clock: MovableClock
    services: Services
    http: httpx.AsyncClient


@dataclass
class Account:
    username: str
    token: str
    user_id: UUID


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
    token = await sign_up(http, username)
    secret = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    await data(http, CONFIRM_TOTP, {"c": totp.at(clock.now) if clock else totp.now()}, token=token)
    await data(http, ENABLE_2FA, token=token)
    viewer = (await data(http, SETTINGS, token=token))["viewer"]
    return Account(username, token, UUID(viewer["id"]))


async def create(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    result: dict[str, Any] = (await data(http, CREATE, token=token))["createTemporaryPassword"]
    return result


async def login(
    http: httpx.AsyncClient, username: str, password: str, kind: str = "WEB"
) -> dict[str, Any]:
    return await gql(http, LOGIN, {"u": username, "p": password, "k": kind})


def login_outcome(body: dict[str, Any]) -> str:
    """The login result's __typename, or the error's extensions.code."""
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    return str(body["data"]["login"]["__typename"])


async def expiry_in_settings(http: httpx.AsyncClient, token: str) -> datetime | None:
    viewer = (await data(http, SETTINGS, token=token))["viewer"]
    text = viewer["securitySettings"]["temporaryPasswordExpiresAt"]
    return datetime.fromisoformat(text) if text else None


async def test_l6_created_only_within_the_reauthentication_window(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    token = await sign_up(http, username)  # proving the password starts the A3 window

    clock.advance(900)  # the last second of the 15-minute window
    issued = await create(http, token)
    assert PASSWORD_SHAPE.fullmatch(issued["password"])
    assert datetime.fromisoformat(issued["expiresAt"]) == clock.now + timedelta(seconds=HOUR)

    clock.advance(1)
    refused = await gql(http, CREATE, token=token)
    assert refused["errors"][0]["extensions"]["code"] == "REAUTHENTICATION_REQUIRED"
    assert refused["data"] is None
    # The refused call left the earlier password in place.
    assert await expiry_in_settings(http, token) == datetime.fromisoformat(issued["expiresAt"])

    assert (await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token))["reauthenticate"]
    renewed = await create(http, token)
    assert renewed["password"] != issued["password"]


async def test_l6_logs_in_any_client_kind_without_a_challenge_with_two_factor_on(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    assert login_outcome(await login(client, username, PASSWORD)) == "LoginChallenge"
    for kind in ClientKind:
        password = (await create(client, account.token))["password"]
        body = await login(client, username, password, kind.value)
        assert login_outcome(body) == "Session", kind
        session = body["data"]["login"]
        assert session["clientKind"] == kind.value
        viewer = (await data(client, SETTINGS, token=session["token"]))["viewer"]
        assert viewer["username"] == username
    # Typed without the spaces it is shown with, in another case, it still works.
    password = (await create(client, account.token))["password"]
    assert login_outcome(await login(client, username, password.replace(" ", "").upper())) == (
        "Session"
    )


async def test_l6_a_temporary_password_is_single_use(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    password = (await create(client, account.token))["password"]
    assert login_outcome(await login(client, username, password, "THIRD_PARTY")) == "Session"
    second = await login(client, username, password, "THIRD_PARTY")
    assert login_outcome(second) == "INVALID_CREDENTIALS"
    assert await expiry_in_settings(client, account.token) is None


async def test_l6_ten_concurrent_logins_with_one_temporary_password_give_one_session(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    password = (await create(client, account.token))["password"]
    sessions_before = await Session.filter(user_id=account.user_id).count()

    bodies = await asyncio.gather(
        *(login(client, username, password, "THIRD_PARTY") for _ in range(10))
    )

    results = [login_outcome(body) for body in bodies]
    assert results.count("Session") == 1
    assert set(results) - {"Session"} <= {"INVALID_CREDENTIALS", "RATE_LIMITED"}
    assert await Session.filter(user_id=account.user_id).count() == sessions_before + 1


async def test_l6_a_new_temporary_password_replaces_the_old_one(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    old = (await create(client, account.token))["password"]
    new = await create(client, account.token)
    assert new["password"] != old
    assert await TemporaryPassword.filter(user_id=account.user_id).count() == 1

    assert login_outcome(await login(client, username, old)) == "INVALID_CREDENTIALS"
    assert login_outcome(await login(client, username, new["password"])) == "Session"


async def test_l6_expires_after_sixty_minutes(clocked: Clocked, username: str) -> None:
    http, clock = clocked.http, clocked.clock
    account = await two_factor_account(http, username, clock)
    first = await create(http, account.token)
    clock.advance(HOUR - 1)
    assert login_outcome(await login(http, username, first["password"])) == "Session"

    assert (await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=account.token))[
        "reauthenticate"
    ]
    second = await create(http, account.token)
    clock.advance(HOUR)
    assert await expiry_in_settings(http, account.token) is None
    assert login_outcome(await login(http, username, second["password"])) == ("INVALID_CREDENTIALS")


async def test_l6_settings_show_the_temporary_password_expiry(
    clocked: Clocked, username: str
) -> None:
    http, clock = clocked.http, clocked.clock
    account = await two_factor_account(http, username, clock)
    assert await expiry_in_settings(http, account.token) is None

    issued = await create(http, account.token)
    expires_at = datetime.fromisoformat(issued["expiresAt"])
    assert expires_at == clock.now + timedelta(seconds=HOUR)
    assert await expiry_in_settings(http, account.token) == expires_at

    # The settings never show the password itself.
    viewer = await gql(http, SETTINGS, token=account.token)
    assert issued["password"] not in str(viewer)
    assert issued["password"].replace(" ", "") not in str(viewer)

    assert login_outcome(await login(http, username, issued["password"])) == "Session"
    assert await expiry_in_settings(http, account.token) is None


async def test_l6_the_database_holds_no_plaintext_temporary_password(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    password = (await create(client, account.token))["password"]
    row = await TemporaryPassword.get(user_id=account.user_id)
    stored = " ".join(str(getattr(row, name)) for name in row._meta.fields_map).lower()
    assert password not in stored
    assert password.replace(" ", "") not in stored


async def test_l6_concurrent_creations_leave_exactly_one_working_password(
    client: httpx.AsyncClient, username: str
) -> None:
    account = await two_factor_account(client, username)
    bodies = await asyncio.gather(*(gql(client, CREATE, token=account.token) for _ in range(5)))
    assert all(not body.get("errors") for body in bodies), bodies
    passwords = [body["data"]["createTemporaryPassword"]["password"] for body in bodies]
    assert len(set(passwords)) == 5
    assert await TemporaryPassword.filter(user_id=account.user_id).count() == 1

    results = [login_outcome(await login(client, username, p)) for p in passwords]
    assert results.count("Session") == 1
    assert set(results) - {"Session"} == {"INVALID_CREDENTIALS"}


async def test_a3_l6_a_temporary_password_session_has_not_proved_the_password(
    clocked: Clocked, username: str
) -> None:
    """A temporary password is for third-party apps and app re-login, not the account's
    password: a session it opened must reauthenticate with the real password before it may
    turn 2FA off or mint another temporary password (A3)."""
    http, clock = clocked.http, clocked.clock
    account = await two_factor_account(http, username, clock)
    password = (await create(http, account.token))["password"]
    body = await login(http, username, password, "THIRD_PARTY")
    token = body["data"]["login"]["token"]
    clock.advance(1)

    for mutation in (CREATE, "mutation { disableTwoFactor { twoFactorEnabled } }"):
        refused = await gql(http, mutation, token=token)
        assert refused.get("errors"), (mutation, refused)
        assert refused["errors"][0]["extensions"]["code"] == "REAUTHENTICATION_REQUIRED"
    viewer = (await data(http, SETTINGS, token=account.token))["viewer"]
    assert viewer["securitySettings"]["twoFactorEnabled"] is True

    # Proving the real password opens the window for that session.
    assert (await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token))["reauthenticate"]
    assert PASSWORD_SHAPE.fullmatch((await create(http, token))["password"])
