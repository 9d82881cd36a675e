"""Helpers shared by the SMS tests (S1, S2, S5, S6, S7, H1, H3, H6, H9, W1).

The code an SMS carries is read back the way the worker reads it: the latest SmsCode row, opened
with the service's SecretBox. S7 windows live in Redis for the whole run, so every test takes its
own number block (fresh_block), its own users and its own client IPs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import httpx
import phonenumbers

from gateway.accounts.clients import ClientKind
from gateway.accounts.models import Session
from gateway.accounts.service import Client, IssuedSession
from gateway.app import create_app
from gateway.container import Services
from gateway.core.errors import DomainError
from gateway.core.outbox import OutboxMessage
from gateway.factors.base import TwoFactorMethod
from gateway.factors.sms.models import SmsCode, SmsCodePurpose, SmsMessage
from gateway.factors.sms.service import PhoneView
from gateway.login.service import ChallengeView
from tests.graphql_client import PASSWORD, data

SMS = TwoFactorMethod.SMS
BACKUP = TwoFactorMethod.BACKUP_CODE
SESSION = "SESSION"
TWILIO_TOKEN = "tok"
TWILIO_FROM = "+15005550006"
SHORT_CODE = "40404"
INBOUND_PATH = "/webhooks/sms/inbound"
STATUS_PATH = "/webhooks/sms/status"

ADD_PHONE = """
mutation($n: String!, $c: String) {
  addPhone(number: $n, carrier: $c) { maskedNumber verified carrier smsPaused }
}"""
VERIFY_PHONE = """
mutation($c: String!) { verifyPhone(code: $c) { maskedNumber verified carrier smsPaused } }"""
REMOVE_PHONE = """
mutation { removePhone { twoFactorDisabled settings { twoFactorEnabled methods phone {
  maskedNumber } } } }"""
REAUTHENTICATE = "mutation($p: String!) { reauthenticate(password: $p) }"
REQUEST_SMS = """
mutation($id: ID!, $t: String!) {
  requestSmsCode(id: $id, token: $t) { id status methods smsRetryAfterSeconds }
}"""
PHONE_SETTINGS = """
query { viewer { id securitySettings { twoFactorEnabled methods
  phone { maskedNumber verified carrier smsPaused } } } }"""
EVENTS = "query { viewer { securityEvents(first: 50) { edges { node { kind detail } } } } }"

# Number blocks --------------------------------------------------------------------------------

_used_blocks: set[str] = set()


def fresh_block() -> str:
    """A Japanese mobile block (+8190 + 5 digits) no other test of this run uses; numbers of the
    block differ in their last 3 digits (number_in)."""
    while True:
        block = f"+8190{secrets.randbelow(9) + 1}{secrets.randbelow(10_000):04d}"
        if block not in _used_blocks:
            _used_blocks.add(block)
            return block


def number_in(block: str, last: int) -> str:
    number = f"{block}{last:03d}"
    parsed = phonenumbers.parse(number, None)
    assert phonenumbers.number_type(parsed) in {
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    }, number
    return number


def fresh_number() -> str:
    return number_in(fresh_block(), secrets.randbelow(1000))


def fresh_us_number() -> str:
    """A San Francisco number (FIXED_LINE_OR_MOBILE) in a block no other test uses."""
    while True:
        block = f"+1415{secrets.randbelow(800) + 200}{secrets.randbelow(10)}"
        parsed = phonenumbers.parse(block + "123", None)
        if block in _used_blocks or not phonenumbers.is_valid_number(parsed):
            continue
        _used_blocks.add(block)
        return number_in(block, secrets.randbelow(1000))


def random_ip() -> str:
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))


def unique_username(prefix: str = "sms") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


# Reading what was "sent" ----------------------------------------------------------------------


async def latest_code_row(
    user_id: UUID, purpose: SmsCodePurpose, challenge_id: UUID | None = None
) -> SmsCode:
    query = SmsCode.filter(user_id=user_id, purpose=purpose)
    if challenge_id is not None:
        query = query.filter(challenge_id=challenge_id)
    row = await query.order_by("-created_at").first()
    assert row is not None, "no SMS code was stored"
    return row


def open_code(services: Services, row: SmsCode) -> str:
    assert row.code_sealed is not None
    plain: str = services.box.decrypt(row.code_sealed, context=f"sms:{row.id}")
    return plain


async def verification_code(services: Services, user_id: UUID) -> str:
    return open_code(services, await latest_code_row(user_id, SmsCodePurpose.VERIFY_PHONE))


async def login_codes(services: Services, challenge_id: UUID) -> list[str]:
    """Every code sent for a challenge, oldest first."""
    rows = await SmsCode.filter(challenge_id=challenge_id).order_by("created_at")
    return [open_code(services, row) for row in rows]


async def messages_to(number: str) -> list[SmsMessage]:
    return await SmsMessage.filter(to_number=number).order_by("created_at")


async def has_outbox_row(message: SmsMessage) -> bool:
    """S4: the message's send job was written with it (the job id is the message id)."""
    row = await OutboxMessage.get_or_none(id=message.id)
    return row is not None and row.payload == {"message_id": str(message.id)}


def wrong_code(*right: str) -> str:
    return next(f"{n:06d}" for n in range(1_000_000) if f"{n:06d}" not in right)


def fullwidth(code: str) -> str:
    return "".join(chr(ord(ch) - ord("0") + 0xFF10) for ch in code)


