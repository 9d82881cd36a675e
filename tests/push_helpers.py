"""Helpers shared by the push tests (P1-P10, H4, H5, H6, L4, L5, A3, F2).

The app side is played the way API.md describes it: an IOS/ANDROID session enrolls a device with
a freshly generated Ed25519 key, lists its login requests over `viewer.loginRequests`, and signs
`{id}:{nonce}:APPROVE[:{matchNumber}]` or `{id}:{nonce}:DENY` with that key.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.app import create_app
from gateway.container import Services
from gateway.core.audit import SecurityEvent
from gateway.core.outbox import OutboxMessage
from gateway.factors.push.models import LoginRequest
from tests.fakes.fcm import FakeFcm
from tests.graphql_client import PASSWORD, data, gql

OK = "OK"

SIGN_UP = """
mutation($u: String!, $p: String!, $k: ClientKind!) {
  signUp(username: $u, password: $p, client: {kind: $k}) { token }
}"""
LOGIN = """
mutation($u: String!, $p: String!, $k: ClientKind!, $n: String) {
  login(username: $u, password: $p, client: {kind: $k, name: $n}) {
    __typename
    ... on Session { token clientKind }
    ... on LoginChallenge { id token status methods expiresAt matchNumber smsRetryAfterSeconds }
  }
}"""
ENROLL = """
mutation($n: String!, $p: Platform!, $t: String!, $k: String!) {
  enrollDevice(name: $n, platform: $p, pushToken: $t, publicKey: $k) {
    device { id name platform pushEnabled lastSeenAt createdAt }
    loginCodeSecret
  }
}"""
UPDATE_PUSH_TOKEN = """
mutation($d: ID!, $t: String!) {
  updatePushToken(deviceId: $d, pushToken: $t) { id name pushEnabled lastSeenAt }
}"""
REMOVE_DEVICE = """
mutation($d: ID!) {
  removeDevice(deviceId: $d) {
    twoFactorDisabled settings { twoFactorEnabled methods devices { id } }
  }
}"""
APPROVE = """
mutation($id: ID!, $s: String!, $m: Int) {
  approveLoginRequest(id: $id, signature: $s, matchNumber: $m) { id status }
}"""
DENY = """
mutation($id: ID!, $s: String!) { denyLoginRequest(id: $id, signature: $s) { id status } }"""
COMPLETE = """
mutation($id: ID!, $t: String!) {
  completeLoginChallenge(id: $id, token: $t) { token clientKind }
}"""
VERIFY = """
mutation($id: ID!, $t: String!, $m: TwoFactorMethod!, $c: String!) {
  verifyLoginChallenge(id: $id, token: $t, method: $m, code: $c) { token clientKind }
}"""
CHALLENGE = """
query($id: ID!, $t: String!) {
  loginChallenge(id: $id, token: $t) { id status methods matchNumber }
}"""
REQUEST_FIELDS = """
  id status nonce createdAt expiresAt browser ipAddress location matchNumberRequired
