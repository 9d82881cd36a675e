"""G3: document limits, no batching, one code check per request, introspection and suggestions
off in production, GET cannot mutate, GraphiQL only in development."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pyotp
import pytest

from gateway.accounts.models import User
from gateway.app import create_app
from gateway.container import Services
from gateway.core.code_throttle import FactorThrottle
from gateway.login.models import ChallengeStatus, LoginChallenge
from gateway.settings import Environment, Settings
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

VERIFY_FIELD = (
    'verifyLoginChallenge(id: $id, token: $t, method: BACKUP_CODE, code: "{code}") {{ token }}'
)
WRONG_CODE = "0000-0000-0000"


@pytest.fixture
async def dev_client(settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"env": Environment.DEVELOPMENT}), services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def two_factor_user(client: httpx.AsyncClient, username: str) -> str:
    """Signs up with TOTP and 2FA on; returns the first backup code."""
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(enrollment["secret"]).now()}, token=token)
    enabled = (await data(client, ENABLE_2FA, token=token))["enableTwoFactor"]
    code: str = enabled["backupCode"]["code"]
    return code


async def open_challenge(client: httpx.AsyncClient, username: str) -> dict[str, Any]:
    login: dict[str, Any] = (await data(client, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))[
        "login"
    ]
    assert login["__typename"] == "LoginChallenge"
    return login


def codes_of(body: dict[str, Any]) -> list[str]:
    return [str(e.get("extensions", {}).get("code")) for e in body.get("errors") or []]


def assert_rejected(body: dict[str, Any]) -> None:
    codes = codes_of(body)
    assert codes, body
    assert set(codes) == {"QUERY_REJECTED"}, body
    assert not body.get("data"), body


async def assert_nothing_verified(
    client: httpx.AsyncClient, challenge: dict[str, Any], username: str, backup_code: str
) -> None:
    """No attempt was counted, and the right code still completes the challenge."""
    row = await LoginChallenge.get(id=UUID(challenge["id"]))
    assert row.wrong_attempts == 0
    assert row.status is ChallengeStatus.PENDING
    user = await User.get(username_key=username.casefold())
    assert not await FactorThrottle.filter(user_id=user.id, consecutive_failures__gt=0).exists()
    session = await data(
        client,
        VERIFY,
        {"id": challenge["id"], "t": challenge["token"], "m": "BACKUP_CODE", "c": backup_code},
    )
    assert session["verifyLoginChallenge"]["token"]


def aliased_verifications(count: int, valid_at: int, backup_code: str) -> str:
    fields = "\n".join(
        f"a{i}: " + VERIFY_FIELD.format(code=backup_code if i == valid_at else WRONG_CODE)
        for i in range(count)
    )
    return f"mutation($id: ID!, $t: String!) {{\n{fields}\n}}"


async def test_g3_hundred_aliased_verifications_are_rejected_before_execution(
    client: httpx.AsyncClient, username: str
) -> None:
    backup = await two_factor_user(client, username)
    challenge = await open_challenge(client, username)
    query = aliased_verifications(100, valid_at=50, backup_code=backup)
    body = await gql(client, query, {"id": challenge["id"], "t": challenge["token"]})
    await assert_nothing_verified(client, challenge, username, backup)
    assert_rejected(body)


async def test_g3_two_aliased_verifications_are_rejected_before_execution(
    client: httpx.AsyncClient, username: str
) -> None:
    backup = await two_factor_user(client, username)
    challenge = await open_challenge(client, username)
    query = aliased_verifications(2, valid_at=1, backup_code=backup)
    body = await gql(client, query, {"id": challenge["id"], "t": challenge["token"]})
    await assert_nothing_verified(client, challenge, username, backup)
    assert_rejected(body)


async def test_g3_verifications_in_two_fragments_are_rejected(
    client: httpx.AsyncClient, username: str
) -> None:
    backup = await two_factor_user(client, username)
    challenge = await open_challenge(client, username)
    query = (
        "mutation($id: ID!, $t: String!) { ...A ...B }\n"
        f"fragment A on Mutation {{ a: {VERIFY_FIELD.format(code=WRONG_CODE)} }}\n"
        f"fragment B on Mutation {{ b: {VERIFY_FIELD.format(code=backup)} }}\n"
    )
    body = await gql(client, query, {"id": challenge["id"], "t": challenge["token"]})
    await assert_nothing_verified(client, challenge, username, backup)
    assert_rejected(body)


async def test_g3_two_spreads_of_one_verifying_fragment_are_rejected(
    client: httpx.AsyncClient, username: str
) -> None:
    backup = await two_factor_user(client, username)
    challenge = await open_challenge(client, username)
    query = (
        "mutation($id: ID!, $t: String!) { ...V ... on Mutation { ...V } }\n"
        f"fragment V on Mutation {{ {VERIFY_FIELD.format(code=WRONG_CODE)} }}\n"
    )
    body = await gql(client, query, {"id": challenge["id"], "t": challenge["token"]})
    await assert_nothing_verified(client, challenge, username, backup)
    assert_rejected(body)


async def test_g3_array_batch_is_rejected_and_verifies_nothing(
    client: httpx.AsyncClient, username: str
) -> None:
    backup = await two_factor_user(client, username)
    challenge = await open_challenge(client, username)
    operations = [
        {
            "query": VERIFY,
            "variables": {
                "id": challenge["id"],
                "t": challenge["token"],
                "m": "BACKUP_CODE",
                "c": backup if i == 50 else WRONG_CODE,
            },
        }
        for i in range(100)
    ]
    response = await client.post("/graphql", json=operations)
    body = response.json()
    assert isinstance(body, dict)
    await assert_nothing_verified(client, challenge, username, backup)
    assert_rejected(body)


def nested_introspection(depth: int) -> str:
    """A valid query `depth` fields deep: __schema > types > fields > type > ofType... > name."""
    names = ["__schema", "types", "fields", "type"] + ["ofType"] * (depth - 5) + ["name"]
    assert len(names) == depth
    query = names[-1]
    for name in reversed(names[:-1]):
        query = f"{name} {{ {query} }}"
    return "{ " + query + " }"


async def test_g3_depth_over_ten_is_rejected(dev_client: httpx.AsyncClient) -> None:
    allowed = await gql(dev_client, nested_introspection(10))
    assert not allowed.get("errors"), allowed
    assert allowed["data"]["__schema"]["types"]
    assert_rejected(await gql(dev_client, nested_introspection(11)))


async def test_g3_more_than_fifteen_aliases_are_rejected(client: httpx.AsyncClient) -> None:
    def aliases(count: int) -> str:
        return "{ " + " ".join(f"v{i}: viewer {{ id }}" for i in range(count)) + " }"

    allowed = await gql(client, aliases(15))
    assert not allowed.get("errors"), allowed
    assert allowed["data"] == {f"v{i}": None for i in range(15)}
    assert_rejected(await gql(client, aliases(16)))


async def test_g3_more_than_two_thousand_tokens_are_rejected(client: httpx.AsyncClient) -> None:
    def operations(count: int) -> dict[str, Any]:
        """`count` operations of 7 tokens each: `query Qn { viewer { id } }`."""
        document = "\n".join(f"query Q{i} {{ viewer {{ id }} }}" for i in range(count))
        return {"query": document, "operationName": "Q0"}

    allowed = (await client.post("/graphql", json=operations(250))).json()  # 1,750 tokens
    assert allowed == {"data": {"viewer": None}}, allowed
    rejected = (await client.post("/graphql", json=operations(300))).json()  # 2,100 tokens
    assert_rejected(rejected)


async def test_g3_body_over_64_kb_is_rejected(client: httpx.AsyncClient, username: str) -> None:
    padding = "#" + "x" * (65 * 1024) + "\n"
    query = padding + "mutation($u: String!, $p: String!) { signUp(username: $u, password: $p, "
    query += "client: {kind: WEB}) { token } }"
    response = await client.post(
        "/graphql", json={"query": query, "variables": {"u": username, "p": PASSWORD}}
    )
    assert_rejected(response.json())
    assert not await User.exists(username_key=username.casefold())


async def test_g3_streamed_body_over_64_kb_without_length_is_rejected(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"query": "{ viewer { id } }", "pad": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    response = await client.post(
        "/graphql", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_rejected(response.json())


async def test_g3_introspection_is_refused_in_production(
    client: httpx.AsyncClient, dev_client: httpx.AsyncClient
) -> None:
    for query in ("{ __schema { types { name } } }", '{ __type(name: "Query") { name } }'):
        body = await gql(client, query)
        assert body.get("errors"), body
        assert not body.get("data"), body
    developed = await gql(dev_client, "{ __schema { types { name } } }")
    assert "Viewer" in {t["name"] for t in developed["data"]["__schema"]["types"]}


async def test_g3_field_suggestions_are_off_in_production(
    client: httpx.AsyncClient, dev_client: httpx.AsyncClient
) -> None:
    queries = ["{ viewr { id } }", "{ viewer { securitySettings { totpEnabld } } }"]
    for query in queries:
        body = await gql(client, query)
        assert body.get("errors"), body
        assert all("Did you mean" not in e["message"] for e in body["errors"]), body
        developed = await gql(dev_client, query)
        assert any("Did you mean" in e["message"] for e in developed["errors"]), developed


async def test_g3_argument_enum_and_type_suggestions_are_off_in_production(
    client: httpx.AsyncClient, dev_client: httpx.AsyncClient
) -> None:
    """Suggestions for arguments, enum values and types reveal the schema as field suggestions
    do, so with introspection off none of them may appear."""
    queries = [
        '{ loginChallenge(id: "x", tokn: "y") { id } }',
        'mutation { verifyLoginChallenge(id: "x", token: "y", method: TOTPP, code: "1") '
        "{ token } }",
        "query($x: Strin) { viewer { id } }",
    ]
    for query in queries:
        developed = await gql(dev_client, query)
        assert any("Did you mean" in e["message"] for e in developed["errors"]), developed
        body = await gql(client, query)
        assert body.get("errors"), body
        assert all("Did you mean" not in e["message"] for e in body["errors"]), body


async def test_g3_get_cannot_mutate(client: httpx.AsyncClient, username: str) -> None:
    query = (
        f'mutation {{ signUp(username: "{username}", password: "{PASSWORD}", '
        "client: {kind: WEB}) { token } }"
    )
    response = await client.get("/graphql", params={"query": query})
    assert response.status_code >= 400
    assert "token" not in response.text
    assert not await User.exists(username_key=username.casefold())
    # A query over GET is still answered: it is the mutation that is refused.
    answered = await client.get("/graphql", params={"query": "{ viewer { id } }"})
    assert answered.json() == {"data": {"viewer": None}}


async def test_g1_graphiql_is_served_only_in_development(
    client: httpx.AsyncClient, dev_client: httpx.AsyncClient
) -> None:
    html = {"accept": "text/html"}
    production = await client.get("/graphql", headers=html)
    assert production.status_code != 200
    assert "graphiql" not in production.text.lower()
    development = await dev_client.get("/graphql", headers=html)
    assert development.status_code == 200
    assert "graphiql" in development.text.lower()
