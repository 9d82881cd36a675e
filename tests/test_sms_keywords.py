"""Inbound keywords and delivery receipts over Twilio's webhooks (S5, H9, W1, S3): signed POSTs
to the real app, whose effects are read back from the database and the settings."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import unescape

import httpx
import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.container import Services
from gateway.factors.sms.delivery import PAUSED
from gateway.factors.sms.models import (
    Phone,
    SmsAttempt,
    SmsCode,
    SmsCodePurpose,
    SmsEarlyReceipt,
    SmsMessage,
    SmsStatus,
)
from gateway.login.models import LoginChallenge
from gateway.settings import Settings
from tests.conftest import run_worker
from tests.graphql_client import data
from tests.sms_helpers import (
    BACKUP,
    INBOUND_PATH,
    PHONE_SETTINGS,
    SESSION,
    SHORT_CODE,
    SMS,
    STATUS_PATH,
    TWILIO_FROM,
    TWILIO_TOKEN,
    User,
    Webhooks,
    add_phone,
    api_client,
    attempt,
    code_of,
    fresh_number,
    log_in,
    login_codes,
    messages_to,
    open_code,
    sms_user,
    twilio_signature,
)

TWIML = re.compile(
    r"<\?xml[^>]*\?>\s*<Response>\s*(?:<Message>(.*)</Message>)?\s*</Response>", re.DOTALL
)
TWILIO = {"twilio_auth_token": SecretStr(TWILIO_TOKEN), "twilio_from": TWILIO_FROM}


@asynccontextmanager
async def open_hooks(
    settings: Settings, make_services: Callable[..., Services], **overrides: Any
) -> AsyncIterator[Webhooks]:
    """The app configured with a Twilio auth token, as the provider reaches it."""
    services = make_services(**TWILIO, **overrides)
    app = create_app(settings.model_copy(update={**TWILIO, **overrides}), services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Webhooks(services, http)


@pytest.fixture
async def hooks(
    settings: Settings, make_services: Callable[..., Services]
) -> AsyncIterator[Webhooks]:
    async with open_hooks(settings, make_services) as found:
        yield found


def reply_of(response: httpx.Response) -> str | None:
    """The text of the TwiML answer's <Message>, or None when it has none."""
    assert response.status_code == 200, response.text
    assert "xml" in response.headers["content-type"]
    found = TWIML.fullmatch(response.text.strip())
    assert found, response.text
    return None if found.group(1) is None else unescape(found.group(1))


async def paused(number: str) -> bool:
    phone = await Phone.get(number=number)
    return phone.sms_paused


async def sms_paused_in_settings(services: Services, user: User) -> bool:
    async with api_client(services) as http:
        result = (await data(http, PHONE_SETTINGS, token=user.token))["viewer"]
    flag: bool = result["securitySettings"]["phone"]["smsPaused"]
    return flag


# S5: STOP / OFF --------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["STOP", "OFF", "stop", " Off please "])
async def test_s5_stop_pauses_sms_and_login_falls_back_to_other_methods(
    hooks: Webhooks, word: str
) -> None:
    services = hooks.services
    user, number, backup = await sms_user(services)

    reply = reply_of(await hooks.inbound(number, word))

    assert reply
    assert await paused(number)
    assert await sms_paused_in_settings(services, user) is True
    sent_before = len(await messages_to(number))
    challenge = await log_in(services, user.username)
    assert challenge.methods == [BACKUP]
    assert challenge.sms_retry_after is None
    assert await login_codes(services, challenge.id) == []
    assert len(await messages_to(number)) == sent_before
    assert code_of(await attempt(services, challenge, BACKUP, backup)) == SESSION


async def test_s5_stop_stops_messages_already_queued_for_that_number(
    hooks: Webhooks, settings: Settings
) -> None:
    services = hooks.services
    user, number, _ = await sms_user(services)
    await run_worker(settings, "sms")  # the verification code
    challenge = await log_in(services, user.username)
    queued = (await messages_to(number))[-1]
    assert (queued.status, queued.code_id is not None) == (SmsStatus.QUEUED, True)

    # The reply to STOP is the webhook's TwiML answer, not a queued message.
    assert reply_of(await hooks.inbound(number, "STOP"))
    await run_worker(settings, "sms")

    stopped = await SmsMessage.get(id=queued.id)
    assert (stopped.status, stopped.error_code, stopped.attempts) == (
        SmsStatus.FAILED,
        PAUSED,
        0,
    )
    assert await SmsAttempt.filter(message_id=queued.id).count() == 0
    # GO resumes: the same code is sent again, and this time it goes.
    assert reply_of(await hooks.inbound(number, "GO"))
    resent = (await messages_to(number))[-1]
    assert (resent.id != queued.id, resent.code_id) == (True, queued.code_id)
    await run_worker(settings, "sms")
    assert (await SmsMessage.get(id=resent.id)).status is SmsStatus.SENT
    assert len(await login_codes(services, challenge.id)) == 1


