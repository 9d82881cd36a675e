"""S3, S4, F4, W1 for sending SMS: the real `sms.send` job in a real arq worker (burst mode)
talks HTTP to a fake Twilio (tests/fakes/twilio.py); messages come from the domain (a phone
added, a login challenge), through the outbox and the relay to the `sms` queue.

The `sms` queue is shared by the whole run, so every assertion about the fake looks only at the
requests to the test's own number; numbers come from a fresh block per test (S7 limits live in
Redis for the whole run).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from pydantic import SecretStr

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import User
from gateway.accounts.service import Client
from gateway.app import create_app
from gateway.container import Services
from gateway.core.clock import utc_now
from gateway.core.outbox import OutboxMessage
from gateway.factors.sms import phones
from gateway.factors.sms.delivery import purge_expired_codes, settle_early_receipts
from gateway.factors.sms.models import (
    Phone,
    SmsAttempt,
    SmsCode,
    SmsEarlyReceipt,
    SmsMessage,
    SmsStatus,
)
from gateway.factors.summary import method_summary
from gateway.login.service import ChallengeView
from gateway.settings import Settings, SmsProviderName
from tests.conftest import MovableClock, run_worker
from tests.fakes.twilio import (
    HANG_UP,
    INVALID_NUMBER,
    OK,
    RESET,
    TIMEOUT,
    UNSUBSCRIBED,
    Behaviour,
    FakeTwilio,
    RecordedRequest,
    http_error,
    rate_limited,
)

PASSWORD = "correct horse battery staple"
SENDER = "+15005550006"
FALLBACK_SENDER = "+15005550007"
STATUS_PATH = "/webhooks/sms/status"
CODE = re.compile(r"\b(\d{6})\b")


def _account_sid() -> str:
    return "AC" + secrets.token_hex(16)


# Fixtures -------------------------------------------------------------------------------


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(account_sid=_account_sid(), auth_token=secrets.token_hex(16)) as fake:
        yield fake


@pytest.fixture
async def twilio_fallback() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(account_sid=_account_sid(), auth_token=secrets.token_hex(16)) as fake:
        yield fake


def twilio_overrides(twilio: FakeTwilio) -> dict[str, Any]:
    return {
        "sms_provider": SmsProviderName.TWILIO,
        "twilio_base_url": twilio.base_url,
        "twilio_account_sid": twilio.account_sid,
        "twilio_auth_token": SecretStr(twilio.auth_token),
        "twilio_from": SENDER,
        "sms_retry_base_seconds": 0.01,
        "sms_send_timeout_seconds": 0.5,
        "sms_primary_tries": 4,
    }


@pytest.fixture
def settings_for_twilio(settings: Settings, twilio: FakeTwilio) -> Settings:
    return settings.model_copy(update=twilio_overrides(twilio))


@pytest.fixture
def number() -> str:
    return fresh_number()


@pytest.fixture
async def receipts_client(
    settings_for_twilio: Settings, make_services: Callable[..., Services], twilio: FakeTwilio
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app configured for the fake Twilio account, reached in process; receipts are
    posted to the full StatusCallback URL."""
    app = create_app(settings_for_twilio, make_services(**twilio_overrides(twilio)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


# Helpers --------------------------------------------------------------------------------


def fresh_number() -> str:
    """A valid US mobile-capable number in a block of 1000 no other test uses (S7)."""
    while True:
        exchange = secrets.randbelow(800) + 200
        line = secrets.randbelow(10_000)
        candidate = f"+1415{exchange:03d}{line:04d}"
        try:
            return phones.parse(candidate).e164
        except phones.InvalidPhoneNumber:
            continue


async def new_user(services: Services) -> User:
    return await services.accounts.sign_up(f"sms_{secrets.token_hex(6)}", PASSWORD)


async def add_phone(services: Services, user_id: UUID, number: str) -> SmsMessage:
    """S1 through the domain: the verification SMS is written with its outbox row and relayed."""
    async with services.uow() as work:
        await services.sms.add_phone(user_id, number, None, None, work)
    message = await SmsMessage.filter(user_id=user_id, to_number=number).order_by("-created_at")
    assert message, "adding a phone queues a verification SMS"
    return message[0]


async def reload(message: SmsMessage) -> SmsMessage:
    return await SmsMessage.get(id=message.id)


async def attempts_of(message: SmsMessage) -> list[SmsAttempt]:
    return await SmsAttempt.filter(message_id=message.id).order_by("id")


def code_in(request: RecordedRequest) -> str:
    found = CODE.search(request.form["Body"])
    assert found, request.form["Body"]
    return found.group(1)


def basic_auth(account_sid: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{account_sid}:{token}".encode()).decode()


async def verified_phone_with_2fa(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> User:
    """A user whose phone verified with the code the fake received, and 2FA on (F1)."""
    user = await new_user(services)
    await add_phone(services, user.id, number)
    await run_worker(settings_for_twilio, "sms")
    (sent,) = twilio.sent_to(number)
    await services.sms.verify_phone(user.id, code_in(sent))
    issued = await services.accounts.issue_session(
        user.id, Client(ClientKind.WEB, None, None), password_proved=True
    )
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    async with services.uow() as work:
        await services.security.enable(session, work)
    return user


async def log_in(services: Services, username: str) -> ChallengeView:
    """L2, L4: a challenge whose first SMS code is queued at once."""
    async with services.uow() as work:
        outcome = await services.login.login(
            username, PASSWORD, Client(ClientKind.WEB, None, None), work
        )
    result = outcome.unwrap()
    assert isinstance(result, ChallengeView)
    return result


async def sent_message(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> tuple[SmsMessage, str]:
    """A verification SMS the fake accepted: the message and its provider sid."""
    user = await new_user(services)
    message = await add_phone(services, user.id, number)
    await run_worker(settings_for_twilio, "sms")
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.provider_sid is not None
    return message, message.provider_sid


# S3: sending ----------------------------------------------------------------------------


def falling_back_to(fallback: FakeTwilio, settings: Settings, **update: Any) -> Settings:
    """`settings` with `fallback` as the second provider (S3), and `update` besides."""
    return settings.model_copy(
        update={
            "twilio_fallback_base_url": fallback.base_url,
            "twilio_fallback_account_sid": fallback.account_sid,
            "twilio_fallback_auth_token": SecretStr(fallback.auth_token),
            "twilio_fallback_from": FALLBACK_SENDER,
            **update,
        }
    )


async def test_s3_sent_message_records_the_provider_sid_and_one_attempt(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    user = await new_user(services)
    message = await add_phone(services, user.id, number)
    assert message.status is SmsStatus.QUEUED

    await run_worker(settings_for_twilio, "sms")

    (request,) = twilio.requests_to(number)
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.provider == "twilio"
    assert message.provider_sid == request.sid
    assert message.provider_sid is not None
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.provider_sid)
    assert message.attempts == 1
    assert message.sent_at is not None
    assert message.error_code is None
    (attempt,) = await attempts_of(message)
    assert (attempt.provider, attempt.outcome, attempt.http_status) == ("twilio", "sent", 201)
    assert attempt.finished_at is not None

    assert request.auth_ok
    assert request.account_sid == twilio.account_sid
    assert request.form["To"] == number
    assert request.form["From"] == SENDER
    assert request.form["StatusCallback"] == settings_for_twilio.resolved_public_url() + (
        STATUS_PATH
    )
    code = code_in(request)
    assert len(code) == 6
    # S1: the code in the SMS is the one that verifies the phone.
    view = await services.sms.verify_phone(user.id, code)
    assert view.verified


async def test_s3_wrong_credentials_are_refused_by_the_provider_and_nothing_is_sent(
    twilio: FakeTwilio,
) -> None:
    """The fake itself: Twilio's 401 for bad basic auth (what a misconfigured token gets)."""
    url = f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    form = {"To": fresh_number(), "From": SENDER, "Body": "x"}
    async with httpx.AsyncClient() as http:
        wrong = await http.post(
            url, data=form, headers={"Authorization": basic_auth(twilio.account_sid, "nope")}
        )
        right = await http.post(url, data=form, auth=(twilio.account_sid, twilio.auth_token))
    assert wrong.status_code == 401
    assert wrong.json()["code"] == 20003
    assert wrong.json()["status"] == 401
    assert right.status_code == 201
    assert right.json()["status"] == "queued"
    assert [r.auth_ok for r in twilio.requests] == [False, True]
    assert len(twilio.messages) == 1


async def test_s3_transient_failures_are_retried_until_the_provider_accepts(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    """500, a timeout and a 429 (Retry-After: 0) are transient: the 4th try delivers."""
    twilio.script(http_error(500), TIMEOUT, rate_limited(retry_after=0), to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    await run_worker(settings_for_twilio, "sms")

    requests = twilio.requests_to(number)
    assert len(requests) == 4
    assert all(r.auth_ok for r in requests)
    # S4: a retry resends the same code.
    assert len({code_in(r) for r in requests}) == 1
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.attempts == 4
    assert message.provider_sid == requests[-1].sid
    assert message.error_code is None
    attempts = await attempts_of(message)
    assert [(a.outcome, a.http_status) for a in attempts] == [
        ("transient", 500),
        ("transient", None),
        ("transient", 429),
        ("sent", 201),
    ]
    assert [a.error_code for a in attempts[:3]] == ["20500", "timeout", "20429"]
    assert all(a.finished_at is not None for a in attempts)


async def test_s3_retries_exhausted_without_fallback_fail_the_message(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    twilio.script(*[http_error(503)] * 10, to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    await run_worker(settings_for_twilio, "sms")

    message = await reload(message)
    assert len(twilio.requests_to(number)) == settings_for_twilio.sms_primary_tries
    assert message.status is SmsStatus.FAILED
    assert message.attempts == settings_for_twilio.sms_primary_tries
    assert message.error_code == "20503"
    assert message.provider_sid is None


async def test_s3_invalid_number_is_permanent_and_stops_at_once(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    twilio.script(INVALID_NUMBER, to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    await run_worker(settings_for_twilio, "sms")

    assert len(twilio.requests_to(number)) == 1
    message = await reload(message)
    assert message.status is SmsStatus.FAILED
    assert message.error_code == "21211"
    assert message.attempts == 1
    (attempt,) = await attempts_of(message)
    assert (attempt.outcome, attempt.http_status, attempt.error_code) == ("permanent", 400, "21211")


async def test_s3_unsubscribed_recipient_stops_at_once_and_pauses_sms_to_that_number(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    user = await verified_phone_with_2fa(services, settings_for_twilio, twilio, number)
    assert await services.sms.sms_ready_number(user.id) == number
    twilio.script(UNSUBSCRIBED, to=number)

    challenge = await log_in(services, user.username)
    assert "SMS" in challenge.methods
    await run_worker(settings_for_twilio, "sms")

    assert len(twilio.requests_to(number)) == 2  # the verification code, then the login code
    login_message = (
        await SmsMessage.filter(to_number=number, code_id__not_isnull=True)
        .order_by("-created_at")
        .first()
    )
    assert login_message is not None
    assert login_message.status is SmsStatus.FAILED
    assert login_message.error_code == "21610"
    assert login_message.attempts == 1
    phone = await Phone.get(user_id=user.id)
    assert phone.sms_paused
    # S5: login then falls back to the other methods.
    assert await services.sms.sms_ready_number(user.id) is None
    assert not services.sms.offered(await method_summary(user.id), ClientKind.WEB)


async def test_s3_fallback_provider_delivers_when_the_primary_is_down(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    twilio_fallback: FakeTwilio,
    number: str,
) -> None:
    twilio.default = http_error(503)
    with_fallback = falling_back_to(
        twilio_fallback, settings_for_twilio, sms_primary_tries=2, sms_fallback_tries=3
    )
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    await run_worker(with_fallback, "sms")

    assert len(twilio.requests_to(number)) == with_fallback.sms_primary_tries
    (delivered,) = twilio_fallback.requests_to(number)
    assert delivered.auth_ok
    assert delivered.account_sid == twilio_fallback.account_sid
    assert delivered.form["From"] == FALLBACK_SENDER
    assert delivered.form["StatusCallback"] == with_fallback.resolved_public_url() + STATUS_PATH
    assert code_in(delivered) == code_in(twilio.requests_to(number)[0])
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.provider == "twilio-fallback"
    assert message.provider_sid == delivered.sid
    assert message.attempts == 3
    assert [a.provider for a in await attempts_of(message)] == [
        "twilio",
        "twilio",
        "twilio-fallback",
    ]


# S3: expiry -----------------------------------------------------------------------------


async def test_s3_code_is_never_sent_after_it_expired(
    make_services: Callable[..., Services],
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    number: str,
) -> None:
    """The message waited in the queue longer than its code lives: it fails, unsent."""
    clock = MovableClock()
    clock.advance(-(settings_for_twilio.sms_code_ttl_seconds + 60))
    earlier = make_services(clock=clock)
    user = await new_user(earlier)
    message = await add_phone(earlier, user.id, number)

    await run_worker(settings_for_twilio, "sms")

    assert twilio.requests_to(number) == []
    message = await reload(message)
    assert message.status is SmsStatus.FAILED
    assert message.error_code == "expired"
    assert message.attempts == 0
    assert await attempts_of(message) == []


async def test_s3_code_that_expires_between_retries_is_not_resent(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    twilio.script(http_error(500).held_until_released(), to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    worker = asyncio.create_task(run_worker(settings_for_twilio, "sms"))
    try:
        await twilio.wait_for_requests(1, to=number)
        # The code's lifetime ends while the first try is in flight.
        past = message.created_at - timedelta(seconds=1)
        assert message.code_id is not None
        await SmsCode.filter(id=message.code_id).update(expires_at=past)
        await SmsMessage.filter(id=message.id).update(expires_at=past)
    finally:
        twilio.release()
        await worker

    assert len(twilio.requests_to(number)) == 1
    message = await reload(message)
    assert message.status is SmsStatus.FAILED
    assert message.error_code == "expired"
    assert message.attempts == 1


# S4: at least once, never silently twice -------------------------------------------------


async def test_s4_message_dispatched_twice_is_sent_once(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    user = await new_user(services)
    message = await add_phone(services, user.id, number)
    row = await OutboxMessage.get(id=message.id)
    assert row.dispatched_at is not None
    # The relay's bookkeeping was lost after it enqueued: the sweeper sends the row again,
    # before the worker ran and after.
    await OutboxMessage.filter(id=row.id).update(dispatched_at=None)
    assert await services.relay.sweep(older_than=timedelta(0)) >= 1
    await run_worker(settings_for_twilio, "sms")
    await OutboxMessage.filter(id=row.id).update(dispatched_at=None)
    assert await services.relay.sweep(older_than=timedelta(0)) >= 1
    await run_worker(settings_for_twilio, "sms")

    assert len(twilio.requests_to(number)) == 1
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.attempts == 1
    assert message.duplicates == 0


async def test_s4_try_cut_off_by_a_dead_worker_is_resent_and_counted_as_a_duplicate(
    services: Services, settings_for_twilio: Settings, twilio: FakeTwilio, number: str
) -> None:
    user = await new_user(services)
    message = await add_phone(services, user.id, number)
    # What a worker killed mid-call leaves behind: the try recorded as started, never finished.
    await SmsMessage.filter(id=message.id).update(
        status=SmsStatus.SENDING, attempts=1, provider="twilio"
    )
    await SmsAttempt.create(message_id=message.id, provider="twilio")

    await run_worker(settings_for_twilio, "sms")

    assert len(twilio.requests_to(number)) == 1
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.attempts == 2
    assert message.duplicates == 1
    assert [a.outcome for a in await attempts_of(message)] == ["interrupted", "sent"]


@pytest.mark.parametrize(
    ("script", "status", "duplicates"),
    [
        pytest.param([TIMEOUT, OK], SmsStatus.SENT, 1, id="timeout-then-sent"),
        pytest.param([TIMEOUT, TIMEOUT, OK], SmsStatus.SENT, 2, id="two-timeouts-then-sent"),
        pytest.param([http_error(500), OK], SmsStatus.SENT, 0, id="refused-then-sent"),
        pytest.param([TIMEOUT, INVALID_NUMBER], SmsStatus.FAILED, 0, id="timeout-then-refused"),
        pytest.param([TIMEOUT] * 4, SmsStatus.FAILED, 0, id="timeouts-only"),
    ],
)
async def test_s4_try_that_timed_out_counts_as_a_duplicate_once_a_later_try_went_out(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    number: str,
    script: list[Behaviour],
    status: SmsStatus,
    duplicates: int,
) -> None:
    """A timed-out request may have reached the provider: with a later one accepted, the
    recipient may get the code twice. A try the provider answered with a refusal sent nothing,
    and without a later accepted try there is at most one message."""
    twilio.script(*script, to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    await run_worker(settings_for_twilio, "sms")

    requests = twilio.requests_to(number)
    assert len(requests) == len(script)
    assert len({code_in(r) for r in requests}) == 1
    message = await reload(message)
    assert (message.status, message.attempts) == (status, len(script))
    assert message.duplicates == duplicates


@pytest.mark.parametrize("cut_off", [HANG_UP, RESET], ids=["closed", "reset"])
async def test_s4_try_whose_connection_broke_after_the_request_counts_as_a_duplicate(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    number: str,
    cut_off: Behaviour,
) -> None:
    """The provider took the message, then the connection closed (or was reset) before its
    answer: like a timeout, the try may have sent it, and the later accepted try is a second
    copy."""
    twilio.script(cut_off, OK, to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)

    await run_worker(settings_for_twilio, "sms")

    taken = twilio.sent_to(number)
    assert len(taken) == 2  # the fake did take the first one: the recipient gets it twice
    assert code_in(taken[0]) == code_in(taken[1])
    message = await reload(message)
    assert (message.status, message.attempts) == (SmsStatus.SENT, 2)
    assert message.provider_sid == taken[1].sid
    assert message.duplicates == 1
    assert [(a.outcome, a.http_status, a.error_code) for a in await attempts_of(message)] == [
        ("transient", None, "connection_lost"),
        ("sent", 201, None),
    ]


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound but not listening (so nothing else takes it): connecting is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@contextmanager
def silent_port() -> Iterator[int]:
    """A port whose listener's accept queue is full: Linux drops further SYNs, so connecting
    times out."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # the one place in the queue
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "unreachable", [refusing_port, silent_port], ids=["refused", "connect-timeout"]
)
async def test_s4_try_that_could_not_connect_is_no_duplicate(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    number: str,
    unreachable: Callable[[], AbstractContextManager[int]],
) -> None:
    """A try that never had a connection sent nothing: the message the fallback then sends is
    the only one."""
    with unreachable() as port:
        primary_down = falling_back_to(
            twilio,
            settings_for_twilio,
            twilio_base_url=f"http://127.0.0.1:{port}",
            sms_primary_tries=2,
            sms_fallback_tries=1,
        )
        user = await new_user(services)
        message = await add_phone(services, user.id, number)

        await run_worker(primary_down, "sms")

    (taken,) = twilio.sent_to(number)
    assert taken.form["From"] == FALLBACK_SENDER
    message = await reload(message)
    assert (message.status, message.provider_sid) == (SmsStatus.SENT, taken.sid)
    assert message.duplicates == 0
    assert [(a.provider, a.error_code) for a in await attempts_of(message)] == [
        ("twilio", "connect_failed"),
        ("twilio", "connect_failed"),
        ("twilio-fallback", None),
    ]


# F4: no secret kept longer than needed ----------------------------------------------------


async def test_f4_purge_clears_the_sealed_code_once_it_expired(
    services: Services,
    make_services: Callable[..., Services],
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
) -> None:
    clock = MovableClock()
    clock.advance(-(settings_for_twilio.sms_code_ttl_seconds + 60))
    earlier = make_services(clock=clock)
    old_user = await new_user(earlier)
    old_message = await add_phone(earlier, old_user.id, fresh_number())
    live_user = await new_user(services)
    live_message = await add_phone(services, live_user.id, fresh_number())
    assert old_message.code_id is not None
    assert live_message.code_id is not None
    assert (await SmsCode.get(id=old_message.code_id)).code_sealed is not None

    assert await purge_expired_codes() >= 1

    old_code = await SmsCode.get(id=old_message.code_id)
    assert old_code.code_sealed is None
    assert old_code.code_hash  # still checkable by hash; no longer sendable
    assert (await SmsCode.get(id=live_message.code_id)).code_sealed is not None
    await run_worker(settings_for_twilio, "sms")
    assert twilio.requests_to(old_message.to_number) == []
    assert (await reload(old_message)).status is SmsStatus.FAILED
    assert len(twilio.requests_to(live_message.to_number)) == 1


# S3, W1: delivery receipts ---------------------------------------------------------------


async def test_s3_signed_delivered_receipt_marks_the_message_delivered(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
    number: str,
) -> None:
    message, sid = await sent_message(services, settings_for_twilio, twilio, number)

    response = await twilio.post_receipt(receipts_client, sid, "delivered")

    assert response.status_code == 204
    message = await reload(message)
    assert message.status is SmsStatus.DELIVERED
    assert message.delivered_at is not None


async def test_s3_undelivered_receipt_records_the_carrier_error(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
    number: str,
) -> None:
    message, sid = await sent_message(services, settings_for_twilio, twilio, number)

    response = await twilio.post_receipt(receipts_client, sid, "undelivered", error_code="30003")

    assert response.status_code == 204
    message = await reload(message)
    assert message.status is SmsStatus.UNDELIVERED
    assert message.error_code == "30003"


async def test_s3_receipt_for_an_unknown_message_is_acknowledged_and_changes_nothing(
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
) -> None:
    unknown = "SM" + secrets.token_hex(16)
    url = settings_for_twilio.resolved_public_url() + STATUS_PATH

    response = await twilio.post_receipt(receipts_client, unknown, "delivered", url=url)

    assert response.status_code == 204
    assert await SmsMessage.filter(provider_sid=unknown).count() == 0


async def test_w1_receipt_with_a_bad_or_missing_signature_is_refused_and_changes_nothing(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
    number: str,
) -> None:
    message, sid = await sent_message(services, settings_for_twilio, twilio, number)

    forged = await twilio.post_receipt(
        receipts_client, sid, "delivered", auth_token=secrets.token_hex(16)
    )
    unsigned = await twilio.post_receipt(receipts_client, sid, "delivered", signed=False)

    assert forged.status_code == 403
    assert unsigned.status_code == 403
    message = await reload(message)
    assert message.status is SmsStatus.SENT
    assert message.delivered_at is None


async def test_s3_replayed_receipt_changes_nothing_and_status_never_moves_back(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
    number: str,
) -> None:
    message, sid = await sent_message(services, settings_for_twilio, twilio, number)
    first = await twilio.post_receipt(receipts_client, sid, "delivered")
    assert first.status_code == 204
    delivered = await reload(message)
    assert delivered.status is SmsStatus.DELIVERED

    replay = await twilio.post_receipt(receipts_client, sid, "delivered")
    late_sent = await twilio.post_receipt(receipts_client, sid, "sent")
    late_failed = await twilio.post_receipt(receipts_client, sid, "failed", error_code="30008")

    assert [r.status_code for r in (replay, late_sent, late_failed)] == [204, 204, 204]
    after = await reload(message)
    assert after.status is SmsStatus.DELIVERED
    assert after.delivered_at == delivered.delivered_at
    assert after.error_code is None


# S3: a receipt that races the worker --------------------------------------------------------


@pytest.fixture
def patient_settings(settings_for_twilio: Settings) -> Settings:
    """The worker waits for a held send long enough for the test to act meanwhile."""
    return settings_for_twilio.model_copy(update={"sms_send_timeout_seconds": 10.0})


@asynccontextmanager
async def send_held_at_the_provider(
    services: Services, settings: Settings, twilio: FakeTwilio, number: str
) -> AsyncIterator[tuple[SmsMessage, RecordedRequest]]:
    """A verification SMS whose provider call is held open: the block acts while the worker
    waits for Twilio's answer, which comes when the block ends."""
    twilio.script(OK.held_until_released(), to=number)
    user = await new_user(services)
    message = await add_phone(services, user.id, number)
    worker = asyncio.create_task(run_worker(settings, "sms"))
    try:
        (request,) = await twilio.wait_for_requests(1, to=number)
        yield message, request
    finally:
        twilio.release()
        await worker


async def test_s3_delivered_receipt_that_beats_the_workers_write_of_the_sid_is_kept(
    services: Services,
    patient_settings: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
    number: str,
) -> None:
    async with send_held_at_the_provider(services, patient_settings, twilio, number) as (
        message,
        request,
    ):
        assert request.sid is not None
        # Twilio took the message and its callback arrives before its answer to the worker.
        response = await twilio.post_receipt(receipts_client, request.sid, "delivered")
        assert response.status_code == 204
        assert (await reload(message)).status is SmsStatus.SENDING

    message = await reload(message)
    assert message.status is SmsStatus.DELIVERED
    assert message.provider_sid == request.sid
    assert message.delivered_at is not None
    assert message.sent_at is not None
    assert await SmsEarlyReceipt.filter(provider_sid=request.sid).count() == 0
    # A late "sent" receipt, or the job run again, does not pull it back.
    assert (await twilio.post_receipt(receipts_client, request.sid, "sent")).status_code == 204
    await run_worker(patient_settings, "sms")
    assert (await reload(message)).status is SmsStatus.DELIVERED
    assert len(twilio.requests_to(number)) == 1


async def test_s3_undelivered_receipt_that_beats_the_worker_keeps_its_carrier_error(
    services: Services,
    patient_settings: Settings,
    twilio: FakeTwilio,
    receipts_client: httpx.AsyncClient,
    number: str,
) -> None:
    async with send_held_at_the_provider(services, patient_settings, twilio, number) as (
        message,
        request,
    ):
        assert request.sid is not None
        await twilio.post_receipt(receipts_client, request.sid, "sent")
        await twilio.post_receipt(receipts_client, request.sid, "undelivered", error_code="30003")

    message = await reload(message)
    assert (message.status, message.error_code) == (SmsStatus.UNDELIVERED, "30003")
    assert message.provider_sid == request.sid


async def test_s3_a_final_status_written_while_the_send_is_in_flight_is_never_moved_back(
    services: Services, patient_settings: Settings, twilio: FakeTwilio, number: str
) -> None:
    async with send_held_at_the_provider(services, patient_settings, twilio, number) as (
        message,
        request,
    ):
        await SmsMessage.filter(id=message.id).update(
            status=SmsStatus.DELIVERED, delivered_at=utc_now()
        )

    message = await reload(message)
    assert message.status is SmsStatus.DELIVERED
    assert message.provider_sid == request.sid  # later receipts still find it


async def test_s3_a_kept_receipt_is_applied_by_the_housekeeping_once_the_sid_is_known(
    services: Services,
    settings_for_twilio: Settings,
    twilio: FakeTwilio,
    number: str,
) -> None:
    """What a worker killed between recording the sid and looking for early receipts leaves."""
    message, sid = await sent_message(services, settings_for_twilio, twilio, number)
    received = utc_now() - timedelta(seconds=5)
    await SmsEarlyReceipt.create(provider_sid=sid, status=SmsStatus.DELIVERED, received_at=received)
    orphan = "SM" + secrets.token_hex(16)  # its try was cut off; the message went under another
    await SmsEarlyReceipt.create(
        provider_sid=orphan, status=SmsStatus.DELIVERED, received_at=utc_now() - timedelta(days=2)
    )

    assert await settle_early_receipts() >= 1

    message = await reload(message)
    assert message.status is SmsStatus.DELIVERED
    assert message.delivered_at == received
    assert await SmsEarlyReceipt.filter(provider_sid__in=[sid, orphan]).count() == 0