# Domain-layer flows ---------------------------------------------------------------------------


@dataclass
class User:
    id: UUID
    username: str
    session: Session
    token: str


async def domain_user(services: Services, username: str | None = None) -> User:
    name = username or unique_username()
    async with services.uow():
        user = await services.accounts.sign_up(name, PASSWORD)
        issued = await services.accounts.issue_session(
            user.id, Client(ClientKind.WEB, None, None), password_proved=True
        )
    session = await services.accounts.session_for_token(issued.token)
    assert session is not None
    return User(user.id, name, session, issued.token)


async def add_phone(
    services: Services,
    user_id: UUID,
    number: str,
    ip: str | None = None,
    carrier: str | None = None,
) -> PhoneView | DomainError:
    try:
        async with services.uow() as work:
            return await services.sms.add_phone(user_id, number, carrier, ip, work)
    except DomainError as error:
        return error


async def verify_phone(services: Services, user: User, code: str) -> PhoneView | DomainError:
    try:
        async with services.uow() as work:
            outcome = await services.security.verify_phone(user.session, code, work)
    except DomainError as error:
        return error
    if outcome.error is not None:
        return outcome.error
    assert outcome.value is not None
    return outcome.value


async def verified_phone(
    services: Services, user: User, number: str, ip: str | None = None
) -> None:
    added = await add_phone(services, user.id, number, ip or random_ip())
    assert isinstance(added, PhoneView), added
    verified = await verify_phone(services, user, await verification_code(services, user.id))
    assert isinstance(verified, PhoneView), verified
    assert verified.verified


async def enable_two_factor(services: Services, user: User) -> str:
    """F1, B1: returns the first backup code."""
    async with services.uow() as work:
        _, code = await services.security.enable(user.session, work)
    return code.code


async def sms_user(
    services: Services, number: str | None = None, ip: str | None = None
) -> tuple[User, str, str]:
    """A user with a verified phone and 2FA on: (user, number, first backup code)."""
    user = await domain_user(services)
    phone = number or fresh_number()
    await verified_phone(services, user, phone, ip)
    backup = await enable_two_factor(services, user)
    return user, phone, backup


async def log_in(
    services: Services, username: str, ip: str | None = None, kind: ClientKind = ClientKind.WEB
) -> ChallengeView:
    async with services.uow() as work:
        outcome = await services.login.login(
            username, PASSWORD, Client(kind, None, ip or random_ip()), work
        )
    result = outcome.unwrap()
    assert isinstance(result, ChallengeView), result
    return result


async def request_sms(
    services: Services, challenge: ChallengeView, ip: str | None = None
) -> ChallengeView | DomainError:
    try:
        async with services.uow() as work:
            return await services.login.request_sms_code(
                str(challenge.id), challenge.token, ip or random_ip(), work
            )
    except DomainError as error:
        return error


async def attempt(
    services: Services, challenge: ChallengeView, method: TwoFactorMethod, code: str
) -> IssuedSession | DomainError:
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


def code_of(result: object) -> str:
    if isinstance(result, DomainError):
        return result.code
    if isinstance(result, IssuedSession):
        return SESSION
    return type(result).__name__


# GraphQL --------------------------------------------------------------------------------------


@asynccontextmanager
async def api_client(services: Services, ip: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The production-mode app over `services`, seen from its own client IP (S7 per-IP windows
    persist for the whole run)."""
    app = create_app(services.settings, services)
    transport = httpx.ASGITransport(app=app, client=(ip or random_ip(), 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def viewer_id(http: httpx.AsyncClient, token: str) -> UUID:
    return UUID((await data(http, PHONE_SETTINGS, token=token))["viewer"]["id"])


async def phone_settings(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    result: dict[str, Any] = (await data(http, PHONE_SETTINGS, token=token))["viewer"][
        "securitySettings"
    ]
    return result


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("errors"), body
    error: dict[str, Any] = body["errors"][0]
    return error


# Twilio webhooks ------------------------------------------------------------------------------


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """W1, written from API.md (not from the gateway's code): base64 HMAC-SHA1 of the URL and
    every parameter's name and value, sorted by name."""
    payload = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass
class Webhooks:
    services: Services
    http: httpx.AsyncClient

    async def post(
        self,
        path: str,
        params: dict[str, str],
        *,
        token: str | None = TWILIO_TOKEN,
        signature: str | None = None,
    ) -> httpx.Response:
        """Signed with `token` (None: no signature header) unless `signature` is given."""
        pairs = list(params.items())
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        url = self.services.settings.resolved_public_url() + path
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        elif token is not None:
            headers["X-Twilio-Signature"] = twilio_signature(token, url, pairs)
        return await self.http.post(path, content=urlencode(pairs).encode(), headers=headers)

    async def inbound(
        self,
        sender: str,
        body: str,
        *,
        to: str = SHORT_CODE,
        token: str | None = TWILIO_TOKEN,
        signature: str | None = None,
    ) -> httpx.Response:
        params = {
            "From": sender,
            "To": to,
            "Body": body,
            "MessageSid": "SM" + secrets.token_hex(16),
        }
        return await self.post(INBOUND_PATH, params, token=token, signature=signature)

    async def receipt(self, sid: str, status: str, error_code: str | None = None) -> httpx.Response:
        params = {"MessageSid": sid, "MessageStatus": status}
        if error_code is not None:
            params["ErrorCode"] = error_code
        return await self.post(STATUS_PATH, params)
