"""Phones (S1, S6, H1, H3, F1, F5, A3) through the GraphQL API, with the code that was "sent"
read back from the database as the worker would read it."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import httpx
import phonenumbers
import pyotp
import pytest

from gateway.container import Services
from gateway.core.audit import SecurityEvent
from gateway.core.code_throttle import FactorThrottle
from gateway.core.jobs import JOB_NOTICE_SEND
from gateway.core.notices import Notice
from gateway.core.outbox import OutboxMessage
from gateway.factors.sms.models import Phone, SmsCode, SmsCodePurpose, SmsMessage, SmsStatus
from tests.conftest import MovableClock
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    VERIFY,
    data,
    gql,
    sign_up,
)
from tests.sms_helpers import (
    ADD_PHONE,
    EVENTS,
    REAUTHENTICATE,
    REMOVE_PHONE,
    VERIFY_PHONE,
    api_client,
    error_of,
    fresh_block,
    fresh_number,
    fresh_us_number,
    has_outbox_row,
    latest_code_row,
    login_codes,
    messages_to,
    number_in,
    open_code,
    phone_settings,
    unique_username,
    verification_code,
    viewer_id,
    wrong_code,
)

PREMIUM_RATE = "+19005550123"
JAPANESE_LANDLINE = "+81312345678"
UK_LANDLINE = "+442079460000"


@pytest.fixture
async def http(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(services) as client:
        yield client


async def add(
    http: httpx.AsyncClient, token: str, number: str, carrier: str | None = None
) -> dict[str, Any]:
    body = await gql(http, ADD_PHONE, {"n": number, "c": carrier}, token=token)
    return body


async def add_and_verify(
    http: httpx.AsyncClient,
    services: Services,
    token: str,
    number: str,
    carrier: str | None = None,
) -> dict[str, Any]:
    await data(http, ADD_PHONE, {"n": number, "c": carrier}, token=token)
    code = await verification_code(services, await viewer_id(http, token))
    result: dict[str, Any] = (await data(http, VERIFY_PHONE, {"c": code}, token=token))[
        "verifyPhone"
    ]
    return result


# S1: validation ------------------------------------------------------------------------------


def test_s1_the_refused_samples_are_what_they_claim_to_be() -> None:
    """Guards the test data below: a premium-rate and two landline-only numbers, all valid."""
    types = {
        PREMIUM_RATE: phonenumbers.PhoneNumberType.PREMIUM_RATE,
        JAPANESE_LANDLINE: phonenumbers.PhoneNumberType.FIXED_LINE,
        UK_LANDLINE: phonenumbers.PhoneNumberType.FIXED_LINE,
    }
    for number, expected in types.items():
        parsed = phonenumbers.parse(number, None)
        assert phonenumbers.is_valid_number(parsed), number
        assert phonenumbers.number_type(parsed) == expected, number


async def test_s1_add_phone_refuses_anything_but_an_e164_mobile_and_stores_nothing(
    http: httpx.AsyncClient, services: Services
) -> None:
    token = await sign_up(http, unique_username())
    user_id = await viewer_id(http, token)
    good = fresh_number()
    national = good.removeprefix("+81")
    refused = {
        "empty": "",
        "plus only": "+",
        "no plus": good.removeprefix("+"),
        "national format": "0" + national,
        "letters mixed in": good[:6] + "x" + good[6:],
        "fullwidth digits": "+" + "".join(chr(ord(c) + 0xFEE0) for c in good[1:]),
        "arabic-indic digits": "+" + "".join(chr(ord(c) - 48 + 0x0660) for c in good[1:]),
        "1,000 characters": "+81" + "9" * 997,
        "unknown country": "+999" + national,
        "too short": good[:7],
        "premium rate": PREMIUM_RATE,
        "landline only (JP)": JAPANESE_LANDLINE,
        "landline only (UK)": UK_LANDLINE,
    }
    assert len(refused["1,000 characters"]) == 1000
    for case, number in refused.items():
        body = await add(http, token, number)
        assert error_of(body)["extensions"]["code"] == "INVALID_PHONE_NUMBER", case
        assert body.get("data") is None, case

    assert await Phone.filter(user_id=user_id).count() == 0
    assert await SmsCode.filter(user_id=user_id).count() == 0
    assert await SmsMessage.filter(user_id=user_id).count() == 0
    settings = await phone_settings(http, token)
    assert settings["phone"] is None
    # The same account can add a good number afterwards.
    assert (await data(http, ADD_PHONE, {"n": good}, token=token))["addPhone"]["verified"] is False


async def test_s1_e164_is_one_plus_then_digits_letters_and_double_plus_are_refused(
    http: httpx.AsyncClient, services: Services
) -> None:
    """E.164 is digits only: "+8190....abcd" is not the number "+8190....2223" (keypad
    letters), and "++8190..." is malformed."""
    token = await sign_up(http, unique_username())
    user_id = await viewer_id(http, token)
    good = fresh_number()
    for number in [good[:-4] + "abcd", good[:-4] + "ABCD", "+81 90 CALL " + good[-4:], "+" + good]:
        body = await add(http, token, number)
        assert body.get("errors"), (number, body)
        assert error_of(body)["extensions"]["code"] == "INVALID_PHONE_NUMBER", number
    assert await Phone.filter(user_id=user_id).count() == 0
    assert await SmsMessage.filter(user_id=user_id).count() == 0


async def test_s1_add_phone_queues_a_verification_code_and_the_number_waits_until_verified(
    http: httpx.AsyncClient, services: Services
) -> None:
    token = await sign_up(http, unique_username())
    user_id = await viewer_id(http, token)
    number = fresh_number()

    added = (await data(http, ADD_PHONE, {"n": number, "c": None}, token=token))["addPhone"]

    assert added == {
        "maskedNumber": added["maskedNumber"],
        "verified": False,
        "carrier": None,
        "smsPaused": False,
    }
    (message,) = await messages_to(number)
    assert message.status is SmsStatus.QUEUED
    assert message.user_id == user_id
    assert message.body is None  # the code never rides in plain text
    assert await has_outbox_row(message)
    row = await latest_code_row(user_id, SmsCodePurpose.VERIFY_PHONE)
    assert message.code_id == row.id
    assert row.number == number
    code = open_code(services, row)
    assert re.fullmatch(r"\d{6}", code)
    assert code not in row.code_hash

    # Unused until verified: not a method, and 2FA cannot be turned on with it (F1).
    settings = await phone_settings(http, token)
    assert settings["phone"]["verified"] is False
    assert "SMS" not in settings["methods"]
    body = await gql(http, ENABLE_2FA, token=token)
    assert error_of(body)["extensions"]["code"] == "METHOD_NOT_AVAILABLE"
    phone = await Phone.get(user_id=user_id)
    assert (phone.number, phone.verified_at, phone.pending_number) == (None, None, number)

    verified = (await data(http, VERIFY_PHONE, {"c": code}, token=token))["verifyPhone"]

    assert verified["verified"] is True
    assert verified["maskedNumber"] == added["maskedNumber"]
    settings = await phone_settings(http, token)
    assert settings["phone"]["verified"] is True
    assert settings["methods"] == ["SMS"]
    enabled = (await data(http, ENABLE_2FA, token=token))["enableTwoFactor"]
    assert enabled["settings"]["twoFactorEnabled"] is True
    assert enabled["settings"]["methods"] == ["SMS", "BACKUP_CODE"]
    # The verification code is spent.
    assert (await SmsCode.get(id=row.id)).used_at is not None


async def test_s1_unverified_number_gets_no_login_codes(
    http: httpx.AsyncClient, services: Services
) -> None:
    username = unique_username()
    token = await sign_up(http, username)
    secret = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    await data(http, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).now()}, token=token)
    await data(http, ENABLE_2FA, token=token)
    number = fresh_number()
    await data(http, ADD_PHONE, {"n": number}, token=token)

    login = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]

    assert login["methods"] == ["TOTP", "BACKUP_CODE"]
    assert login["smsRetryAfterSeconds"] is None
    assert len(await messages_to(number)) == 1  # the verification code only
    assert await SmsCode.filter(purpose=SmsCodePurpose.LOGIN, number=number).count() == 0


async def test_s1_f5_wrong_verification_codes_are_refused_counted_and_backed_off(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    async with api_client(services) as http:
        token = await sign_up(http, unique_username())
        user_id = await viewer_id(http, token)
        await data(http, ADD_PHONE, {"n": fresh_number()}, token=token)
        code = await verification_code(services, user_id)
        wrong = wrong_code(code)

        for _ in range(3):
            body = await gql(http, VERIFY_PHONE, {"c": wrong}, token=token)
            assert error_of(body)["extensions"]["code"] == "INVALID_CODE"
        # The 4th attempt waits, even with the right code: not evaluated, not counted.
        body = await gql(http, VERIFY_PHONE, {"c": code}, token=token)
        assert error_of(body)["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 2}
        row = await FactorThrottle.get(user_id=user_id, method="SMS")
        assert row.consecutive_failures == 3
        assert (await phone_settings(http, token))["phone"]["verified"] is False

        clock.advance(2)
        body = await gql(http, VERIFY_PHONE, {"c": wrong}, token=token)
        assert error_of(body)["extensions"]["code"] == "INVALID_CODE"
        body = await gql(http, VERIFY_PHONE, {"c": code}, token=token)
        assert error_of(body)["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 4}
        clock.advance(4)
        verified = (await data(http, VERIFY_PHONE, {"c": code}, token=token))["verifyPhone"]
        assert verified["verified"] is True
        row = await FactorThrottle.get(user_id=user_id, method="SMS")
        assert (row.consecutive_failures, row.blocked_until) == (0, None)


async def test_s1_unicode_digits_do_not_verify_a_phone(
    http: httpx.AsyncClient, services: Services
) -> None:
    token = await sign_up(http, unique_username())
    await data(http, ADD_PHONE, {"n": fresh_number()}, token=token)
    code = await verification_code(services, await viewer_id(http, token))
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in code)

    body = await gql(http, VERIFY_PHONE, {"c": fullwidth}, token=token)

    assert error_of(body)["extensions"]["code"] == "INVALID_CODE"
    assert (await data(http, VERIFY_PHONE, {"c": code}, token=token))["verifyPhone"]["verified"]


# S1: changing the number ---------------------------------------------------------------------


async def test_s1_changed_number_replaces_the_old_one_only_once_it_verifies(
    http: httpx.AsyncClient, services: Services
) -> None:
    username = unique_username()
    token = await sign_up(http, username)
    user_id = await viewer_id(http, token)
    old, new = fresh_number(), fresh_number()
    first = await add_and_verify(http, services, token, old, "Docomo")
    await data(http, ENABLE_2FA, token=token)

    pending = (await data(http, ADD_PHONE, {"n": new, "c": "au"}, token=token))["addPhone"]

    assert pending["verified"] is False
    assert pending["maskedNumber"].endswith(new[-2:])
    settings = await phone_settings(http, token)
    assert settings["phone"] == {
        "maskedNumber": first["maskedNumber"],
        "verified": True,
        "carrier": "Docomo",
        "smsPaused": False,
    }
    assert settings["methods"] == ["SMS", "BACKUP_CODE"]
    # Logging in meanwhile still texts the old, verified number.
    login = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    assert login["methods"][0] == "SMS"
    assert await SmsCode.filter(purpose=SmsCodePurpose.LOGIN, number=old).count() == 1
    assert await SmsCode.filter(purpose=SmsCodePurpose.LOGIN, number=new).count() == 0
    # A wrong code changes nothing.
    new_code = await verification_code(services, user_id)
    body = await gql(http, VERIFY_PHONE, {"c": wrong_code(new_code)}, token=token)
    assert error_of(body)["extensions"]["code"] == "INVALID_CODE"
    assert (await phone_settings(http, token))["phone"]["maskedNumber"] == first["maskedNumber"]

    verified = (await data(http, VERIFY_PHONE, {"c": new_code}, token=token))["verifyPhone"]

    assert verified == {
        "maskedNumber": pending["maskedNumber"],
        "verified": True,
        "carrier": "au",
        "smsPaused": False,
    }
    assert (await phone_settings(http, token))["phone"] == verified
    phone = await Phone.get(user_id=user_id)
    assert (phone.number, phone.pending_number) == (new, None)
    await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
    assert await SmsCode.filter(purpose=SmsCodePurpose.LOGIN, number=new).count() == 1


async def test_s1_only_the_latest_pending_numbers_code_verifies(
    http: httpx.AsyncClient, services: Services
) -> None:
    token = await sign_up(http, unique_username())
    user_id = await viewer_id(http, token)
    first, second = fresh_number(), fresh_number()
    await data(http, ADD_PHONE, {"n": first}, token=token)
    first_code = await verification_code(services, user_id)
    await data(http, ADD_PHONE, {"n": second}, token=token)
    second_code = await verification_code(services, user_id)
    if first_code == second_code:  # one chance in a million: nothing to tell apart
        return

    body = await gql(http, VERIFY_PHONE, {"c": first_code}, token=token)

    assert error_of(body)["extensions"]["code"] == "INVALID_CODE"
    await data(http, VERIFY_PHONE, {"c": second_code}, token=token)
    assert (await Phone.get(user_id=user_id)).number == second


# S1, F2, H3: masking and carrier -------------------------------------------------------------


async def test_s1_masked_number_keeps_the_country_code_and_the_last_two_digits(
    http: httpx.AsyncClient, services: Services
) -> None:
    japanese = number_in(fresh_block(), 478)
    us_number = fresh_us_number()
    for number, country, hidden in [(japanese, "+81", japanese[3:-2]), (us_number, "+1", None)]:
        token = await sign_up(http, unique_username())
        masked = (await data(http, ADD_PHONE, {"n": number}, token=token))["addPhone"][
            "maskedNumber"
        ]
        assert re.fullmatch(re.escape(country) + r"\*+" + number[-2:], masked), masked
        if hidden is not None:
            assert hidden not in masked
        verified = await add_and_verify(http, services, token, number)
        assert verified["maskedNumber"] == masked
        assert (await phone_settings(http, token))["phone"]["maskedNumber"] == masked


async def test_h3_carrier_is_kept_and_can_be_updated(
    http: httpx.AsyncClient, services: Services
) -> None:
    token = await sign_up(http, unique_username())
    number = fresh_number()
    verified = await add_and_verify(http, services, token, number, "Verizon")
    assert verified["carrier"] == "Verizon"
    assert (await phone_settings(http, token))["phone"]["carrier"] == "Verizon"

    updated = await add_and_verify(http, services, token, number, "SoftBank")

    assert updated["carrier"] == "SoftBank"
    assert (await phone_settings(http, token))["phone"]["carrier"] == "SoftBank"
    # G2: an oversize string is bad input, not a bad number.
    for carrier in ("x" * 65, "x" * 10_000):
        body = await add(http, token, fresh_number(), carrier)
        assert error_of(body)["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await phone_settings(http, token))["phone"]["carrier"] == "SoftBank"


# S6, H1, A3: removing the phone --------------------------------------------------------------


async def test_s6_h1_removing_the_only_method_turns_two_factor_off(
    http: httpx.AsyncClient, services: Services
) -> None:
    username = unique_username()
    token = await sign_up(http, username)
    user_id = await viewer_id(http, token)
    await add_and_verify(http, services, token, fresh_number())
    await data(http, ENABLE_2FA, token=token)

    removed = (await data(http, REMOVE_PHONE, token=token))["removePhone"]

    assert removed["twoFactorDisabled"] is True
    assert removed["settings"] == {"twoFactorEnabled": False, "methods": [], "phone": None}
    kinds = {event.kind for event in await SecurityEvent.filter(user_id=user_id)}
    assert "phone.removed" in kinds
    assert "two_factor.disabled" in kinds
    events = (await data(http, EVENTS, token=token))["viewer"]["securityEvents"]["edges"]
    assert {"phone.removed", "two_factor.disabled"} <= {e["node"]["kind"] for e in events}
    assert await Phone.filter(user_id=user_id).count() == 0
    # L1: username and password work again.
    login = (await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))["login"]
    assert login["__typename"] == "Session"


async def test_s6_removing_the_phone_keeps_two_factor_on_when_another_method_is_left(
    http: httpx.AsyncClient, services: Services
) -> None:
    token = await sign_up(http, unique_username())
    user_id = await viewer_id(http, token)
    await add_and_verify(http, services, token, fresh_number())
    secret = (await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    await data(http, CONFIRM_TOTP, {"c": pyotp.TOTP(secret).now()}, token=token)
    await data(http, ENABLE_2FA, token=token)

    removed = (await data(http, REMOVE_PHONE, token=token))["removePhone"]

    assert removed["twoFactorDisabled"] is False
    assert removed["settings"]["twoFactorEnabled"] is True
    assert removed["settings"]["methods"] == ["TOTP", "BACKUP_CODE"]
    assert removed["settings"]["phone"] is None
    kinds = {event.kind for event in await SecurityEvent.filter(user_id=user_id)}
    assert "phone.removed" in kinds
    assert "two_factor.disabled" not in kinds


CHALLENGE_VIEW = """
query($id: ID!, $t: String!) { loginChallenge(id: $id, token: $t) { status methods } }"""


async def sms_challenge(http: httpx.AsyncClient, username: str) -> dict[str, Any]:
    challenge: dict[str, Any] = (
        await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"})
    )["login"]
    assert challenge["methods"][0] == "SMS", challenge
    return challenge


async def verify_with(
    http: httpx.AsyncClient, challenge: dict[str, Any], method: str, code: str
) -> dict[str, Any]:
    variables = {"id": challenge["id"], "t": challenge["token"], "m": method, "c": code}
    return await gql(http, VERIFY, variables)


async def test_s6_l5_a_code_sent_before_the_phone_was_removed_completes_no_challenge(
    http: httpx.AsyncClient, services: Services
) -> None:
    """The phone was lost: whoever holds it has the code of a login already under way, and the
    challenge must stop offering SMS the moment the phone goes."""
    username = unique_username()
    token = await sign_up(http, username)
    await add_and_verify(http, services, token, fresh_number())
    totp = pyotp.TOTP((await data(http, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"])
    await data(http, CONFIRM_TOTP, {"c": totp.now()}, token=token)
    await data(http, ENABLE_2FA, token=token)
    challenge = await sms_challenge(http, username)
    [sent] = await login_codes(services, UUID(challenge["id"]))

    await data(http, REMOVE_PHONE, token=token)

    variables = {"id": challenge["id"], "t": challenge["token"]}
    view = (await data(http, CHALLENGE_VIEW, variables))["loginChallenge"]
    assert view == {"status": "PENDING", "methods": ["TOTP", "BACKUP_CODE"]}
    refused = await verify_with(http, challenge, "SMS", sent)
    assert error_of(refused)["extensions"]["code"] == "METHOD_NOT_AVAILABLE"
    assert await SmsCode.filter(challenge_id=challenge["id"], used_at__isnull=False).count() == 0
    # What the account still has completes it (the next step: T2 spent the confirming one).
    done = await verify_with(http, challenge, "TOTP", totp.at(time.time() + 30))
    assert "errors" not in done, done


async def test_s1_l5_a_code_sent_to_a_replaced_number_is_refused(
    http: httpx.AsyncClient, services: Services
) -> None:
    """The user moved to a new number while a login waited: the code that went to the old one
    no longer counts, even though the challenge still offers SMS (to the new number)."""
    username = unique_username()
    token = await sign_up(http, username)
    await add_and_verify(http, services, token, fresh_number())
    await data(http, ENABLE_2FA, token=token)
    challenge = await sms_challenge(http, username)
    [old] = await login_codes(services, UUID(challenge["id"]))

    await add_and_verify(http, services, token, fresh_number())

    refused = await verify_with(http, challenge, "SMS", old)
    assert error_of(refused)["extensions"]["code"] == "INVALID_CODE"
    assert await SmsCode.filter(challenge_id=challenge["id"], used_at__isnull=False).count() == 0
    variables = {"id": challenge["id"], "t": challenge["token"]}
    view = (await data(http, CHALLENGE_VIEW, variables))["loginChallenge"]
    assert view["status"] == "PENDING"


async def test_a3_s1_replacing_a_verified_number_needs_a_recent_password(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    """Confirming a new number removes the old one: a stale or stolen session must not move
    login codes to its own phone. The old number hears of it, and the history shows both.
    The window is the configured one (two minutes here, 15 by default)."""
    services = make_services(clock=clock, reauth_window_seconds=120)
    async with api_client(services) as http:
        token = await sign_up(http, unique_username())
        user_id = await viewer_id(http, token)
        old, new = fresh_number(), fresh_number()
        await add_and_verify(http, services, token, old)
        await data(http, ENABLE_2FA, token=token)
        clock.advance(121)

        refused = await add(http, token, new)
        assert error_of(refused)["extensions"]["code"] == "REAUTHENTICATION_REQUIRED"
        assert await messages_to(new) == []

        await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token)
        await data(http, ADD_PHONE, {"n": new, "c": None}, token=token)
        code = await verification_code(services, user_id)
        clock.advance(121)
        late = await gql(http, VERIFY_PHONE, {"c": code}, token=token)
        assert error_of(late)["extensions"]["code"] == "REAUTHENTICATION_REQUIRED"
        assert (await Phone.get(user_id=user_id)).number == old

        await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token)
        await data(http, VERIFY_PHONE, {"c": code}, token=token)

    assert (await Phone.get(user_id=user_id)).number == new
    events = await SecurityEvent.filter(user_id=user_id).order_by("id")
    assert [(e.kind, e.detail) for e in events][-2:] == [
        ("phone.removed", "replaced"),
        ("phone.added", None),
    ]
    notices = await OutboxMessage.filter(job_name=JOB_NOTICE_SEND)
    assert [n.payload for n in notices if n.payload["user_id"] == str(user_id)] == [
        {"user_id": str(user_id), "notice": Notice.PHONE_REMOVED.value, "number": old}
    ]


async def test_a3_s1_a_first_number_needs_no_recent_password(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    """A3 guards removals: adding the account's first phone takes nothing away."""
    services = make_services(clock=clock)
    async with api_client(services) as http:
        token = await sign_up(http, unique_username())
        clock.advance(services.settings.reauth_window_seconds + 1)
        verified = await add_and_verify(http, services, token, fresh_number())
    assert verified["verified"] is True


async def test_a3_s6_removing_the_phone_needs_a_recent_password(
    make_services: Callable[..., Services], clock: MovableClock
) -> None:
    services = make_services(clock=clock)
    async with api_client(services) as http:
        token = await sign_up(http, unique_username())
        user_id = await viewer_id(http, token)
        await add_and_verify(http, services, token, fresh_number())
        await data(http, ENABLE_2FA, token=token)
        clock.advance(services.settings.reauth_window_seconds + 1)

        body = await gql(http, REMOVE_PHONE, token=token)

        assert error_of(body)["extensions"]["code"] == "REAUTHENTICATION_REQUIRED"
        assert await Phone.filter(user_id=user_id).count() == 1
        settings = await phone_settings(http, token)
        assert settings["twoFactorEnabled"] is True
        assert settings["phone"]["verified"] is True

        assert (await data(http, REAUTHENTICATE, {"p": PASSWORD}, token=token))["reauthenticate"]
        removed = (await data(http, REMOVE_PHONE, token=token))["removePhone"]
        assert removed["twoFactorDisabled"] is True