# H9, S5: GO / START ----------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["GO", "START", "go"])
async def test_h9_go_resumes_and_resends_the_latest_code_unchanged(
    hooks: Webhooks, word: str
) -> None:
    services = hooks.services
    user, number, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    (code,) = await login_codes(services, challenge.id)
    first = (await messages_to(number))[-1]
    reply_of(await hooks.inbound(number, "STOP"))
    assert await paused(number)

    reply = reply_of(await hooks.inbound(number, word))

    assert reply
    assert not await paused(number)
    assert await sms_paused_in_settings(services, user) is False
    *_, before, resent = await messages_to(number)
    assert before.id == first.id
    assert resent.code_id == first.code_id  # the same code, not a new one
    assert resent.status is SmsStatus.QUEUED
    assert await login_codes(services, challenge.id) == [code]
    assert code_of(await attempt(services, challenge, SMS, code)) == SESSION


async def test_h9_go_sends_the_first_code_when_none_was_sent(hooks: Webhooks) -> None:
    services = hooks.services
    user, number, _ = await sms_user(services)
    reply_of(await hooks.inbound(number, "STOP"))
    challenge = await log_in(services, user.username)
    assert challenge.methods == [BACKUP]
    sent_before = len(await messages_to(number))

    reply_of(await hooks.inbound(number, "GO"))

    (code,) = await login_codes(services, challenge.id)
    assert len(await messages_to(number)) == sent_before + 1
    row = await LoginChallenge.get(id=challenge.id)
    assert row.methods == ["SMS", "BACKUP_CODE"]
    assert code_of(await attempt(services, challenge, SMS, code)) == SESSION


async def test_h9_go_answers_the_newest_waiting_login_not_an_older_one(hooks: Webhooks) -> None:
    """An older login still waits with its code; the user stopped SMS, logged in again (no
    code: SMS paused) and texts GO while looking at the new login. Its code must come, not the
    older login's, which would not complete it."""
    services = hooks.services
    user, number, _ = await sms_user(services)
    older = await log_in(services, user.username)
    (older_code,) = await login_codes(services, older.id)
    reply_of(await hooks.inbound(number, "STOP"))
    newer = await log_in(services, user.username)
    assert newer.methods == [BACKUP]

    reply_of(await hooks.inbound(number, "GO"))

    (code,) = await login_codes(services, newer.id)
    assert code != older_code
    resent = (await messages_to(number))[-1]
    assert resent.code_id == (await SmsCode.get(challenge_id=newer.id)).id
    assert (await LoginChallenge.get(id=newer.id)).methods == ["SMS", "BACKUP_CODE"]
    assert code_of(await attempt(services, newer, SMS, code)) == SESSION
    assert await login_codes(services, older.id) == [older_code]  # untouched, still valid


async def test_h9_go_without_a_waiting_challenge_only_resumes(hooks: Webhooks) -> None:
    _user, number, _ = await sms_user(hooks.services)
    reply_of(await hooks.inbound(number, "STOP"))
    sent_before = len(await messages_to(number))

    reply_of(await hooks.inbound(number, "GO"))

    assert not await paused(number)
    assert len(await messages_to(number)) == sent_before


async def test_h9_go_does_not_resend_the_code_of_a_finished_challenge(hooks: Webhooks) -> None:
    """Only a waiting challenge's code is resent: one completed another way is over."""
    services = hooks.services
    user, number, backup = await sms_user(services)
    challenge = await log_in(services, user.username)
    assert code_of(await attempt(services, challenge, BACKUP, backup)) == SESSION
    sent_before = len(await messages_to(number))

    reply_of(await hooks.inbound(number, "GO"))

    assert len(await messages_to(number)) == sent_before


