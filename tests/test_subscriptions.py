"""Live subscriptions end to end (P3, P5, G4): real `kanmon serve` processes on the suite's
database and Redis, a real `kanmon worker` for expiry, and graphql-transport-ws clients.

The web client and the app talk to different gateway processes, so every live update here
crosses Redis pub/sub between processes, as it does behind a load balancer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from arq.connections import ArqRedis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.accounts.clients import ClientKind
from gateway.graphql.limits import MAX_BODY_BYTES
from gateway.graphql.sockets import MAX_OPERATIONS_PER_SOCKET
from gateway.settings import Settings
from tests.gateway_processes import (
    Gateway,
    redis_client_ports,
    running_gateways,
    running_worker,
)
from tests.graphql_client import PASSWORD, data, gql, sign_up
from tests.ws_client import GraphQLSocket, Subscription, graphql_socket, open_socket

LOGIN_CHALLENGE = """
subscription($id: ID!, $t: String!) {
  loginChallenge(id: $id, token: $t) { id status matchNumber methods expiresAt }
}"""
LOGIN_REQUESTS = """
subscription { loginRequests { id status nonce matchNumberRequired browser expiresAt } }"""

ENROLL = """
mutation($k: String!) {
  enrollDevice(name: "iPhone", platform: IOS, pushToken: "fcm-token", publicKey: $k) {
    device { id pushEnabled }
  }
}"""
ENABLE = "mutation { enableTwoFactor { settings { twoFactorEnabled methods } } }"
WEB_LOGIN = """
mutation($u: String!, $p: String!) {
  login(username: $u, password: $p, client: {kind: WEB, name: "Firefox"}) {
    __typename
    ... on LoginChallenge { id token status methods matchNumber expiresAt }
  }
}"""
REQUESTS = """
query($s: LoginRequestStatus) {
  viewer { loginRequests(status: $s) { edges { node { id nonce status matchNumberRequired } } } }
}"""
APPROVE = """
mutation($id: ID!, $s: String!, $m: Int) {
  approveLoginRequest(id: $id, signature: $s, matchNumber: $m) { id status }
}"""
DENY = "mutation($id: ID!, $s: String!) { denyLoginRequest(id: $id, signature: $s) { id status } }"
COMPLETE = """
mutation($id: ID!, $t: String!) {
  completeLoginChallenge(id: $id, token: $t) { token clientKind }
}"""
VIEWER = "query { viewer { username } }"


@dataclass
class AppUser:
    """A user with 2FA on through one enrolled iPhone; `token` is that app's session."""

    username: str
    token: str
    key: Ed25519PrivateKey

    def sign(self, message: str) -> str:
        return base64.b64encode(self.key.sign(message.encode())).decode()


@dataclass
class Challenge:
    id: str
    token: str
    match_number: int

    @property
    def variables(self) -> dict[str, Any]:
        return {"id": self.id, "t": self.token}


