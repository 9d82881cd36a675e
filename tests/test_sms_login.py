"""Login by SMS (L4, S2, L2, F5, H6): the first code goes at once, more after the cooldown (at
most 3 per challenge), every code sent stays valid and each works once."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pyotp

from gateway.accounts.models import Session
from gateway.container import Services
from gateway.core.code_throttle import FactorThrottle
from gateway.core.errors import RateLimited
from gateway.factors.base import Attempt, TwoFactorMethod
from gateway.factors.sms.models import SmsCode, SmsCodePurpose, SmsStatus
from gateway.login.models import ChallengeStatus, LoginChallenge
from gateway.login.service import ChallengeView
from tests.conftest import MovableClock
from tests.graphql_client import ENABLE_2FA, LOGIN, PASSWORD, VERIFY, data, gql, sign_up
from tests.sms_helpers import (
    ADD_PHONE,
    BACKUP,
    REQUEST_SMS,
    SESSION,
    SMS,
    VERIFY_PHONE,
    api_client,
    attempt,
    code_of,
    domain_user,
    enable_two_factor,
    error_of,
    fresh_number,
    fullwidth,
    has_outbox_row,
    log_in,
    login_codes,
    messages_to,
    request_sms,
    sms_user,
    unique_username,
    verification_code,
    verified_phone,
    viewer_id,
    wrong_code,
)


async def spend(services: Services, challenge: ChallengeView, code: str) -> bool:
    """The SMS factor alone (S2): whether `code` is accepted, and spent, for the challenge."""
    async with services.uow() as work:
        row = await LoginChallenge.get(id=challenge.id)
        verdict = await services.sms.verify(
            Attempt(row.user_id, row.id, code, row.client_kind, work)
        )
    return verdict.accepted


# L4, S2 over GraphQL -------------------------------------------------------------------------


async def test_l4_s2_login_sends_the_first_code_at_once_and_it_completes_the_challenge(
    services: Services,
) -> None:
    username, number = unique_username(), fresh_number()
    async with api_client(services) as http:
        token = await sign_up(http, username)
        user_id = await viewer_id(http, token)
        await data(http, ADD_PHONE, {"n": number}, token=token)
        code = await verification_code(services, user_id)
        await data(http, VERIFY_PHONE, {"c": code}, token=token)
        await data(http, ENABLE_2FA, token=token)

        login = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]

        assert login["__typename"] == "LoginChallenge"
        assert login["methods"] == ["SMS", "BACKUP_CODE"]
        assert 1 <= login["smsRetryAfterSeconds"] <= 60
        _verification, message = await messages_to(number)
        assert message.status is SmsStatus.QUEUED
        assert await has_outbox_row(message)
        row = await SmsCode.get(id=message.code_id)
        assert (row.purpose, str(row.challenge_id)) == (SmsCodePurpose.LOGIN, login["id"])
        challenge = await LoginChallenge.get(id=login["id"])
        assert row.expires_at == challenge.expires_at  # lives as long as the challenge
        (sms_code,) = await login_codes(services, challenge.id)
        assert re.fullmatch(r"\d{6}", sms_code)

        variables = {"id": login["id"], "t": login["token"], "m": "SMS", "c": sms_code}
        session = (await data(http, VERIFY, variables))["verifyLoginChallenge"]

        assert session["clientKind"] == "WEB"
        assert await Session.filter(user_id=user_id).count() == 2
        # Spent: the challenge is closed and the code is used.
        again = await gql(http, VERIFY, variables)
        assert error_of(again)["extensions"]["code"] == "CHALLENGE_CLOSED"
        assert (await SmsCode.get(id=row.id)).used_at is not None


async def test_s2_request_sms_code_before_the_cooldown_is_rate_limited(
    services: Services,
) -> None:
    user, number, _ = await sms_user(services)
    async with api_client(services) as http:
        login = (await data(http, LOGIN, {"u": user.username, "p": PASSWORD, "k": "WEB"}))["login"]
        body = await gql(http, REQUEST_SMS, {"id": login["id"], "t": login["token"]})

    error = error_of(body)
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert 1 <= error["extensions"]["retryAfter"] <= 60
    assert len(await login_codes(services, login["id"])) == 1
    assert len(await messages_to(number)) == 2  # verification + the first login code


async def test_s2_request_sms_code_after_the_cooldown_sends_another_code(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    user, number, _ = await sms_user(services)
    async with api_client(services) as http:
        login = (await data(http, LOGIN, {"u": user.username, "p": PASSWORD, "k": "WEB"}))["login"]
        clock.advance(30)
        early = await gql(http, REQUEST_SMS, {"id": login["id"], "t": login["token"]})
        assert error_of(early)["extensions"]["code"] == "RATE_LIMITED"
        assert 1 <= error_of(early)["extensions"]["retryAfter"] <= 31
        clock.advance(31)

        view = (await data(http, REQUEST_SMS, {"id": login["id"], "t": login["token"]}))[
            "requestSmsCode"
        ]

    assert view["status"] == "PENDING"
    assert view["methods"] == ["SMS", "BACKUP_CODE"]
    assert view["smsRetryAfterSeconds"] is not None
    first, second = await login_codes(services, login["id"])
    assert len(await messages_to(number)) == 3
    assert all(re.fullmatch(r"\d{6}", c) for c in (first, second))


# S2: every code stays valid, each once ---------------------------------------------------------


async def test_s2_resend_keeps_earlier_codes_valid_and_each_is_usable_once(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    user, _, _ = await sms_user(services)

    # A late SMS still works: the first code completes the challenge after a resend.
    late = await log_in(services, user.username)
    clock.advance(61)
    assert isinstance(await request_sms(services, late), ChallengeView)
    first, second = await login_codes(services, late.id)
    assert code_of(await attempt(services, late, SMS, first)) == SESSION

    # Both codes of another challenge are valid, each exactly once, and only for it.
    clock.advance(61)
    challenge = await log_in(services, user.username)
    clock.advance(61)
    assert isinstance(await request_sms(services, challenge), ChallengeView)
    older, newer = await login_codes(services, challenge.id)
    if len({first, second, older, newer}) < 4:  # a coincidence would blur the checks below
        return
    assert not await spend(services, challenge, second)  # another challenge's code
    assert await spend(services, challenge, older)
    assert not await spend(services, challenge, older)
    assert await spend(services, challenge, newer)
    assert not await spend(services, challenge, newer)
    rows = await SmsCode.filter(challenge_id=challenge.id)
    assert all(row.used_at is not None for row in rows)


async def test_s2_at_most_three_sends_per_challenge(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    user, number, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    for _ in range(2):
        clock.advance(61)
        assert isinstance(await request_sms(services, challenge), ChallengeView)
    clock.advance(61)

    refused = await request_sms(services, challenge)

    assert isinstance(refused, RateLimited)
    assert refused.retry_after >= 1
    assert len(await login_codes(services, challenge.id)) == 3
    assert len(await messages_to(number)) == 4  # verification + 3 login codes
    # Still refused later in the challenge's life.
    clock.advance(300)
    assert code_of(await request_sms(services, challenge)) == "RATE_LIMITED"
    assert len(await login_codes(services, challenge.id)) == 3
    # Every one of the 3 codes still completes it.
    codes = await login_codes(services, challenge.id)
    assert code_of(await attempt(services, challenge, SMS, codes[-1])) == SESSION


async def test_s2_retry_after_of_a_challenge_that_had_its_three_codes_is_the_rest_of_its_life(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    """`smsRetryAfterSeconds` is what `requestSmsCode` would answer: after the third code no
    cooldown ends before the challenge does."""
    services = make_services(clock=clock)
    user, _, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    clock.advance(61)
    second = await request_sms(services, challenge)
    assert isinstance(second, ChallengeView)
    assert second.sms_retry_after == 60
    clock.advance(61)

    third = await request_sms(services, challenge)

    assert isinstance(third, ChallengeView)
    life_left = math.ceil((challenge.expires_at - clock.now).total_seconds())
    assert third.sms_retry_after == life_left > 60
    clock.advance(61)
    refused = await request_sms(services, challenge)
    assert isinstance(refused, RateLimited)
    assert refused.retry_after == life_left - 61


async def test_s2_the_cooldown_is_the_configured_one(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock, sms_resend_cooldown_seconds=15)
    user, _, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    assert challenge.sms_retry_after == 15
    clock.advance(14)
    early = await request_sms(services, challenge)
    assert isinstance(early, RateLimited)
    assert early.retry_after == 1
    clock.advance(1)
    assert isinstance(await request_sms(services, challenge), ChallengeView)


async def test_s2_cooldown_restarts_after_every_send(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    user, _, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    clock.advance(61)
    resent = await request_sms(services, challenge)
    assert isinstance(resent, ChallengeView)
    assert resent.sms_retry_after == 60

    refused = await request_sms(services, challenge)

    assert isinstance(refused, RateLimited), refused
    assert refused.retry_after == 60
    assert len(await login_codes(services, challenge.id)) == 2


# L2, F5: wrong SMS codes ---------------------------------------------------------------------


async def test_l2_f5_wrong_sms_codes_back_off_and_lock_the_challenge(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    user, _, backup = await sms_user(services)
    challenge = await log_in(services, user.username)
    (right,) = await login_codes(services, challenge.id)
    wrong = wrong_code(right)

    for _ in range(3):
        assert code_of(await attempt(services, challenge, SMS, wrong)) == "INVALID_CODE"
    blocked = await attempt(services, challenge, SMS, right)
    assert isinstance(blocked, RateLimited)
    assert blocked.retry_after == 2
    clock.advance(2)
    assert code_of(await attempt(services, challenge, SMS, wrong)) == "INVALID_CODE"
    clock.advance(4)

    assert code_of(await attempt(services, challenge, SMS, wrong)) == "CHALLENGE_LOCKED"

    row = await LoginChallenge.get(id=challenge.id)
    assert (row.status, row.wrong_attempts) == (ChallengeStatus.LOCKED, 5)
    throttle = await FactorThrottle.get(user_id=user.id, method="SMS")
    assert throttle.consecutive_failures == 5
    clock.advance(900)
    assert code_of(await attempt(services, challenge, SMS, right)) == "CHALLENGE_LOCKED"
    assert code_of(await attempt(services, challenge, BACKUP, backup)) == "CHALLENGE_LOCKED"
    assert await Session.filter(user_id=user.id).count() == 1


async def test_s2_unicode_digits_in_the_code_are_refused(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    user, _, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    (code,) = await login_codes(services, challenge.id)
    arabic_indic = "".join(chr(ord(c) - 48 + 0x0660) for c in code)

    for lookalike in (fullwidth(code), arabic_indic):
        assert code_of(await attempt(services, challenge, SMS, lookalike)) == "INVALID_CODE"

    row = await LoginChallenge.get(id=challenge.id)
    assert row.wrong_attempts == 2
    assert code_of(await attempt(services, challenge, SMS, code)) == SESSION


# H6: SMS as the fallback ---------------------------------------------------------------------


async def test_h6_request_sms_code_adds_sms_to_a_challenge_that_lacked_it(
    services: Services,
) -> None:
    user = await domain_user(services)
    async with services.uow():
        enrollment = await services.security.begin_totp(user.session)
    async with services.uow():
        await services.security.confirm_totp(user.session, pyotp.TOTP(enrollment.secret).now())
    await enable_two_factor(services, user)
    challenge = await log_in(services, user.username)
    assert challenge.methods == [TwoFactorMethod.TOTP, BACKUP]
    assert challenge.sms_retry_after is None
    # No phone yet: SMS cannot be asked for.
    assert code_of(await request_sms(services, challenge)) == "METHOD_NOT_AVAILABLE"
    number = fresh_number()
    await verified_phone(services, user, number)

    view = await request_sms(services, challenge)

    assert isinstance(view, ChallengeView)
    assert view.methods == [SMS, TwoFactorMethod.TOTP, BACKUP]
    row = await LoginChallenge.get(id=challenge.id)
    assert row.methods == ["SMS", "TOTP", "BACKUP_CODE"]
    (code,) = await login_codes(services, challenge.id)
    assert (await messages_to(number))[-1].status is SmsStatus.QUEUED
    assert code_of(await attempt(services, challenge, SMS, code)) == SESSION