async def test_s5_h9_keywords_from_a_phone_two_accounts_share_speak_for_both(
    hooks: Webhooks,
) -> None:
    """A family phone verified by two accounts: STOP pauses SMS for both, GO resumes both and
    sends each waiting login its code; HELP answers. None of them may fail."""
    services = hooks.services
    first, number, _ = await sms_user(services)
    second, _, _ = await sms_user(services, number)

    assert reply_of(await hooks.inbound(number, "HELP"))
    assert reply_of(await hooks.inbound(number, "STOP"))
    assert [p.sms_paused for p in await Phone.filter(number=number)] == [True, True]
    challenges = [await log_in(services, user.username) for user in (first, second)]
    assert [c.methods for c in challenges] == [[BACKUP], [BACKUP]]

    assert reply_of(await hooks.inbound(number, "GO"))

    assert [p.sms_paused for p in await Phone.filter(number=number)] == [False, False]
    for user, challenge in zip((first, second), challenges, strict=True):
        (code,) = await login_codes(services, challenge.id)
        assert code_of(await attempt(services, challenge, SMS, code)) == SESSION, user


async def test_s7_h9_go_resend_counts_toward_the_send_limits(
    settings: Settings, make_services: Callable[..., Services]
) -> None:
    """API.md: a GO resend is sent at once but still counts toward S7."""
    async with open_hooks(settings, make_services, sms_per_number_per_hour=1) as hooks:
        services = hooks.services
        user, number, _ = await sms_user(services)  # the verification code
        await log_in(services, user.username)  # the first login code fills the login window
        assert len(await messages_to(number)) == 2
        reply_of(await hooks.inbound(number, "STOP"))

        reply_of(await hooks.inbound(number, "GO"))

        assert not await paused(number)
        assert len(await messages_to(number)) == 2


# S5: HELP, unknown senders and words, other numbers -------------------------------------------


async def test_s5_help_answers_help_text_and_changes_nothing(hooks: Webhooks) -> None:
    user, number, _ = await sms_user(hooks.services)
    await log_in(hooks.services, user.username)
    sent_before = len(await messages_to(number))

    help_text = reply_of(await hooks.inbound(number, "HELP"))
    unknown = reply_of(await hooks.inbound(number, "WHAT IS THIS"))

    assert help_text
    assert unknown
    assert help_text != unknown
    assert "STOP" in help_text
    assert "GO" in help_text
    assert not await paused(number)
    assert len(await messages_to(number)) == sent_before


async def test_s5_unknown_senders_and_words_get_a_polite_reply_and_change_nothing(
    hooks: Webhooks,
) -> None:
    services = hooks.services
    user, number, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    # A number that is only pending (not verified) is not a registered sender either.
    other = await sms_user(services)
    pending = fresh_number()
    await add_phone(services, other[0].id, pending)
    stranger = fresh_number()
    total_before = await SmsMessage.all().count()

    cases = [
        (stranger, "STOP"),
        (stranger, "GO"),
        (pending, "STOP"),
        ("not a number", "STOP"),
        ("", "GO"),
        (number, "BONJOUR"),
        (number, ""),
        (number, "STOPP"),
        (number, "🙂"),
    ]
    for sender, body in cases:
        reply = reply_of(await hooks.inbound(sender, body))
        assert reply, (sender, body)

    assert not await paused(number)
    assert not await paused(other[1])
    assert await SmsMessage.all().count() == total_before
    assert len(await login_codes(services, challenge.id)) == 1


async def test_s5_messages_to_any_other_number_change_nothing(hooks: Webhooks) -> None:
    _user, number, _ = await sms_user(hooks.services)

    for to in ["+15551234567", "40405", "", "404040"]:
        response = await hooks.inbound(number, "STOP", to=to)
        assert reply_of(response) is None, to
    assert not await paused(number)

    # The sender number is ours too (API.md), like the short code.
    reply_of(await hooks.inbound(number, "STOP", to=TWILIO_FROM))
    assert await paused(number)
    reply_of(await hooks.inbound(number, "GO", to=hooks.services.settings.sms_short_code))
    assert not await paused(number)


async def test_s5_the_short_code_comes_from_the_settings(
    settings: Settings, make_services: Callable[..., Services]
) -> None:
    async with open_hooks(settings, make_services, sms_short_code="12345") as hooks:
        _user, number, _ = await sms_user(hooks.services)
        assert reply_of(await hooks.inbound(number, "STOP", to="40404")) is None
        assert not await paused(number)
        reply_of(await hooks.inbound(number, "STOP", to="12345"))
        assert await paused(number)


# W1: signatures --------------------------------------------------------------------------------