@pytest.fixture(scope="module")
async def gateways(settings: Settings, redis: ArqRedis) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Gateways A and B: two `kanmon serve` processes (`redis` first: it empties the test
    database before anything runs on it)."""
    async with running_gateways(settings, 2) as (first, second):
        yield first, second


@pytest.fixture
async def http_a(gateways: tuple[Gateway, Gateway]) -> AsyncIterator[httpx.AsyncClient]:
    async with gateways[0].http() as http:
        yield http


@pytest.fixture
async def http_b(gateways: tuple[Gateway, Gateway]) -> AsyncIterator[httpx.AsyncClient]:
    async with gateways[1].http() as http:
        yield http


async def prepare_user(http: httpx.AsyncClient) -> AppUser:
    """Sign up from the app, enroll its device, turn 2FA on (P1, F1)."""
    username = f"user_{uuid.uuid4().hex[:12]}"
    token = await sign_up(http, username, ClientKind.IOS)
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    enrolled = await data(http, ENROLL, {"k": base64.b64encode(public).decode()}, token=token)
    assert enrolled["enrollDevice"]["device"]["pushEnabled"] is True
    enabled = await data(http, ENABLE, token=token)
    assert enabled["enableTwoFactor"]["settings"]["twoFactorEnabled"] is True
    return AppUser(username, token, key)


async def web_login(http: httpx.AsyncClient, user: AppUser) -> Challenge:
    """L2, L4: the right password from the web gives a push challenge with a match number."""
    result = await data(http, WEB_LOGIN, {"u": user.username, "p": PASSWORD})
    login = result["login"]
    assert login["__typename"] == "LoginChallenge"
    assert login["status"] == "PENDING"
    assert login["methods"][0] == "PUSH"
    assert 10 <= login["matchNumber"] <= 99
    return Challenge(login["id"], login["token"], login["matchNumber"])


async def pending_requests(http: httpx.AsyncClient, user: AppUser) -> list[dict[str, Any]]:
    result = await data(http, REQUESTS, {"s": "PENDING"}, token=user.token)
    return [edge["node"] for edge in result["viewer"]["loginRequests"]["edges"]]


async def only_pending_request(http: httpx.AsyncClient, user: AppUser) -> dict[str, Any]:
    found = await pending_requests(http, user)
    assert len(found) == 1, found
    return found[0]


async def approve(
    http: httpx.AsyncClient, user: AppUser, request: dict[str, Any], match_number: int
) -> dict[str, Any]:
    """P4: the device signs `{id}:{nonce}:APPROVE:{matchNumber}`."""
    signature = user.sign(f"{request['id']}:{request['nonce']}:APPROVE:{match_number}")
    result = await data(
        http, APPROVE, {"id": request["id"], "s": signature, "m": match_number}, token=user.token
    )
    approved: dict[str, Any] = result["approveLoginRequest"]
    return approved


async def deny(http: httpx.AsyncClient, user: AppUser, request: dict[str, Any]) -> dict[str, Any]:
    signature = user.sign(f"{request['id']}:{request['nonce']}:DENY")
    result = await data(http, DENY, {"id": request["id"], "s": signature}, token=user.token)
    denied: dict[str, Any] = result["denyLoginRequest"]
    return denied


def error_code(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    assert errors, body
    return str(errors[0]["extensions"]["code"])


async def challenge_update(subscription: Subscription, seconds: float = 20.0) -> dict[str, Any]:
    update: dict[str, Any] = (await subscription.next(seconds))["loginChallenge"]
    return update


async def request_update(subscription: Subscription, seconds: float = 20.0) -> dict[str, Any]:
    update: dict[str, Any] = (await subscription.next(seconds))["loginRequests"]
    return update


async def refusal(subscription: Subscription) -> tuple[str, list[str]]:
    """How an operation was refused: the message type and the errors' codes. The contract
    (API.md, "Websocket auth") wants an `error` message; a `next` carrying only errors (then
    `complete`) is reported as "next", so a failing assertion shows which one came."""
    message = await subscription.receive()
    if message.type == "error":
        errors = message.payload
    elif message.type == "next":
        errors = message.payload.get("errors") or []
    else:
        return message.type, []
    return message.type, [str(error.get("extensions", {}).get("code")) for error in errors]


async def watch_challenge(socket: GraphQLSocket, challenge: Challenge) -> Subscription:
    return await socket.subscribe(LOGIN_CHALLENGE, challenge.variables)


def shortest_challenge_ttl() -> int:
    """The smallest KANMON_CHALLENGE_TTL_SECONDS the settings accept, but at least 5 s."""
    field = Settings.model_fields["challenge_ttl_seconds"]
    floors = [int(rule.ge) for rule in field.metadata if hasattr(rule, "ge")]
    return max([5, *floors])


async def kill_pubsub_connections(redis: ArqRedis, gateway: Gateway, redis_url: str) -> int:
    """CLIENT KILL on the gateway's pub/sub connection. On a TCP server other processes may
    share, only the connections from the gateway's own sockets; the suite's embedded server
    (a unix socket) is private to this run, so every pub/sub client there."""
    clients: list[dict[str, Any]] = await redis.client_list(_type="pubsub")
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        targets = clients
    else:
        ports = redis_client_ports(gateway.pid, parts.port or 6379)
        targets = [c for c in clients if int(str(c["addr"]).rsplit(":", 1)[1]) in ports]
    killed = 0
    for client in targets:
        killed += int(await redis.client_kill_filter(_id=client["id"], _type="pubsub"))
    return killed


@asynccontextmanager
async def pubsub_interrupted(
    redis: ArqRedis, gateway: Gateway, redis_url: str
) -> AsyncIterator[list[int]]:
    """Keeps the gateway's pub/sub listener cut off while the block runs: one CLIENT KILL at
    once, then again each time it reconnects (every couple of milliseconds), so a signal
    published meanwhile is all but certainly lost. Yields the running count of kills."""
    killed = [await kill_pubsub_connections(redis, gateway, redis_url)]
    stop = asyncio.Event()

    async def keep_killing() -> None:
        while not stop.is_set():
            killed[0] += await kill_pubsub_connections(redis, gateway, redis_url)
            await asyncio.sleep(0.002)  # pacing only: the next check for a reconnected listener

    task = asyncio.create_task(keep_killing())
    try:
        yield killed
    finally:
        stop.set()
        await task


# P5 ----------------------------------------------------------------------------------------


async def test_p5_two_gateways_web_client_learns_approved_and_gets_one_session(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    gateway_a, _ = gateways
    user = await prepare_user(http_a)
    challenge = await web_login(http_a, user)
    async with graphql_socket(gateway_a.ws_url) as socket:
        await socket.ping()
        watch = await watch_challenge(socket, challenge)
        first = await challenge_update(watch)
        assert first["id"] == challenge.id
        assert first["status"] == "PENDING"
        assert first["matchNumber"] == challenge.match_number

        request = await only_pending_request(http_b, user)
        assert request["matchNumberRequired"] is True
        decided = await approve(http_b, user, request, challenge.match_number)
        assert decided["status"] == "APPROVED"

        assert (await challenge_update(watch))["status"] == "APPROVED"

        completed = await data(http_a, COMPLETE, challenge.variables)
        session = completed["completeLoginChallenge"]
        assert session["clientKind"] == "WEB"
        viewer = await data(http_a, VIEWER, token=session["token"])
        assert viewer["viewer"]["username"] == user.username

        again = await gql(http_a, COMPLETE, challenge.variables)
        assert error_code(again) == "CHALLENGE_CLOSED"
        assert again.get("data") is None

        assert (await challenge_update(watch))["status"] == "COMPLETED"
        await watch.completed()


async def test_p5_p6_two_gateways_web_client_learns_denied_and_gets_no_session(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    gateway_a, gateway_b = gateways
    user = await prepare_user(http_a)
    challenge = await web_login(http_a, user)
    async with graphql_socket(gateway_a.ws_url) as socket:
        watch = await watch_challenge(socket, challenge)
        assert (await challenge_update(watch))["status"] == "PENDING"

        request = await only_pending_request(http_b, user)
        assert (await deny(http_b, user, request))["status"] == "DENIED"

        assert (await challenge_update(watch))["status"] == "DENIED"
        await watch.completed()

    assert error_code(await gql(http_a, COMPLETE, challenge.variables)) == "CHALLENGE_CLOSED"
    assert error_code(await gql(http_b, COMPLETE, challenge.variables)) == "CHALLENGE_CLOSED"

    # A client that (re)subscribes after the decision learns it at once, on any gateway.
    async with graphql_socket(gateway_b.ws_url) as socket:
        watch = await watch_challenge(socket, challenge)
        assert (await challenge_update(watch))["status"] == "DENIED"
        await watch.completed()


async def test_p5_l5_the_waiting_client_hears_when_its_methods_go(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    """The app's session logs out on B while a web login waits on A: the device goes, 2FA with
    it (P7), and the web client hears at once that its login ended: nothing is left to
    complete it."""
    gateway_a, _ = gateways
    user = await prepare_user(http_a)
    challenge = await web_login(http_a, user)
    async with graphql_socket(gateway_a.ws_url) as socket:
        watch = await watch_challenge(socket, challenge)
        first = await challenge_update(watch)
        assert (first["status"], first["methods"]) == (
            "PENDING",
            ["PUSH", "APP_CODE", "BACKUP_CODE"],
        )

        assert (await data(http_b, "mutation { logout }", token=user.token))["logout"] is True

        update = await challenge_update(watch)
        assert (update["status"], update["methods"]) == ("EXPIRED", [])


async def test_p5_p3_expired_reaches_the_web_subscription_and_the_worker_expires_the_request(
    settings: Settings, gateways: tuple[Gateway, Gateway]
) -> None:
    """The challenge is opened on a third gateway C whose challenges live only a few seconds;
    the web client waits on A, the app on B. The web subscription wakes at the deadline by
    itself; the stored request becomes EXPIRED only when a real maintenance worker's cron
    (`login.expire_due`) runs, and that worker's signal reaches the app on B."""
    gateway_a, gateway_b = gateways
    ttl = shortest_challenge_ttl()
    env = {"KANMON_CHALLENGE_TTL_SECONDS": str(ttl)}
    async with (
        running_gateways(settings, 1, env, prefix="short-ttl") as (gateway_c,),
        gateway_c.http() as http_c,
    ):
        user = await prepare_user(http_c)
        async with (
            graphql_socket(gateway_b.ws_url, user.token) as app_socket,
            graphql_socket(gateway_a.ws_url) as web_socket,
        ):
            requests = await app_socket.subscribe(LOGIN_REQUESTS)
            challenge = await web_login(http_c, user)
            pending = await request_update(requests)
            assert pending["status"] == "PENDING"

            watch = await watch_challenge(web_socket, challenge)
            first = await challenge_update(watch)
            assert first["status"] == "PENDING"
            assert first["expiresAt"] == pending["expiresAt"]

            expired = await challenge_update(watch, seconds=ttl + 20)
            assert expired["status"] == "EXPIRED"
            await watch.completed()
            assert error_code(await gql(http_c, COMPLETE, challenge.variables)) == (
                "CHALLENGE_EXPIRED"
            )

            async with running_worker(settings, "maintenance"):
                update = await request_update(requests, seconds=30)
            assert update["id"] == pending["id"]
            assert update["status"] == "EXPIRED"

        listed = await data(http_c, REQUESTS, {"s": "EXPIRED"}, token=user.token)
        nodes = [edge["node"] for edge in listed["viewer"]["loginRequests"]["edges"]]
        assert [(node["id"], node["status"]) for node in nodes] == [(pending["id"], "EXPIRED")]
        assert await pending_requests(http_c, user) == []


