"""S7 anti-abuse (SMS pumping): per-number, per-block, per-account, per-IP and global send
limits, the country allow-list, and failing closed when Redis cannot count.

The windows live in Redis for the whole run: every test uses fresh number blocks, users and
client IPs, and services built with the limits it needs."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio.connection import ConnectionPool

from gateway.accounts.service import IssuedSession
from gateway.container import Services, build_services
from gateway.core.errors import DomainError, RateLimited
from gateway.factors.base import TwoFactorMethod
from gateway.factors.sms.models import Phone, SmsCode, SmsMessage
from gateway.factors.sms.service import PhoneView
from gateway.settings import Settings
from tests.conftest import FAST_PASSWORDS
from tests.graphql_client import data, gql, sign_up
from tests.sms_helpers import (
    ADD_PHONE,
    add_phone,
    api_client,
    attempt,
    code_of,
    domain_user,
    error_of,
    fresh_block,
    fresh_number,
    fresh_us_number,
    log_in,
    login_codes,
    messages_to,
    number_in,
    random_ip,
    request_sms,
    sms_user,
    unique_username,
    viewer_id,
)

HIGH = 100_000
# Every limit out of the way, so a test can lower just the one it proves.
OPEN = {
    "sms_per_number_per_hour": HIGH,
    "sms_per_block_per_hour": HIGH,
    "sms_per_account_per_hour": HIGH,
    "sms_per_ip_per_hour": HIGH,
}


def limited(make_services: Callable[..., Services], **limits: Any) -> Services:
    return make_services(**{**OPEN, **limits})


def assert_rate_limited(result: object, window: int) -> None:
    assert isinstance(result, RateLimited), result
    assert 1 <= result.retry_after <= window
    assert result.extensions == {"code": "RATE_LIMITED", "retryAfter": result.retry_after}


async def nothing_stored_for(user_id: object, number: str) -> None:
    assert await SmsMessage.filter(user_id=user_id).count() == 0
    assert await SmsCode.filter(user_id=user_id).count() == 0
    assert await Phone.filter(user_id=user_id).count() == 0
    assert await SmsMessage.filter(to_number=number, user_id=user_id).count() == 0


# Per number, per account, per IP, global ------------------------------------------------------


async def test_s7_per_number_limit_refuses_without_queueing(
    make_services: Callable[..., Services],
) -> None:
    services = limited(make_services, sms_per_number_per_hour=3)
    block = fresh_block()
    number = number_in(block, 123)
    for _ in range(3):
        user = await domain_user(services)
        assert isinstance(await add_phone(services, user.id, number, random_ip()), PhoneView)
    late = await domain_user(services)

    refused = await add_phone(services, late.id, number, random_ip())

    assert_rate_limited(refused, 3600)
    assert len(await messages_to(number)) == 3
    await nothing_stored_for(late.id, number)
    # Another number of the same block is not limited by this number's window.
    neighbour = number_in(block, 124)
    assert isinstance(await add_phone(services, late.id, neighbour, random_ip()), PhoneView)


async def test_s7_per_account_limit_refuses_over_graphql_with_retry_after(
    make_services: Callable[..., Services],
) -> None:
    services = limited(make_services, sms_per_account_per_hour=3)
    async with api_client(services) as http:
        token = await sign_up(http, unique_username())
        user_id = await viewer_id(http, token)
        numbers = [fresh_number() for _ in range(4)]
        for number in numbers[:3]:
            await data(http, ADD_PHONE, {"n": number}, token=token)

        body = await gql(http, ADD_PHONE, {"n": numbers[3]}, token=token)

        error = error_of(body)
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert 1 <= error["extensions"]["retryAfter"] <= 3600
        assert await messages_to(numbers[3]) == []
        assert await SmsMessage.filter(user_id=user_id).count() == 3
        assert (await Phone.get(user_id=user_id)).pending_number == numbers[2]
        # Another account from the same address is not affected.
        other = await sign_up(http, unique_username())
        assert (await data(http, ADD_PHONE, {"n": numbers[3]}, token=other))["addPhone"]


async def test_s7_per_ip_limit_refuses_without_queueing(
    make_services: Callable[..., Services],
) -> None:
    services = limited(make_services, sms_per_ip_per_hour=3)
    address = random_ip()
    for _ in range(3):
        user = await domain_user(services)
        assert isinstance(await add_phone(services, user.id, fresh_number(), address), PhoneView)
    late, number = await domain_user(services), fresh_number()

    refused = await add_phone(services, late.id, number, address)

    assert_rate_limited(refused, 3600)
    await nothing_stored_for(late.id, number)
    assert await messages_to(number) == []
    assert isinstance(await add_phone(services, late.id, number, random_ip()), PhoneView)


async def test_s7_per_ip_limit_applies_over_graphql(
    make_services: Callable[..., Services],
) -> None:
    services = limited(make_services, sms_per_ip_per_hour=2)
    address = random_ip()
    async with api_client(services, address) as http:
        for _ in range(2):
            token = await sign_up(http, unique_username())
            await data(http, ADD_PHONE, {"n": fresh_number()}, token=token)
        token = await sign_up(http, unique_username())
        number = fresh_number()
        body = await gql(http, ADD_PHONE, {"n": number}, token=token)
    assert error_of(body)["extensions"]["code"] == "RATE_LIMITED"
    assert error_of(body)["extensions"]["retryAfter"] >= 1
    assert await messages_to(number) == []
    async with api_client(services, random_ip()) as http:
        assert (await data(http, ADD_PHONE, {"n": number}, token=token))["addPhone"]


async def test_s7_global_limit_refuses_without_queueing(
    make_services: Callable[..., Services],
) -> None:
    """With a global limit of 1 per minute, of two sends in a row (fresh number, block,
    account and IP each, so only the global window is shared) at most the first can go."""
    services = limited(make_services, sms_global_per_minute=1)
    results: list[tuple[object, str, object]] = []
    for _ in range(2):
        user, number = await domain_user(services), fresh_number()
        results.append((await add_phone(services, user.id, number, random_ip()), number, user.id))

    refused = [(number, uid) for result, number, uid in results if isinstance(result, DomainError)]
    assert refused, results
    for result, _, _ in results:
        if isinstance(result, DomainError):
            assert_rate_limited(result, 60)
    for number, user_id in refused:
        assert await messages_to(number) == []
        await nothing_stored_for(user_id, number)


async def test_s7_login_code_refused_by_the_limits_queues_nothing(
    make_services: Callable[..., Services],
) -> None:
    services = limited(make_services, sms_per_number_per_hour=1, sms_resend_cooldown_seconds=0)
    user, number, _ = await sms_user(services)
    first = await log_in(services, user.username)
    assert len(await login_codes(services, first.id)) == 1  # fills the number's login window

    challenge = await log_in(services, user.username)

    assert await login_codes(services, challenge.id) == []
    # The page is told when a code can come, not that one can be asked for now (API.md:
    # smsRetryAfterSeconds is the retryAfter requestSmsCode would answer).
    assert challenge.sms_retry_after is not None
    assert 3500 <= challenge.sms_retry_after <= 3600
    refused = await request_sms(services, challenge)
    assert_rate_limited(refused, 3600)
    assert isinstance(refused, RateLimited)
    assert abs(refused.retry_after - challenge.sms_retry_after) <= 1
    view = await services.login.view(str(challenge.id), challenge.token)
    assert view.sms_retry_after is not None
    assert abs(view.sms_retry_after - challenge.sms_retry_after) <= 1
    assert await login_codes(services, challenge.id) == []
    assert len(await messages_to(number)) == 2  # the verification code and the first login's


async def test_s7_strangers_filling_a_numbers_windows_do_not_take_away_its_login_codes(
    make_services: Callable[..., Services],
) -> None:
    """Anyone can ask for verification codes to any number: calls to the victim's number and
    its neighbours fill the number's and the block's windows, but the victim's login codes
    count in their own, which only a login with the password can fill."""
    services = limited(make_services, sms_per_number_per_hour=10, sms_per_block_per_hour=20)
    victim, number, _ = await sms_user(services)
    block = number[:-3]
    strangers = [await domain_user(services) for _ in range(3)]
    refused = 0
    for index in range(40):
        target = number if index % 2 else number_in(block, (int(number[-3:]) + index) % 1000)
        result = await add_phone(services, strangers[index % 3].id, target, random_ip())
        refused += isinstance(result, RateLimited)
    assert refused > 0  # the windows the strangers could reach are full

    challenge = await log_in(services, victim.username)

    assert len(await login_codes(services, challenge.id)) == 1
    assert challenge.sms_retry_after is not None
    assert challenge.sms_retry_after > 0  # the cooldown after the code just sent, not an hour
    assert challenge.sms_retry_after <= services.settings.sms_resend_cooldown_seconds


async def test_s7_sms_retry_after_counts_the_logins_address_window(
    make_services: Callable[..., Services],
) -> None:
    """Logins from an address whose login-code window is full get no first code, and the page
    is told so, as `requestSmsCode` from there would answer, not 0."""
    services = limited(make_services, sms_per_ip_per_hour=1, sms_resend_cooldown_seconds=0)
    office = random_ip()
    first, _, _ = await sms_user(services)
    second, _, _ = await sms_user(services)
    await log_in(services, first.username, office)

    challenge = await log_in(services, second.username, office)

    assert await login_codes(services, challenge.id) == []
    assert challenge.sms_retry_after is not None
    assert 3500 <= challenge.sms_retry_after <= 3600
    refused = await request_sms(services, challenge, office)
    assert isinstance(refused, RateLimited)
    assert abs(refused.retry_after - challenge.sms_retry_after) <= 1
    # Verification codes asked from the same address count elsewhere.
    newcomer = await domain_user(services)
    assert isinstance(await add_phone(services, newcomer.id, fresh_number(), office), PhoneView)


async def test_s7_ipv6_callers_count_per_64_in_the_per_ip_window(
    make_services: Callable[..., Services],
) -> None:
    """A pumper holding one IPv6 /64 rotates through its addresses: every address of the /64
    counts in one window."""
    services = limited(make_services, sms_per_ip_per_hour=3)
    prefix = "fd" + secrets.token_hex(1) + ":" + ":".join(secrets.token_hex(2) for _ in range(3))
    results = []
    for index in range(5):
        user = await domain_user(services)
        results.append(await add_phone(services, user.id, fresh_number(), f"{prefix}::{index:x}"))
    assert [isinstance(r, PhoneView) for r in results] == [True, True, True, False, False]
    assert_rate_limited(results[3], 3600)
    user = await domain_user(services)
    other = f"{prefix[:-1]}{'0' if prefix[-1] != '0' else '1'}::1"
    assert isinstance(await add_phone(services, user.id, fresh_number(), other), PhoneView)


# Country allow-list --------------------------------------------------------------------------


async def test_s7_country_allow_list_refuses_other_countries(
    make_services: Callable[..., Services],
) -> None:
    services = make_services(sms_allowed_country_codes="81")
    us_number = fresh_us_number()
    async with api_client(services) as http:
        token = await sign_up(http, unique_username())
        user_id = await viewer_id(http, token)

        body = await gql(http, ADD_PHONE, {"n": us_number}, token=token)

        assert error_of(body)["extensions"]["code"] == "INVALID_PHONE_NUMBER"
        await nothing_stored_for(user_id, us_number)
        assert await messages_to(us_number) == []
        japanese = fresh_number()
        assert (await data(http, ADD_PHONE, {"n": japanese}, token=token))["addPhone"]
        assert len(await messages_to(japanese)) == 1
    # Without the list, the same US number is fine.
    other = await domain_user(make_services())
    assert isinstance(await add_phone(make_services(), other.id, us_number), PhoneView)


async def test_s7_country_allow_list_also_stops_login_codes_to_numbers_verified_before(
    make_services: Callable[..., Services],
) -> None:
    """An operator who restricts countries stops every send to the others, not only new
    phones: a number verified before the list was set gets no more codes."""
    us_number = fresh_us_number()
    user, _, _ = await sms_user(make_services(), us_number)
    restricted = make_services(sms_allowed_country_codes="81", sms_resend_cooldown_seconds=0)

    challenge = await log_in(restricted, user.username)

    assert await login_codes(restricted, challenge.id) == []
    assert isinstance(await request_sms(restricted, challenge), DomainError)
    assert await login_codes(restricted, challenge.id) == []
    assert len(await messages_to(us_number)) == 1


async def test_l2_s7_a_login_does_not_offer_sms_to_a_number_no_code_can_go_to(
    make_services: Callable[..., Services],
) -> None:
    """A verified number whose country left the allow-list, or that no longer parses (a
    numbering-plan update in a library upgrade), is not offered, and the login still opens
    with the account's other methods instead of failing."""
    services = make_services()
    outside, _, backup = await sms_user(services, fresh_us_number())
    broken, number, _ = await sms_user(services)
    await Phone.filter(number=number).update(number="+8190123")
    restricted = make_services(sms_allowed_country_codes="81")

    for user, login_services in ((outside, restricted), (broken, services)):
        challenge = await log_in(login_services, user.username)
        assert challenge.methods == [TwoFactorMethod.BACKUP_CODE], user
        assert challenge.sms_retry_after is None
        assert await login_codes(login_services, challenge.id) == []
    challenge = await log_in(restricted, outside.username)
    session = await attempt(restricted, challenge, TwoFactorMethod.BACKUP_CODE, backup)
    assert isinstance(session, IssuedSession)