async def test_w1_inbound_without_a_valid_signature_is_refused_and_changes_nothing(
    hooks: Webhooks,
) -> None:
    _user, number, _ = await sms_user(hooks.services)
    url = hooks.services.settings.resolved_public_url() + INBOUND_PATH
    params = {"From": number, "To": "40404", "Body": "GO", "MessageSid": "SM" + "0" * 32}
    signed_for_go = twilio_signature(TWILIO_TOKEN, url, list(params.items()))
    forged = {
        "missing": await hooks.inbound(number, "STOP", token=None),
        "wrong token": await hooks.inbound(number, "STOP", token="not-the-token"),
        "empty": await hooks.inbound(number, "STOP", signature=""),
        "garbage": await hooks.inbound(number, "STOP", signature="!!not base64!!"),
        "signed for another body": await hooks.post(
            INBOUND_PATH, {**params, "Body": "STOP"}, signature=signed_for_go
        ),
        "signed for another url": await hooks.post(
            INBOUND_PATH,
            {**params, "Body": "STOP"},
            signature=twilio_signature(
                TWILIO_TOKEN,
                hooks.services.settings.resolved_public_url() + STATUS_PATH,
                list({**params, "Body": "STOP"}.items()),
            ),
        ),
    }
    for case, response in forged.items():
        assert response.status_code == 403, case
    assert not await paused(number)
    # The genuine one works.
    reply_of(await hooks.post(INBOUND_PATH, {**params, "Body": "STOP"}))
    assert await paused(number)


async def test_w1_without_a_configured_auth_token_every_webhook_is_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    _user, number, _ = await sms_user(services)
    hooks = Webhooks(services, client)

    for token in ["", TWILIO_TOKEN]:
        response = await hooks.inbound(number, "STOP", token=token)
        assert response.status_code == 403
    assert not await paused(number)
    assert (await hooks.receipt("SM" + secrets.token_hex(16), "delivered")).status_code == 403


# S3, W1: delivery receipts -----------------------------------------------------------------


async def sent_message(services: Services) -> SmsMessage:
    """A verification SMS, moved to SENT with a provider sid as a worker would leave it."""
    user, _, _ = await sms_user(services)
    message = (
        await SmsMessage.filter(user_id=user.id, code_id__isnull=False)
        .order_by("-created_at")
        .first()
    )
    assert message is not None
    sid = "SM" + secrets.token_hex(16)
    await SmsMessage.filter(id=message.id).update(status=SmsStatus.SENT, provider_sid=sid)
    return await SmsMessage.get(id=message.id)


async def test_s3_status_webhook_answers_204_for_an_unknown_sid_and_changes_nothing(
    hooks: Webhooks,
) -> None:
    message = await sent_message(hooks.services)
    unknown = "SM" + secrets.token_hex(16)

    for status in ["delivered", "failed", "undelivered", "sent"]:
        response = await hooks.receipt(unknown, status, error_code="30003")
        assert response.status_code == 204
        assert response.content == b""
    assert (await hooks.receipt("", "delivered")).status_code == 204

    assert await SmsMessage.filter(provider_sid=unknown).count() == 0
    after = await SmsMessage.get(id=message.id)
    assert (after.status, after.error_code, after.delivered_at) == (SmsStatus.SENT, None, None)


async def test_s3_replayed_delivered_receipt_changes_nothing(hooks: Webhooks) -> None:
    message = await sent_message(hooks.services)
    assert message.provider_sid is not None
    assert (await hooks.receipt(message.provider_sid, "delivered")).status_code == 204
    delivered = await SmsMessage.get(id=message.id)
    assert delivered.status is SmsStatus.DELIVERED
    assert delivered.delivered_at is not None

    for _ in range(3):
        assert (await hooks.receipt(message.provider_sid, "delivered")).status_code == 204

    after = await SmsMessage.get(id=message.id)
    assert (after.status, after.delivered_at, after.error_code) == (
        SmsStatus.DELIVERED,
        delivered.delivered_at,
        None,
    )


@pytest.mark.parametrize("final", ["delivered", "failed", "undelivered"])
async def test_s3_a_receipt_never_moves_a_message_backwards(hooks: Webhooks, final: str) -> None:
    message = await sent_message(hooks.services)
    sid = message.provider_sid
    assert sid is not None
    # Before its final status, an earlier state does not pull a SENT message back either.
    for earlier in ["queued", "sending"]:
        assert (await hooks.receipt(sid, earlier)).status_code == 204
        assert (await SmsMessage.get(id=message.id)).status is SmsStatus.SENT
    assert (await hooks.receipt(sid, final, error_code="30005")).status_code == 204
    settled = await SmsMessage.get(id=message.id)
    assert settled.status.value == final.upper()

    for later in ["queued", "sending", "sent", "delivered", "failed", "undelivered"]:
        assert (await hooks.receipt(sid, later, error_code="30008")).status_code == 204

    after = await SmsMessage.get(id=message.id)
    assert (after.status, after.delivered_at, after.error_code) == (
        settled.status,
        settled.delivered_at,
        settled.error_code,
    )


