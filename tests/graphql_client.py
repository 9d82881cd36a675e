"""A small GraphQL-over-HTTP client speaking API.md, for the tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from gateway.accounts.clients import ClientKind
from gateway.app import create_app
from gateway.container import Services
from tests.secrets_seen import remember

PASSWORD = "correct horse battery"
remember({"password": PASSWORD})


class GraphQLError(AssertionError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors

    @property
    def code(self) -> str:
        return str(self.errors[0].get("extensions", {}).get("code"))


async def gql(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Returns the full JSON body (data and errors)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )
    body: dict[str, Any] = response.json()
    remember(variables or {})
    remember(body)
    return body


async def data(
    client: httpx.AsyncClient,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Returns `data`, raising GraphQLError when the answer has errors."""
    body = await gql(client, query, variables, token)
    if body.get("errors"):
        raise GraphQLError(body["errors"])
    result: dict[str, Any] = body["data"]
    return result


SIGN_UP = """
mutation($u: String!, $p: String!, $k: ClientKind!) {
  signUp(username: $u, password: $p, client: {kind: $k}) { token expiresAt clientKind }
}"""

LOGIN = """
mutation($u: String!, $p: String!, $k: ClientKind!) {
  login(username: $u, password: $p, client: {kind: $k}) {
    __typename
    ... on Session { token expiresAt clientKind }
    ... on LoginChallenge { id token status methods expiresAt matchNumber smsRetryAfterSeconds }
  }
}"""

VERIFY = """
mutation($id: ID!, $t: String!, $m: TwoFactorMethod!, $c: String!) {
  verifyLoginChallenge(id: $id, token: $t, method: $m, code: $c) { token clientKind }
}"""

BEGIN_TOTP = "mutation { beginTotpEnrollment { secret otpauthUri qrSvg } }"
CONFIRM_TOTP = "mutation($c: String!) { confirmTotpEnrollment(code: $c) { totpEnabled } }"
ENABLE_2FA = """
mutation { enableTwoFactor { settings { twoFactorEnabled methods backupCodesActive }
  backupCode { code sequence activeCount } } }"""
NEW_BACKUP_CODE = "mutation { newBackupCode { code sequence activeCount } }"
SETTINGS = """
query { viewer { id username securitySettings { twoFactorEnabled methods totpEnabled
  backupCodesActive temporaryPasswordExpiresAt phone { maskedNumber } devices { id } } } }"""


async def sign_up(
    client: httpx.AsyncClient, username: str, kind: ClientKind = ClientKind.WEB
) -> str:
    result = await data(client, SIGN_UP, {"u": username, "p": PASSWORD, "k": kind.value})
    token: str = result["signUp"]["token"]
    return token


@asynccontextmanager
async def app_client(services: Services, ip_address: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app over its own services and settings, seen from `ip_address`."""
    app = create_app(services.settings, services)
    transport = httpx.ASGITransport(app=app, client=(ip_address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def random_ip() -> str:
    """A fresh private address, so per-IP counters left by other tests or earlier runs on a
    shared Redis do not leak into this test."""
    return "10." + ".".join(str(b) for b in secrets.token_bytes(3))
