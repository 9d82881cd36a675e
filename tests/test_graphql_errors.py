"""G1 (the checked-in SDL and API.md's contract), G2 (stable error codes, no stack traces, bad
input changes nothing) and G4 (bearer authentication over HTTP)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import graphql
import httpx
import pyotp
import pytest
from strawberry.types import ExecutionResult

from gateway.accounts.models import User
from gateway.container import Services
from gateway.core.code_throttle import FactorThrottle
from gateway.core.events import EventHub
from gateway.factors.sms.models import Phone, SmsMessage
from gateway.graphql.schema import build_schema
from gateway.graphql.view import KanmonGraphQL
from gateway.login.models import ChallengeStatus, LoginChallenge
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    SIGN_UP,
    VERIFY,
    data,
    gql,
    sign_up,
)
from tests.push_helpers import push_account
from tests.sms_helpers import ADD_PHONE, fresh_number

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schema.graphql"

# API.md's contract for the first half (accounts, login challenges, TOTP, backup codes,
# temporary passwords, settings and audit), as written there.
API_FIRST_HALF = """
scalar DateTime
enum ClientKind { WEB MOBILE_WEB IOS ANDROID THIRD_PARTY }
enum TwoFactorMethod { PUSH SMS TOTP APP_CODE BACKUP_CODE }
enum ChallengeStatus { PENDING APPROVED DENIED EXPIRED LOCKED COMPLETED }
enum Platform { IOS ANDROID }
input ClientInput { kind: ClientKind!  name: String }
type Session { token: String!  expiresAt: DateTime!  clientKind: ClientKind! }
type LoginChallenge {
  id: ID!
  token: String!
  status: ChallengeStatus!
  methods: [TwoFactorMethod!]!
  expiresAt: DateTime!
  matchNumber: Int
  smsRetryAfterSeconds: Int
}
union LoginResult = Session | LoginChallenge
type Phone { maskedNumber: String!  verified: Boolean!  carrier: String  smsPaused: Boolean! }
type Device { id: ID!  name: String!  platform: Platform!  pushEnabled: Boolean!
  lastSeenAt: DateTime  createdAt: DateTime! }