# P3 ----------------------------------------------------------------------------------------


async def test_p3_app_subscription_on_b_receives_new_login_requests_from_a_and_their_changes(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient
) -> None:
    _, gateway_b = gateways
    user = await prepare_user(http_a)
    earlier = await web_login(http_a, user)
    async with graphql_socket(gateway_b.ws_url, user.token) as socket:
        requests = await socket.subscribe(LOGIN_REQUESTS)
        # On subscribe: the pending requests as they stand.
        current = await request_update(requests)
        assert current["status"] == "PENDING"
        assert current["browser"] == "Firefox"

        # Then, live: a login on another gateway arrives without FCM.
        challenge = await web_login(http_a, user)
        fresh = await request_update(requests)
        assert fresh["status"] == "PENDING"
        assert fresh["id"] != current["id"]
        assert fresh["matchNumberRequired"] is True

        decided = await approve(http_a, user, fresh, challenge.match_number)
        assert decided["status"] == "APPROVED"
        change = await request_update(requests)
        assert (change["id"], change["status"]) == (fresh["id"], "APPROVED")

        # The earlier request, untouched, is not sent again; its denial is.
        assert (await deny(http_a, user, current))["status"] == "DENIED"
        change = await request_update(requests)
        assert (change["id"], change["status"]) == (current["id"], "DENIED")
    assert error_code(await gql(http_a, COMPLETE, earlier.variables)) == "CHALLENGE_CLOSED"