# SMS pumping ---------------------------------------------------------------------------------


async def test_s7_sms_pumping_sweep_of_one_block_queues_at_most_20_messages(
    services: Services,
) -> None:
    """1,000 addPhone calls over the 1,000 consecutive numbers of one block, from 50 accounts
    and 200 addresses, as a pumping fraud would fire them: the block's window stops it."""
    block = fresh_block()
    users = [await domain_user(services) for _ in range(50)]
    addresses = [random_ip() for _ in range(200)]
    calls = [
        (users[i % len(users)].id, number_in(block, i), addresses[i % len(addresses)])
        for i in range(1000)
    ]
    results: list[PhoneView | DomainError] = []
    for start in range(0, len(calls), 50):
        batch = calls[start : start + 50]
        results += await asyncio.gather(
            *(add_phone(services, user_id, number, ip) for user_id, number, ip in batch)
        )

    accepted = [r for r in results if isinstance(r, PhoneView)]
    refused = [r for r in results if not isinstance(r, PhoneView)]
    assert all(isinstance(r, RateLimited) for r in refused), {code_of(r) for r in refused}
    queued = await SmsMessage.filter(to_number__startswith=block).count()
    assert 1 <= queued <= 20
    assert queued == len(accepted)
    assert await SmsCode.filter(number__startswith=block).count() == queued