type SecuritySettings {
  twoFactorEnabled: Boolean!
  methods: [TwoFactorMethod!]!
  phone: Phone
  totpEnabled: Boolean!
  devices: [Device!]!
  backupCodesActive: Int!
  temporaryPasswordExpiresAt: DateTime
}
type SecurityEvent { id: ID!  kind: String!  createdAt: DateTime!  detail: String }
type PageInfo { hasNextPage: Boolean!  endCursor: String }
type SecurityEventEdge { node: SecurityEvent!  cursor: String! }
type SecurityEventConnection { edges: [SecurityEventEdge!]!  pageInfo: PageInfo! }
type Viewer {
  id: ID!
  username: String!
  securitySettings: SecuritySettings!
  securityEvents(first: Int = 20, after: String): SecurityEventConnection!
}
type TotpEnrollment { secret: String!  otpauthUri: String!  qrSvg: String! }
type BackupCode { code: String!  sequence: Int!  activeCount: Int! }
type TemporaryPassword { password: String!  expiresAt: DateTime! }
type TwoFactorEnabled { settings: SecuritySettings!  backupCode: BackupCode! }
type SettingsChange { settings: SecuritySettings!  twoFactorDisabled: Boolean! }
type Query {
  viewer: Viewer
  loginChallenge(id: ID!, token: String!): LoginChallenge!
}
type Mutation {
  signUp(username: String!, password: String!, client: ClientInput!): Session!
  login(username: String!, password: String!, client: ClientInput!): LoginResult!
  verifyLoginChallenge(id: ID!, token: String!, method: TwoFactorMethod!, code: String!): Session!
  logout: Boolean!
  reauthenticate(password: String!): Boolean!
  beginTotpEnrollment: TotpEnrollment!
  confirmTotpEnrollment(code: String!): SecuritySettings!
  removeTotp: SettingsChange!
  enableTwoFactor: TwoFactorEnabled!
  disableTwoFactor: SecuritySettings!
  newBackupCode: BackupCode!
  createTemporaryPassword: TemporaryPassword!
}
"""

PROTECTED_MUTATIONS = [
    "mutation { beginTotpEnrollment { secret } }",
    'mutation { confirmTotpEnrollment(code: "123456") { totpEnabled } }',
    "mutation { removeTotp { twoFactorDisabled } }",
    "mutation { enableTwoFactor { backupCode { code } } }",
    "mutation { disableTwoFactor { twoFactorEnabled } }",
    "mutation { newBackupCode { code } }",
    "mutation { createTemporaryPassword { password } }",
    f'mutation {{ reauthenticate(password: "{PASSWORD}") }}',
]


def expected_schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(API_FIRST_HALF)


def committed_schema() -> graphql.GraphQLSchema:
    return graphql.build_schema(SCHEMA_FILE.read_text())


def codes_of(body: dict[str, Any]) -> list[str]:
    return [str(e.get("extensions", {}).get("code")) for e in body.get("errors") or []]


def assert_no_trace(body: dict[str, Any]) -> None:
    for error in body.get("errors") or []:
        assert "Traceback" not in error["message"], error
        assert 'File "' not in error["message"], error
        assert "Traceback" not in str(error.get("extensions", {})), error


def assert_bad_input(body: dict[str, Any]) -> None:
    assert codes_of(body), body
    assert set(codes_of(body)) == {"BAD_USER_INPUT"}, body
    assert_no_trace(body)


async def two_factor_challenge(
    client: httpx.AsyncClient, username: str
) -> tuple[dict[str, Any], str]:
    """A user with TOTP and 2FA on, and an open login challenge; returns it and a backup code."""
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(enrollment["secret"]).now()}, token=token)
    backup: str = (await data(client, ENABLE_2FA, token=token))["enableTwoFactor"]["backupCode"][
        "code"
    ]
    login: dict[str, Any] = (await data(client, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}))[
        "login"
    ]
    assert login["__typename"] == "LoginChallenge"
    return login, backup


async def assert_challenge_untouched(
    client: httpx.AsyncClient, challenge: dict[str, Any], username: str, backup: str
) -> None:
    row = await LoginChallenge.get(id=UUID(challenge["id"]))
    assert row.wrong_attempts == 0
    assert row.status is ChallengeStatus.PENDING
    user = await User.get(username_key=username.casefold())
    assert not await FactorThrottle.filter(user_id=user.id, consecutive_failures__gt=0).exists()
    done = await data(
        client,
        VERIFY,
        {"id": challenge["id"], "t": challenge["token"], "m": "BACKUP_CODE", "c": backup},
    )
    assert done["verifyLoginChallenge"]["token"]


# --- G1 -----------------------------------------------------------------------------------


def test_g1_exported_schema_matches_committed_schema_graphql() -> None:
    exported = str(build_schema(development=True)).rstrip() + "\n"
    assert exported == SCHEMA_FILE.read_text()


def test_g1_production_schema_has_the_same_sdl() -> None:
    assert str(build_schema(development=False)) == str(build_schema(development=True))


def test_g1_schema_graphql_names_every_type_field_and_operation_of_api_md() -> None:
    expected = expected_schema()
    actual = committed_schema()
    missing: list[str] = []
    for name, wanted in expected.type_map.items():
        if name.startswith("__") or name in graphql.specified_scalar_types:
            continue
        found = actual.type_map.get(name)
        if found is None or type(found) is not type(wanted):
            missing.append(f"type {name}")
            continue
        if isinstance(wanted, graphql.GraphQLEnumType):
            assert isinstance(found, graphql.GraphQLEnumType)
            missing += [f"{name}.{v}" for v in wanted.values if v not in found.values]
        elif isinstance(wanted, graphql.GraphQLUnionType):
            assert isinstance(found, graphql.GraphQLUnionType)
            members = {t.name for t in found.types}
            missing += [f"{name} | {t.name}" for t in wanted.types if t.name not in members]
        elif isinstance(wanted, graphql.GraphQLObjectType | graphql.GraphQLInputObjectType):
            assert isinstance(found, graphql.GraphQLObjectType | graphql.GraphQLInputObjectType)
            for field_name, field in wanted.fields.items():
                if field_name not in found.fields:
                    missing.append(f"{name}.{field_name}")
                    continue
                args = getattr(field, "args", {})
                found_args = getattr(found.fields[field_name], "args", {})
                missing += [f"{name}.{field_name}({a})" for a in args if a not in found_args]
    assert missing == []


def test_g1_schema_graphql_keeps_api_md_field_and_argument_types() -> None:
    expected = expected_schema()
    actual = committed_schema()
    differences: list[str] = []
    for name, wanted in expected.type_map.items():
        if not isinstance(wanted, graphql.GraphQLObjectType | graphql.GraphQLInputObjectType):
            continue
        if name.startswith("__"):
            continue
        found = actual.type_map[name]
        assert isinstance(found, graphql.GraphQLObjectType | graphql.GraphQLInputObjectType)
        for field_name, field in wanted.fields.items():
            got = found.fields[field_name]
            if str(got.type) != str(field.type):
                differences.append(f"{name}.{field_name}: {got.type} != {field.type}")
            for arg_name, arg in getattr(field, "args", {}).items():
                got_arg = got.args[arg_name]  # type: ignore[union-attr]
                if str(got_arg.type) != str(arg.type):
                    differences.append(
                        f"{name}.{field_name}({arg_name}): {got_arg.type} != {arg.type}"
                    )
    assert differences == []


# --- G2 -----------------------------------------------------------------------------------


async def test_g2_malformed_challenge_id_is_bad_user_input(client: httpx.AsyncClient) -> None:
    body = await gql(client, VERIFY, {"id": "not-a-uuid", "t": "token", "m": "TOTP", "c": "123456"})
    assert_bad_input(body)
    assert not body.get("data")
    query = 'query($id: ID!) { loginChallenge(id: $id, token: "x") { id } }'
    assert_bad_input(await gql(client, query, {"id": "not-a-uuid"}))


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


EVENT_PAGE = (
    "query($a: String) { viewer { securityEvents(first: 3, after: $a) { edges { cursor } } } }"
)
REQUEST_PAGE = "query($a: String) { viewer { loginRequests(after: $a) { edges { cursor } } } }"
SOME_ID = "7d4c1c52-7a5e-4f0e-9a8e-3f9f1f4d2b11"


@pytest.mark.parametrize(
    ("page", "after"),
    [
        (EVENT_PAGE, cursor("event:99999999999999999999999")),
        (EVENT_PAGE, cursor("event:9223372036854775808")),
        (EVENT_PAGE, cursor("event:" + "0" * 20 + "9" * 20)),
        (EVENT_PAGE, cursor("event:" + "9" * 5000)),
        (EVENT_PAGE, cursor("event:\u00b2")),
        (EVENT_PAGE, cursor("event:-1")),
        (EVENT_PAGE, "not base64 at all"),
        (REQUEST_PAGE, cursor(f"request:2026-01-01T00:00:00|{SOME_ID}")),
        (REQUEST_PAGE, cursor(f"request:0001-01-01T00:00:00+14:00|{SOME_ID}")),
        (REQUEST_PAGE, cursor("request:2026-01-01T00:00:00+00:00|not-a-uuid")),
        (REQUEST_PAGE, cursor("event:12")),
    ],
)
async def test_g2_forged_page_cursors_are_bad_user_input(
    client: httpx.AsyncClient, page: str, after: str
) -> None:
    account = await push_account(client, two_factor=False)
    body = await gql(client, page, {"a": after}, token=account.app.token)
    assert_bad_input(body)
    assert body["errors"][0]["message"] == "Malformed cursor."


async def test_g2_malformed_id_counts_no_attempt_on_a_real_challenge(
    client: httpx.AsyncClient, username: str
) -> None:
    challenge, backup = await two_factor_challenge(client, username)
    body = await gql(
        client, VERIFY, {"id": "not-a-uuid", "t": challenge["token"], "m": "TOTP", "c": "1"}
    )
    assert_bad_input(body)
    await assert_challenge_untouched(client, challenge, username, backup)


async def test_g2_huge_username_is_bad_user_input_and_creates_nothing(
    client: httpx.AsyncClient, username: str
) -> None:
    huge = username + "a" * 10_000
    users_before = await User.all().count()
    body = await gql(client, SIGN_UP, {"u": huge, "p": PASSWORD, "k": "WEB"})
    assert_bad_input(body)
    login = await gql(client, LOGIN, {"u": huge, "p": PASSWORD, "k": "WEB"})
    assert_bad_input(login)
    assert await User.all().count() == users_before
    assert not await User.exists(username__startswith=username)


async def test_g2_huge_code_is_bad_user_input_and_counts_no_attempt(
    client: httpx.AsyncClient, username: str
) -> None:
    challenge, backup = await two_factor_challenge(client, username)
    for method in ("TOTP", "BACKUP_CODE"):
        body = await gql(
            client,
            VERIFY,
            {"id": challenge["id"], "t": challenge["token"], "m": method, "c": "1" * 10_000},
        )
        assert_bad_input(body)
    await assert_challenge_untouched(client, challenge, username, backup)


async def test_g2_huge_password_at_reauthenticate_is_bad_user_input_and_counts_no_attempt(
    client: httpx.AsyncClient, username: str
) -> None:
    """As at login: an oversize password is refused for its shape, not as a wrong password, so
    more of them than the per-account window allows leave the right password working."""
    token = await sign_up(client, username)
    reauthenticate = "mutation($p: String!) { reauthenticate(password: $p) }"
    for _ in range(11):
        body = await gql(client, reauthenticate, {"p": PASSWORD + "x" * 10_000}, token=token)
        assert_bad_input(body)
    assert await data(client, reauthenticate, {"p": PASSWORD}, token=token) == {
        "reauthenticate": True
    }


async def test_g2_huge_code_at_enrollment_is_bad_user_input_and_counts_no_attempt(
    client: httpx.AsyncClient, username: str
) -> None:
    """confirmTotpEnrollment and verifyPhone refuse an oversize code as verifyLoginChallenge
    does: BAD_USER_INPUT, not a wrong code, and no failure counted."""
    token = await sign_up(client, username)
    enrollment = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]
    huge = "1" * 10_000
    assert_bad_input(await gql(client, CONFIRM_TOTP, {"c": huge}, token=token))
    await data(client, CONFIRM_TOTP, {"c": pyotp.TOTP(enrollment["secret"]).now()}, token=token)
    await data(client, ADD_PHONE, {"n": fresh_number()}, token=token)
    verify_phone = "mutation($c: String!) { verifyPhone(code: $c) { verified } }"
    assert_bad_input(await gql(client, verify_phone, {"c": huge}, token=token))
    user = await User.get(username_key=username.casefold())
    assert not await FactorThrottle.filter(user_id=user.id, consecutive_failures__gt=0).exists()


async def test_g2_nul_characters_in_text_are_bad_user_input_and_change_nothing(
    client: httpx.AsyncClient, username: str
) -> None:
    """PostgreSQL's text cannot hold U+0000: such an argument used to fail deep in a resolver
    as SERVICE_UNAVAILABLE, after an S7 send had been counted. In a variable or as a literal's
    escape, it is refused before anything runs."""
    users_before = await User.all().count()
    assert_bad_input(
        await gql(client, SIGN_UP, {"u": username + "\x00", "p": PASSWORD, "k": "WEB"})
    )
    assert_bad_input(await gql(client, LOGIN, {"u": "a\x00", "p": PASSWORD, "k": "WEB"}))
    literal = (
        'mutation { login(username: "a\\u0000b", password: "p", client: {kind: WEB})'
        " { __typename } }"
    )
    assert_bad_input(await gql(client, literal))
    assert await User.all().count() == users_before

    token = await sign_up(client, username)
    number = fresh_number()
    body = await gql(client, ADD_PHONE, {"n": number, "c": "ab\x00c"}, token=token)
    assert_bad_input(body)
    assert await Phone.filter(number=number).count() == 0
    assert await SmsMessage.filter(to_number=number).count() == 0
    other = f"{username}_2fa"
    challenge, backup = await two_factor_challenge(client, other)
    body = await gql(
        client,
        VERIFY,
        {"id": challenge["id"], "t": challenge["token"], "m": "TOTP", "c": "12\x003456"},
    )
    assert_bad_input(body)
    await assert_challenge_untouched(client, challenge, other, backup)


async def test_g2_wrong_variable_types_are_bad_user_input_and_change_nothing(
    client: httpx.AsyncClient, username: str
) -> None:
    users_before = await User.all().count()
    for variables in (
        {"u": username, "p": 12345678, "k": "WEB"},
        {"u": 42, "p": PASSWORD, "k": "WEB"},
        {"u": username, "p": PASSWORD, "k": "DESKTOP"},
        {"u": [username], "p": PASSWORD, "k": "WEB"},
    ):
        assert_bad_input(await gql(client, SIGN_UP, variables))
    assert await User.all().count() == users_before

    other = f"{username}_2fa"
    challenge, backup = await two_factor_challenge(client, other)
    for variables in (
        {"id": challenge["id"], "t": challenge["token"], "m": "BACKUP_CODE", "c": 123456},
        {"id": challenge["id"], "t": challenge["token"], "m": "NOPE", "c": "123456"},
        {"id": challenge["id"], "t": None, "m": "TOTP", "c": "123456"},
        {"id": {"x": 1}, "t": challenge["token"], "m": "TOTP", "c": "123456"},
    ):
        assert_bad_input(await gql(client, VERIFY, variables))
    await assert_challenge_untouched(client, challenge, other, backup)


async def test_g2_syntax_error_has_a_stable_code_and_no_trace(
    client: httpx.AsyncClient,
) -> None:
    body = await gql(client, "mutation { verifyLoginChallenge(id: ")
    assert_no_trace(body)
    assert codes_of(body) == ["BAD_USER_INPUT"], body


def _failing_step() -> None:
    raise RuntimeError("connection pool exhausted at step 7")


async def answer_to_failure(services: Services, failure: Exception, field: str) -> dict[str, Any]:
    """What the production view answers for an operation whose `field` raised `failure`."""
    error = graphql.GraphQLError(str(failure), original_error=failure, path=[field])
    view = KanmonGraphQL(
        services,
        EventHub(services.redis),
        development=False,
        schema=build_schema(development=False),
    )
    answer = await view.process_result(None, ExecutionResult(data=None, errors=[error]))  # type: ignore[arg-type]
    return dict(answer)


async def test_g2_an_unexpected_failure_is_masked_as_internal_and_logged_with_its_traceback(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer says nothing of the failure; the log keeps all of it, traceback included,
    although the answer's errors drop their tracebacks afterwards (no reference cycles)."""
    try:
        _failing_step()
    except RuntimeError as exc:
        failure = exc
    with caplog.at_level(logging.ERROR, logger="gateway.graphql"):
        body = await answer_to_failure(services, failure, "viewer")

    assert body["errors"] == [
        {
            "message": "Internal server error.",
            "path": ["viewer"],
            "extensions": {"code": "INTERNAL"},
        }
    ]
    assert "pool exhausted" not in json.dumps(body)
    [record] = [r for r in caplog.records if r.name == "gateway.graphql"]
    assert record.exc_info is not None
    assert record.exc_info[1] is failure
    logged = logging.Formatter().formatException(record.exc_info)
    assert "_failing_step" in logged
    assert "pool exhausted at step 7" in logged
    assert failure.__traceback__ is None


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    ],
)
async def test_g2_postgresql_stopping_or_starting_is_service_unavailable(
    services: Services, failure: Exception
) -> None:
    """asyncpg raises these itself while PostgreSQL shuts down, starts up or drops a
    connection: clients that retry on SERVICE_UNAVAILABLE must see that, not INTERNAL."""
    body = await answer_to_failure(services, failure, "login")
    assert codes_of(body) == ["SERVICE_UNAVAILABLE"], body
    assert_no_trace(body)