# G4 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-session-token", "not-a-session-token", "Basic dXNlcjpwYXNz", "Bearer ", 42],
)
async def test_g4_invalid_authorization_in_connection_init_closes_with_4403(
    gateways: tuple[Gateway, Gateway], authorization: object
) -> None:
    """Credentials that are not a valid bearer session refuse the socket; they never make it
    an anonymous one."""
    gateway_a, _ = gateways
    async with open_socket(gateway_a.ws_url) as socket:
        answer = await socket.initialise({"authorization": authorization})
        assert answer.type == "closed"
        assert await socket.wait_closed() == 4403


async def test_g4_connection_init_credentials_decide_over_the_upgrade_header(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient
) -> None:
    """The socket's credential is `connection_init`'s: an invalid token there closes 4403
    even after an upgrade request with a valid Authorization header, and a valid one is not
    refused for a stale header."""
    gateway_a, _ = gateways
    user = await prepare_user(http_a)
    valid = {"Authorization": f"Bearer {user.token}"}
    async with open_socket(gateway_a.ws_url, headers=valid) as socket:
        answer = await socket.initialise({"authorization": "Bearer not-a-session-token"})
        assert answer.type == "closed"
        assert await socket.wait_closed() == 4403
    stale = {"Authorization": "Bearer not-a-session-token"}
    async with open_socket(gateway_a.ws_url, headers=stale) as socket:
        answer = await socket.initialise({"authorization": f"Bearer {user.token}"})
        assert answer.type == "connection_ack"
        viewer = await (await socket.subscribe(VIEWER)).next()
        assert viewer["viewer"]["username"] == user.username