# Failing closed ------------------------------------------------------------------------------


@pytest.fixture
async def broken(settings: Settings) -> AsyncIterator[Services]:
    """Services whose Redis is a port nothing listens on: the S7 windows cannot count."""
    pool = ConnectionPool(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    redis = ArqRedis(connection_pool=pool)
    custom = settings.model_copy(update={"sms_resend_cooldown_seconds": 0})
    yield build_services(custom, redis, passwords=FAST_PASSWORDS)
    await redis.aclose()


async def test_s7_limits_fail_closed_when_redis_is_down(
    services: Services, broken: Services
) -> None:
    user, number = await domain_user(services), fresh_number()

    refused = await add_phone(broken, user.id, number, random_ip())

    assert code_of(refused) == "SERVICE_UNAVAILABLE"
    await nothing_stored_for(user.id, number)
    assert await messages_to(number) == []


async def test_s7_login_codes_fail_closed_when_redis_is_down(
    services: Services, broken: Services
) -> None:
    user, number, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    sent_before = len(await messages_to(number))

    outcome: object
    try:
        async with broken.uow() as work:
            await broken.sms.request_code(
                user.id, challenge.id, challenge.expires_at, random_ip(), work
            )
        outcome = "sent"
    except DomainError as error:
        outcome = error

    assert code_of(outcome) == "SERVICE_UNAVAILABLE"
    assert len(await login_codes(services, challenge.id)) == 1
    assert len(await messages_to(number)) == sent_before