async def test_g2_unknown_challenge_is_not_found_without_trace(
    client: httpx.AsyncClient,
) -> None:
    body = await gql(
        client,
        VERIFY,
        {"id": "00000000-0000-4000-8000-000000000000", "t": "x", "m": "TOTP", "c": "123456"},
    )
    assert codes_of(body) == ["NOT_FOUND"]
    assert_no_trace(body)


# --- G4 -----------------------------------------------------------------------------------


def bad_headers(token: str) -> list[dict[str, str]]:
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer garbage"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {'a' * 5000}"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ]


async def post(client: httpx.AsyncClient, query: str, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query}, headers=headers)
    body: dict[str, Any] = response.json()
    return body


async def test_g4_missing_garbage_or_basic_authorization_gives_no_viewer(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    query = "{ viewer { username } }"
    ok = await post(client, query, {"Authorization": f"Bearer {token}"})
    assert ok == {"data": {"viewer": {"username": username}}}
    for headers in bad_headers(token):
        assert await post(client, query, headers) == {"data": {"viewer": None}}, headers


@pytest.mark.parametrize("mutation", PROTECTED_MUTATIONS)
async def test_g4_protected_mutations_without_a_valid_bearer_are_unauthenticated(
    client: httpx.AsyncClient, username: str, mutation: str
) -> None:
    token = await sign_up(client, username)
    for headers in bad_headers(token):
        body = await post(client, mutation, headers)
        assert codes_of(body) == ["UNAUTHENTICATED"], (headers, body)
        assert not body.get("data"), body
    settings = await post(
        client,
        "{ viewer { securitySettings { totpEnabled twoFactorEnabled } } }",
        {"Authorization": f"Bearer {token}"},
    )
    assert settings["data"]["viewer"]["securitySettings"] == {
        "totpEnabled": False,
        "twoFactorEnabled": False,
    }


async def test_g4_logout_with_a_bad_bearer_returns_false_and_keeps_the_session(
    client: httpx.AsyncClient, username: str
) -> None:
    token = await sign_up(client, username)
    for headers in bad_headers(token):
        assert await post(client, "mutation { logout }", headers) == {"data": {"logout": False}}
    still = await post(client, "{ viewer { username } }", {"Authorization": f"Bearer {token}"})
    assert still == {"data": {"viewer": {"username": username}}}


# G2: what is refused before GraphQL begins is still a GraphQL error with a code ---------------

NESTED = (
    '{"query": "{ __typename }", "variables": {"a": ' + '{"a": ' * 5000 + "1" + "}" * 5001 + "}"
)


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json", "{}", 400),
        ("application/json", '{"query": "{ __typename }", "variables": "x"}', 400),
        ("application/json", '{"query": "query A { __typename }", "operationName": "C"}', 400),
        ("application/json", "{bad", 400),
        ("application/json", '"a string"', 400),
        ("application/json", NESTED, 400),
        ("text/plain", '{"query": "{ __typename }"}', 400),
        ("application/x-www-form-urlencoded", "query=%7B__typename%7D", 400),
    ],
)
async def test_g2_a_request_refused_before_parsing_is_bad_user_input_as_json(
    client: httpx.AsyncClient, content_type: str, body: str, status: int
) -> None:
    assert len(body) < 64 * 1024
    response = await client.post(
        "/graphql", content=body.encode(), headers={"content-type": content_type}
    )
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert_bad_input(response.json())