async def test_g4_login_challenge_with_a_wrong_token_is_not_found(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient
) -> None:
    gateway_a, _ = gateways
    user = await prepare_user(http_a)
    other = await prepare_user(http_a)
    challenge = await web_login(http_a, user)
    others = await web_login(http_a, other)
    attempts = [
        {"id": challenge.id, "t": "not-the-token"},
        {"id": str(uuid.uuid4()), "t": challenge.token},
        # Another user's challenge: a real id with a real token, but not its own.
        {"id": challenge.id, "t": others.token},
        {"id": others.id, "t": challenge.token},
    ]
    async with graphql_socket(gateway_a.ws_url) as socket:
        answers = [
            await refusal(await socket.subscribe(LOGIN_CHALLENGE, variables))
            for variables in attempts
        ]
        assert answers == [("error", ["NOT_FOUND"])] * len(attempts)
        # The socket survives the refusals, and the right pair still works.
        await socket.ping()
        watch = await watch_challenge(socket, challenge)
        assert (await challenge_update(watch))["status"] == "PENDING"


async def test_g4_login_requests_needs_an_app_session(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient
) -> None:
    gateway_a, gateway_b = gateways
    web_token = await sign_up(http_a, f"user_{uuid.uuid4().hex[:12]}", ClientKind.WEB)
    async with graphql_socket(gateway_b.ws_url) as socket:
        anonymous = await refusal(await socket.subscribe(LOGIN_REQUESTS))
    async with graphql_socket(gateway_a.ws_url, web_token) as socket:
        web = await refusal(await socket.subscribe(LOGIN_REQUESTS))
        await socket.ping()
    assert (anonymous, web) == (("error", ["UNAUTHENTICATED"]), ("error", ["FORBIDDEN"]))