"""
REQUESTS_DEFAULT = (
    "query { viewer { loginRequests { edges { cursor node {"
    + REQUEST_FIELDS
    + "} } pageInfo { hasNextPage endCursor } } } }"
)
REQUESTS = (
    "query($s: LoginRequestStatus, $f: Int, $a: String) { viewer {"
    " loginRequests(status: $s, first: $f, after: $a) { edges { cursor node {"
    + REQUEST_FIELDS
    + "} } pageInfo { hasNextPage endCursor } } } }"
)
SETTINGS = """
query { viewer { id securitySettings { twoFactorEnabled methods totpEnabled
  devices { id name platform pushEnabled lastSeenAt createdAt } } } }"""
ENABLE_2FA = (
    "mutation { enableTwoFactor { settings { twoFactorEnabled methods } backupCode { code } } }"
)
BEGIN_TOTP = "mutation { beginTotpEnrollment { secret } }"
CONFIRM_TOTP = "mutation($c: String!) { confirmTotpEnrollment(code: $c) { totpEnabled } }"
LOGOUT = "mutation { logout }"
REAUTHENTICATE = "mutation($p: String!) { reauthenticate(password: $p) }"


def unique_username(prefix: str = "push") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def random_ip() -> str:
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))


def unique_push_token(prefix: str = "fcm") -> str:
    return f"{prefix}-{secrets.token_urlsafe(24)}"


# Keys and signatures -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKey:
    private: Ed25519PrivateKey

    @classmethod
    def new(cls) -> DeviceKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_b64(self) -> str:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()

    def sign(self, message: str) -> str:
        return base64.b64encode(self.private.sign(message.encode())).decode()

    def approve(self, request_id: str, nonce: str, match_number: int | None) -> str:
        if match_number is None:
            return self.sign(f"{request_id}:{nonce}:APPROVE")
        return self.sign(f"{request_id}:{nonce}:APPROVE:{match_number}")

    def deny(self, request_id: str, nonce: str) -> str:
        return self.sign(f"{request_id}:{nonce}:DENY")


# Accounts with devices -----------------------------------------------------------------------


@dataclass
class AppDevice:
    """One app install: its session token, its key and what enrollDevice answered."""

    token: str
    key: DeviceKey
    device_id: str
    login_code_secret: str
    push_token: str
    enrollment: dict[str, Any]


@dataclass
class PushAccount:
    username: str
    user_id: UUID
    apps: list[AppDevice]
    backup_code: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def app(self) -> AppDevice:
        return self.apps[0]


async def sign_up_as(http: httpx.AsyncClient, username: str, kind: str) -> str:
    result = await data(http, SIGN_UP, {"u": username, "p": PASSWORD, "k": kind})
    token: str = result["signUp"]["token"]
    return token


async def login(
    http: httpx.AsyncClient, username: str, kind: str = "WEB", name: str | None = "Firefox"
) -> dict[str, Any]:
    result: dict[str, Any] = (
        await data(http, LOGIN, {"u": username, "p": PASSWORD, "k": kind, "n": name})
    )["login"]
    return result


async def app_session(http: httpx.AsyncClient, username: str, kind: str = "IOS") -> str:
    """A further app session while 2FA is still off (L1)."""
    result = await login(http, username, kind, None)
    assert result["__typename"] == "Session", result
    token: str = result["token"]
    return token


async def enroll_body(
    http: httpx.AsyncClient,
    token: str,
    public_key: str,
    *,
    name: str = "iPhone",
    platform: str = "IOS",
    push_token: str | None = None,
) -> dict[str, Any]:
    variables = {
        "n": name,
        "p": platform,
        "t": push_token or unique_push_token(),
        "k": public_key,
    }
    return await gql(http, ENROLL, variables, token=token)


async def enroll(
    http: httpx.AsyncClient,
    token: str,
    *,
    name: str = "iPhone",
    platform: str = "IOS",
    push_token: str | None = None,
) -> AppDevice:
    key = DeviceKey.new()
    push = push_token or unique_push_token()
    body = await enroll_body(
        http, token, key.public_b64, name=name, platform=platform, push_token=push
    )
    assert not body.get("errors"), body
    enrollment: dict[str, Any] = body["data"]["enrollDevice"]
    return AppDevice(
        token=token,
        key=key,
        device_id=enrollment["device"]["id"],
        login_code_secret=enrollment["loginCodeSecret"],
        push_token=push,
        enrollment=enrollment,
    )


async def user_id_of(http: httpx.AsyncClient, token: str) -> UUID:
    return UUID((await data(http, SETTINGS, token=token))["viewer"]["id"])


async def enable_two_factor(http: httpx.AsyncClient, token: str) -> str:
    enabled = (await data(http, ENABLE_2FA, token=token))["enableTwoFactor"]
    assert enabled["settings"]["twoFactorEnabled"] is True
    code: str = enabled["backupCode"]["code"]
    return code


async def push_account(
    http: httpx.AsyncClient,
    username: str | None = None,
    *,
    devices: int = 1,
    push_tokens: list[str] | None = None,
    two_factor: bool = True,
) -> PushAccount:
    """Signs up from IOS, enrolls `devices` app installs (each its own app session), turns
    2FA on (the device is the verified method) and returns the first backup code."""
    name = username or unique_username()
    tokens = push_tokens or [unique_push_token() for _ in range(devices)]
    first = await sign_up_as(http, name, "IOS")
    apps: list[AppDevice] = []
    for index, push in enumerate(tokens):
        token = first if index == 0 else await app_session(http, name)
        apps.append(await enroll(http, token, name=f"phone {index}", push_token=push))
    backup = await enable_two_factor(http, first) if two_factor else None
    return PushAccount(name, await user_id_of(http, first), apps, backup)


# Login requests ------------------------------------------------------------------------------


async def login_requests(
    http: httpx.AsyncClient,
    token: str,
    *,
    status: str | None = "PENDING",
    first: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    variables: dict[str, Any] = {"s": status}
    if first is not None:
        variables["f"] = first
    if after is not None:
        variables["a"] = after
    connection: dict[str, Any] = (await data(http, REQUESTS, variables, token=token))["viewer"][
        "loginRequests"
    ]
    return connection


async def request_node(
    http: httpx.AsyncClient, token: str, challenge: dict[str, Any]
) -> dict[str, Any]:
    """The login request of `challenge`, as the app sees it in its list (any status)."""
    row = await LoginRequest.get(challenge_id=UUID(challenge["id"]))
    connection = await login_requests(http, token, status=None, first=100)
    for edge in connection["edges"]:
        if edge["node"]["id"] == str(row.id):
            node: dict[str, Any] = edge["node"]
            return node
    raise AssertionError(f"request {row.id} is not listed for the app")


async def approve(
    http: httpx.AsyncClient,
    app: AppDevice,
    node: dict[str, Any],
    match_number: int | None,
    *,
    signature: str | None = None,
    send_number: bool = True,
) -> dict[str, Any]:
    sig = (
        signature
        if signature is not None
        else app.key.approve(node["id"], node["nonce"], match_number)
    )
    variables: dict[str, Any] = {"id": node["id"], "s": sig}
    if send_number:
        variables["m"] = match_number
    return await gql(http, APPROVE, variables, token=app.token)


async def deny(
    http: httpx.AsyncClient,
    app: AppDevice,
    node: dict[str, Any],
    *,
    signature: str | None = None,
) -> dict[str, Any]:
    sig = signature if signature is not None else app.key.deny(node["id"], node["nonce"])
    return await gql(http, DENY, {"id": node["id"], "s": sig}, token=app.token)


async def complete(http: httpx.AsyncClient, challenge: dict[str, Any]) -> dict[str, Any]:
    return await gql(http, COMPLETE, {"id": challenge["id"], "t": challenge["token"]})


async def verify(
    http: httpx.AsyncClient, challenge: dict[str, Any], method: str, code: str
) -> dict[str, Any]:
    variables = {"id": challenge["id"], "t": challenge["token"], "m": method, "c": code}
    return await gql(http, VERIFY, variables)


async def challenge_view(http: httpx.AsyncClient, challenge: dict[str, Any]) -> dict[str, Any]:
    variables = {"id": challenge["id"], "t": challenge["token"]}
    view: dict[str, Any] = (await data(http, CHALLENGE, variables))["loginChallenge"]
    return view


async def settings_of(http: httpx.AsyncClient, token: str) -> dict[str, Any]:
    result: dict[str, Any] = (await data(http, SETTINGS, token=token))["viewer"]["securitySettings"]
    return result


def code_of(body: dict[str, Any]) -> str:
    """The error code of a GraphQL answer, or OK."""
    if body.get("errors"):
        return str(body["errors"][0].get("extensions", {}).get("code"))
    return OK


async def event_kinds(user_id: UUID) -> list[str]:
    rows = await SecurityEvent.filter(user_id=user_id).order_by("id")
    return [row.kind for row in rows]


async def outbox_rows(job_name: str, **payload: str) -> list[OutboxMessage]:
    rows = await OutboxMessage.filter(job_name=job_name).order_by("created_at")
    return [r for r in rows if all(r.payload.get(k) == v for k, v in payload.items())]


@asynccontextmanager
async def api(services: Services, ip: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over `services` (its own clock or settings), seen from `ip`."""
    app = create_app(services.settings, services)
    transport = httpx.ASGITransport(app=app, client=(ip or random_ip(), 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def fcm_overrides(fcm: FakeFcm, directory: Path, project_id: str | None = None) -> dict[str, Any]:
    """Settings that point the push worker at `fcm`, with its service account in `directory`."""
    return {
        "fcm_credentials": fcm.write_service_account(directory / "service-account.json"),
        "fcm_endpoint": fcm.endpoint,
        "fcm_project_id": project_id or fcm.project_id,
    }