@pytest.mark.parametrize(
    "params",
    [
        {"query": "mutation { logout }"},
        {"query": "{ __typename }", "variables": "[" * 5000 + "]" * 5000},
    ],
)
async def test_g2_a_refused_get_is_bad_user_input_as_json(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/graphql", params=params)
    assert response.status_code == 400
    assert_bad_input(response.json())


@pytest.mark.parametrize(
    "subscription",
    [
        'subscription { loginChallenge(id: "7d4c1c52-7a5e-4f0e-9a8e-3f9f1f4d2b11", token: "x")'
        " { status } }",
        "subscription { loginRequests { id } }",
    ],
)
async def test_g2_a_subscription_over_http_is_bad_user_input(
    client: httpx.AsyncClient, subscription: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway"):
        body = await gql(client, subscription)
    assert_bad_input(body)
    assert "websocket" in body["errors"][0]["message"]
    assert not body.get("data")
    assert not caplog.records


async def test_g3_a_document_too_costly_to_validate_is_query_rejected(
    client: httpx.AsyncClient,
) -> None:
    """Within the token limit, but hundreds of the same field make graphql-core's comparison
    of fields give up: the limits' code, not a bad input."""
    body = await gql(client, "{ " + "__typename " * 900 + "}")
    assert codes_of(body) == ["QUERY_REJECTED"], body
    assert_no_trace(body)


async def test_g2_several_operations_without_an_operation_name_are_bad_user_input(
    client: httpx.AsyncClient,
) -> None:
    """The GraphQL spec's rule: nothing runs, not even the first operation."""
    document = "query A { __typename } mutation B { logout }"
    body = await gql(client, document)
    assert_bad_input(body)
    assert "operation name" in body["errors"][0]["message"]
    named = await client.post("/graphql", json={"query": document, "operationName": "A"})
    assert named.json() == {"data": {"__typename": "Query"}}