async def test_g4_a_session_revoked_while_its_socket_is_open_answers_nothing_more(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient
) -> None:
    """graphql-transport-ws also carries queries and mutations, and one context serves the
    whole connection: the session is looked up again for each operation, never kept."""
    gateway_a, _ = gateways
    user = await prepare_user(http_a)
    async with graphql_socket(gateway_a.ws_url, user.token) as socket:
        before = await (await socket.subscribe(VIEWER)).next()
        assert before["viewer"]["username"] == user.username
        assert (await data(http_a, "mutation { logout }", token=user.token))["logout"] is True
        after = await (await socket.subscribe(VIEWER)).next()
        assert after["viewer"] is None
        refused = await refusal(
            await socket.subscribe("mutation { enableTwoFactor { settings { twoFactorEnabled } } }")
        )
        assert refused == ("next", ["UNAUTHENTICATED"])


async def test_g3_a_websocket_message_over_64_kb_closes_the_socket(
    gateways: tuple[Gateway, Gateway],
) -> None:
    """The HTTP body limit holds on websockets too: nothing parses a frame over 64 KB."""
    gateway_a, _ = gateways
    async with graphql_socket(gateway_a.ws_url) as socket:
        padding = "#" + "x" * (MAX_BODY_BYTES + 1) + "\n"
        await socket.send(
            {"id": "big", "type": "subscribe", "payload": {"query": padding + VIEWER}}
        )
        assert await socket.wait_closed() == 1009  # message too big
    async with graphql_socket(gateway_a.ws_url) as socket:
        assert await (await socket.subscribe(VIEWER)).next() == {"viewer": None}


async def test_g3_a_socket_runs_at_most_ten_operations_at_once(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient
) -> None:
    """Each open subscription holds gateway memory: one socket may not hold thousands."""
    gateway_a, _ = gateways
    challenge = await web_login(http_a, await prepare_user(http_a))
    async with graphql_socket(gateway_a.ws_url) as socket:
        watches = [
            await watch_challenge(socket, challenge) for _ in range(MAX_OPERATIONS_PER_SOCKET)
        ]
        for watch in watches:
            assert (await challenge_update(watch))["status"] == "PENDING"
        for _ in range(3):
            refused = await watch_challenge(socket, challenge)
            assert await refusal(refused) == ("error", ["QUERY_REJECTED"])
        # The socket lives on, and an operation that ends frees its place.
        await watches[0].stop()
        again = await watch_challenge(socket, challenge)
        assert (await challenge_update(again))["status"] == "PENDING"


async def test_g2_websocket_errors_carry_the_same_codes_as_over_http(
    gateways: tuple[Gateway, Gateway],
) -> None:
    """A socket's answers never pass the HTTP view's mapping: the schema maps them."""
    gateway_a, _ = gateways
    async with graphql_socket(gateway_a.ws_url) as socket:
        for document in ("subscription { noSuchField }", "{ viewer { x } }"):
            assert await refusal(await socket.subscribe(document)) == (
                "error",
                ["BAD_USER_INPUT"],
            ), document
        # The socket lives on.
        assert await (await socket.subscribe(VIEWER)).next() == {"viewer": None}
    # Unparsable documents close the socket, as strawberry does for this protocol.
    async with graphql_socket(gateway_a.ws_url) as socket:
        await socket.subscribe("subscription {")
        assert await socket.wait_closed() == 4400


@pytest.mark.parametrize(
    "payload",
    [
        {"query": VIEWER, "variables": [1, 2]},
        {"query": VIEWER, "variables": "x"},
        {"query": 42},
        {"query": VIEWER, "operationName": 7},
        {"variables": {}},
        "not an object",
    ],
)
async def test_g2_a_malformed_subscribe_closes_the_socket_4400(
    gateways: tuple[Gateway, Gateway], payload: object
) -> None:
    gateway_a, _ = gateways
    async with graphql_socket(gateway_a.ws_url) as socket:
        await socket.send({"id": "bad", "type": "subscribe", "payload": payload})
        assert await socket.wait_closed() == 4400


