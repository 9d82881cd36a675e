"""A1: sign-ups are limited per caller address (an IPv6 caller per /64) in an hour-long Redis
window, checked before argon2 runs or anything is written. Without it one address could create
accounts, each an argon2 hash and a fresh S7 per-account SMS window, without end."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from gateway.accounts.models import User
from gateway.container import Services, build_services
from gateway.core.passwords import Passwords
from gateway.settings import Settings
from tests.graphql_client import (
    PASSWORD,
    SIGN_UP,
    GraphQLError,
    app_client,
    gql,
    random_ip,
    sign_up,
)

LIMIT = 3


def random_ipv6_prefix() -> str:
    """A /64 of unique local addresses no other test uses: its first four groups."""
    return "fd" + secrets.token_hex(1) + ":" + ":".join(secrets.token_hex(2) for _ in range(3))


def fresh_name() -> str:
    return f"su_{secrets.token_hex(6)}"


def retry_after_of_refusal(caught: pytest.ExceptionInfo[GraphQLError]) -> int:
    assert caught.value.code == "RATE_LIMITED", caught.value.errors
    retry_after: int = caught.value.errors[0]["extensions"]["retryAfter"]
    return retry_after


class CountingPasswords(Passwords):
    """The suite's cheap argon2, counting the hashes made: refused sign-ups must make none."""

    def __init__(self) -> None:
        super().__init__(memory_kib=1024, time_cost=1, parallelism=1)
        self.hashes = 0

    async def hash(self, password: str) -> str:
        self.hashes += 1
        return await super().hash(password)


@pytest.fixture
def limited(settings: Settings, redis: ArqRedis) -> tuple[Services, CountingPasswords]:
    passwords = CountingPasswords()
    custom = settings.model_copy(update={"signups_per_ip_per_hour": LIMIT})
    return build_services(custom, redis, passwords=passwords), passwords


async def test_a1_one_sign_up_over_the_limit_is_rate_limited_and_creates_nothing(
    limited: tuple[Services, CountingPasswords],
) -> None:
    services, passwords = limited
    address = random_ip()
    async with app_client(services, address) as http:
        for _ in range(LIMIT):
            assert await sign_up(http, fresh_name())
        assert passwords.hashes == LIMIT
        refused = fresh_name()
        with pytest.raises(GraphQLError) as caught:
            await sign_up(http, refused)
    assert 1 <= retry_after_of_refusal(caught) <= 3600
    assert not await User.exists(username_key=refused)
    assert passwords.hashes == LIMIT
    async with app_client(services, random_ip()) as http:
        assert await sign_up(http, refused)
    assert await User.exists(username_key=refused)


async def test_a1_a_taken_username_counts_and_input_refused_by_its_shape_does_not(
    limited: tuple[Services, CountingPasswords],
) -> None:
    """Probing whether a username exists spends the window (it slows enumeration); a username
    or password refused for its shape alone costs nothing and does not."""
    services, _ = limited
    taken = fresh_name()
    async with app_client(services, random_ip()) as http:
        for _ in range(2 * LIMIT):
            for username, password in (("x", PASSWORD), (fresh_name(), "short")):
                body = await gql(http, SIGN_UP, {"u": username, "p": password, "k": "WEB"})
                assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", body
        await sign_up(http, taken)
        for _ in range(LIMIT - 1):
            with pytest.raises(GraphQLError) as probe:
                await sign_up(http, taken.upper())
            assert probe.value.code == "USERNAME_TAKEN"
        with pytest.raises(GraphQLError) as caught:
            await sign_up(http, taken)
        assert retry_after_of_refusal(caught) >= 1
        with pytest.raises(GraphQLError) as caught:
            await sign_up(http, fresh_name())
        assert retry_after_of_refusal(caught) >= 1


async def test_a1_ipv6_callers_share_the_window_of_their_64(
    limited: tuple[Services, CountingPasswords],
) -> None:
    """An IPv6 subscriber holds a whole /64: a fresh address of it for each sign-up still
    fills one window, and the neighbouring /64 keeps its own."""
    services, _ = limited
    prefix = random_ipv6_prefix()
    for index in range(LIMIT):
        async with app_client(services, f"{prefix}::{index + 1:x}") as http:
            await sign_up(http, fresh_name())
    refused = fresh_name()
    async with app_client(services, f"{prefix}:1234:5678:9abc:def0") as http:
        with pytest.raises(GraphQLError) as caught:
            await sign_up(http, refused)
    assert retry_after_of_refusal(caught) >= 1
    assert not await User.exists(username_key=refused)
    async with app_client(services, f"{random_ipv6_prefix()}::1") as http:
        assert await sign_up(http, refused)


async def test_a1_a_burst_of_parallel_sign_ups_from_one_address_admits_exactly_the_limit(
    limited: tuple[Services, CountingPasswords],
) -> None:
    """The window counts atomically with its check: LIMIT + 5 sign-ups sent at once create
    LIMIT accounts, and the rest are refused before any hash."""
    services, passwords = limited
    names = [fresh_name() for _ in range(LIMIT + 5)]

    async def attempt(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
        return await gql(http, SIGN_UP, {"u": name, "p": PASSWORD, "k": "WEB"})

    async with app_client(services, random_ip()) as http:
        bodies = await asyncio.gather(*(attempt(http, name) for name in names))
    created = [body for body in bodies if not body.get("errors")]
    codes = [body["errors"][0]["extensions"]["code"] for body in bodies if body.get("errors")]
    assert len(created) == LIMIT, bodies
    assert codes == ["RATE_LIMITED"] * 5, bodies
    assert await User.filter(username_key__in=names).count() == LIMIT
    assert passwords.hashes == LIMIT


async def test_a1_domain_sign_ups_without_an_address_count_in_no_window(
    make_services: Callable[..., Services],
) -> None:
    """Seeding scripts sign up through the service with no caller address."""
    services = make_services(signups_per_ip_per_hour=1)
    for _ in range(3):
        async with services.uow():
            await services.accounts.sign_up(fresh_name(), PASSWORD)