async def test_w1_forged_receipt_is_refused_and_changes_nothing(hooks: Webhooks) -> None:
    message = await sent_message(hooks.services)
    assert message.provider_sid is not None
    params = {"MessageSid": message.provider_sid, "MessageStatus": "failed"}

    unsigned = await hooks.post(STATUS_PATH, params, token=None)
    wrong = await hooks.post(STATUS_PATH, params, token="other")

    assert (unsigned.status_code, wrong.status_code) == (403, 403)
    after = await SmsMessage.get(id=message.id)
    assert (after.status, after.error_code) == (SmsStatus.SENT, None)


async def test_w1_a_signature_that_is_not_ascii_is_refused_like_any_bad_one(
    hooks: Webhooks,
) -> None:
    """Header values reach the app as latin-1 text: a byte above 0x7f is a bad signature (403),
    not an error."""
    message = await sent_message(hooks.services)
    assert message.provider_sid is not None
    number = message.to_number
    bodies = {
        STATUS_PATH: {"MessageSid": message.provider_sid, "MessageStatus": "failed"},
        INBOUND_PATH: {"From": number, "To": SHORT_CODE, "Body": "STOP", "MessageSid": "SMx"},
    }
    for path, params in bodies.items():
        url = hooks.services.settings.resolved_public_url() + path
        right = twilio_signature(TWILIO_TOKEN, url, list(params.items())).encode()
        for signature in [b"\xe9abc", right + b"\xe9", b"\xff" * len(right)]:
            response = await hooks.http.post(
                path,
                content=urlencode(params).encode(),
                headers={
                    b"content-type": b"application/x-www-form-urlencoded",
                    b"x-twilio-signature": signature,
                },
            )
            assert response.status_code == 403, (path, signature)

    after = await SmsMessage.get(id=message.id)
    assert (after.status, after.error_code) == (SmsStatus.SENT, None)
    assert not await paused(number)


async def test_w1_g2_signed_webhooks_with_a_nul_byte_are_refused_as_malformed(
    hooks: Webhooks,
) -> None:
    """PostgreSQL text columns refuse NUL: a signed form carrying one is a malformed request
    (400) that never reaches the database, on either webhook, and changes nothing."""
    message = await sent_message(hooks.services)
    sid = message.provider_sid
    assert sid is not None
    number = message.to_number
    early_before = await SmsEarlyReceipt.all().count()
    receipts = [
        {"MessageSid": "SM\x00" + secrets.token_hex(16), "MessageStatus": "failed"},
        {"MessageSid": sid, "MessageStatus": "failed", "ErrorCode": "300\x0005"},
        {"MessageSid": sid, "MessageStatus": "fail\x00ed"},
        {"MessageSid": sid, "MessageStatus": "failed", "Extra\x00": "1"},
    ]
    for params in receipts:
        assert (await hooks.post(STATUS_PATH, params)).status_code == 400, params
        # The signature is still checked first: unsigned junk is a forgery like any other.
        assert (await hooks.post(STATUS_PATH, params, token=None)).status_code == 403
    inbound = [
        await hooks.inbound(number, "STOP\x00"),
        await hooks.inbound(number[:6] + "\x00" + number[6:], "STOP"),
        await hooks.inbound(number, "STOP", to=SHORT_CODE + "\x00"),
    ]
    assert [response.status_code for response in inbound] == [400, 400, 400]

    after = await SmsMessage.get(id=message.id)
    assert (after.status, after.error_code) == (SmsStatus.SENT, None)
    assert await SmsEarlyReceipt.all().count() == early_before
    assert not await paused(number)
    # The same requests without the NUL are taken.
    reply_of(await hooks.inbound(number, "STOP"))
    assert await paused(number)
    assert (await hooks.receipt(sid, "failed", error_code="30005")).status_code == 204
    failed = await SmsMessage.get(id=message.id)
    assert (failed.status, failed.error_code) == (SmsStatus.FAILED, "30005")


async def test_s5_codes_are_never_in_a_keyword_reply(hooks: Webhooks) -> None:
    """F4: replies carry no code, even the GO that resends one."""
    services = hooks.services
    user, number, _ = await sms_user(services)
    challenge = await log_in(services, user.username)
    (code,) = await login_codes(services, challenge.id)
    reply_of(await hooks.inbound(number, "STOP"))
    response = await hooks.inbound(number, "GO")
    assert code not in response.text
    row = (await messages_to(number))[-1]
    assert row.body is None
    assert row.code_id is not None
    sealed = await SmsCode.get(id=row.code_id)
    assert sealed.purpose is SmsCodePurpose.LOGIN
    assert open_code(services, sealed) == code