async def test_g2_a_message_nested_thousands_deep_closes_the_socket_4400(
    gateways: tuple[Gateway, Gateway],
) -> None:
    gateway_a, _ = gateways
    nested = "[" * 5000 + "]" * 5000
    async with graphql_socket(gateway_a.ws_url) as socket:
        await socket.connection.send(f'{{"id": "x", "type": "subscribe", "payload": {nested}}}')
        assert await socket.wait_closed() == 4400


@pytest.mark.parametrize(
    "message",
    [
        [{"type": "ping"}],
        {"id": ["x"], "type": "subscribe", "payload": {"query": "{ __typename }"}},
        {"id": {"x": 1}, "type": "subscribe", "payload": {"query": "{ __typename }"}},
        {"id": 5, "type": "subscribe", "payload": {"query": "{ __typename }"}},
        {"id": None, "type": "subscribe", "payload": {"query": "{ __typename }"}},
        {"id": ["x"], "type": "complete"},
    ],
)
async def test_g1_a_message_the_protocol_does_not_specify_closes_the_socket_4400(
    gateways: tuple[Gateway, Gateway], message: object
) -> None:
    """graphql-transport-ws: messages are JSON objects and operation ids are strings; any
    other message closes 4400, never drops the socket without a code nor runs."""
    gateway_a, _ = gateways
    async with graphql_socket(gateway_a.ws_url) as socket:
        await socket.connection.send(json.dumps(message))
        assert await socket.wait_closed() == 4400


# Resilience ----------------------------------------------------------------------------------


async def test_p5_subscriber_learns_the_decision_after_its_gateway_lost_pubsub(
    settings: Settings,
    redis: ArqRedis,
    gateways: tuple[Gateway, Gateway],
    http_a: httpx.AsyncClient,
    http_b: httpx.AsyncClient,
) -> None:
    """The signal may be published while A's listener is disconnected; after reconnecting, A
    wakes its subscribers to re-read, so the decision still arrives (and later ones too)."""
    gateway_a, _ = gateways
    assert settings.redis_url
    user = await prepare_user(http_a)
    challenge = await web_login(http_a, user)
    request = await only_pending_request(http_b, user)
    async with graphql_socket(gateway_a.ws_url) as socket:
        watch = await watch_challenge(socket, challenge)
        assert (await challenge_update(watch))["status"] == "PENDING"

        async with pubsub_interrupted(redis, gateway_a, settings.redis_url) as killed:
            assert killed[0] >= 1, "gateway A had no pub/sub connection to kill"
            decided = await approve(http_b, user, request, challenge.match_number)
            assert decided["status"] == "APPROVED"
        # Published while A was cut off; A re-reads after its listener reconnects.
        assert (await challenge_update(watch))["status"] == "APPROVED"

        # The listener is back: the completion (a new signal) arrives live as well.
        assert (await data(http_b, COMPLETE, challenge.variables))["completeLoginChallenge"]
        assert (await challenge_update(watch))["status"] == "COMPLETED"
        await watch.completed()


async def test_p5_subscribing_after_the_approval_sends_approved_first(
    gateways: tuple[Gateway, Gateway], http_a: httpx.AsyncClient, http_b: httpx.AsyncClient
) -> None:
    gateway_a, _ = gateways
    user = await prepare_user(http_a)
    challenge = await web_login(http_a, user)
    request = await only_pending_request(http_b, user)
    assert (await approve(http_b, user, request, challenge.match_number))["status"] == "APPROVED"
    async with graphql_socket(gateway_a.ws_url) as socket:
        watch = await watch_challenge(socket, challenge)
        first = await challenge_update(watch)
        assert first["status"] == "APPROVED"
        assert first["matchNumber"] is None
        session = (await data(http_a, COMPLETE, challenge.variables))["completeLoginChallenge"]
        assert session["token"]
        assert (await challenge_update(watch))["status"] == "COMPLETED"
        await watch.completed()
