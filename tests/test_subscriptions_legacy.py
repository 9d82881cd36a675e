"""G1: the legacy graphql-ws protocol (subscriptions-transport-ws clients) beside
graphql-transport-ws, only when KANMON_GRAPHQL_WS_LEGACY is on.

Real `kanmon serve` processes on the suite's database and Redis: gateway L with the setting on,
gateway D with the default (off). The web client waits on L while the app approves on D, so the
update crosses Redis pub/sub between processes. What test_subscriptions.py checks on
graphql-transport-ws holds here too: the current state first, then each change; credentials
from `connection_init` (G4, 4403 when they are not a valid bearer session); the 64 KB message
limit (G3).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.container import Services
from gateway.core.events import EventHub
from gateway.graphql.limits import MAX_BODY_BYTES
from gateway.graphql.schema import build_schema
from gateway.graphql.sockets import MAX_OPERATIONS_PER_SOCKET
from gateway.graphql.view import KanmonGraphQL
from gateway.settings import Settings
from tests.gateway_processes import Gateway, running_gateways
from tests.push_helpers import approve, complete, login, push_account, request_node
from tests.ws_client import graphql_socket

LEGACY = Subprotocol("graphql-ws")
WAIT_SECONDS = 20.0

LOGIN_CHALLENGE = """
subscription($id: ID!, $t: String!) {
  loginChallenge(id: $id, token: $t) { id status matchNumber }
}"""
LOGIN_REQUESTS = "subscription { loginRequests { id status browser } }"


class LegacySocket:
    """A graphql-ws client: `connection_init` / `connection_ack`, `start` / `data` / `error` /
    `complete`, `stop`. One operation at a time, so messages are read in order."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self, seconds: float = WAIT_SECONDS) -> dict[str, Any]:
        """The next message (keep-alives skipped), or `{"type": "closed", "code": ...}`."""
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message: dict[str, Any] = json.loads(await self.connection.recv())
                    if message.get("type") != "ka":
                        return message
        except ConnectionClosed:
            return {"type": "closed", "code": self.connection.close_code}
        except TimeoutError:
            raise AssertionError(f"nothing arrived within {seconds:.0f} s") from None

    async def initialise(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": payload or {}})
        return await self.receive()

    async def start(
        self, operation: str, query: str, variables: dict[str, Any] | None = None
    ) -> None:
        payload = {"query": query, "variables": variables or {}}
        await self.send({"id": operation, "type": "start", "payload": payload})

    async def data(self, operation: str) -> dict[str, Any]:
        """The `data` of the next message, which must be an error-free `data` for `operation`."""
        message = await self.receive()
        assert (message.get("type"), message.get("id")) == ("data", operation), message
        assert not message["payload"].get("errors"), message
        found: dict[str, Any] = message["payload"]["data"]
        return found

    async def wait_closed(self) -> int | None:
        """The close code, once the server has closed (messages before it are dropped)."""
        while (message := await self.receive())["type"] != "closed":
            pass
        code: int | None = message["code"]
        return code


@asynccontextmanager
async def open_legacy(
    url: str, protocols: tuple[str, ...] = (LEGACY,)
) -> AsyncIterator[LegacySocket]:
    async with asyncio.timeout(WAIT_SECONDS):
        connection = await connect(
            url, subprotocols=[Subprotocol(p) for p in protocols], open_timeout=WAIT_SECONDS
        )
    try:
        yield LegacySocket(connection)
    finally:
        await connection.close()


@asynccontextmanager
async def legacy_socket(url: str, token: str | None = None) -> AsyncIterator[LegacySocket]:
    """Past `connection_ack`, authenticated with `token` when given (G4)."""
    async with open_legacy(url) as socket:
        assert socket.connection.subprotocol == LEGACY
        payload = {"authorization": f"Bearer {token}"} if token else {}
        answer = await socket.initialise(payload)
        assert answer["type"] == "connection_ack", answer
        yield socket


@pytest.fixture(scope="module")
async def gateways(settings: Settings, redis: ArqRedis) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """L (legacy graphql-ws on) and D (the default: off); `redis` first, it empties the test
    database before anything runs on it."""
    async with (
        running_gateways(settings, 1, {"KANMON_GRAPHQL_WS_LEGACY": "true"}, "legacy") as (on,),
        running_gateways(settings, 1, prefix="default") as (off,),
    ):
        yield on, off


@pytest.fixture
async def http_on(gateways: tuple[Gateway, Gateway]) -> AsyncIterator[httpx.AsyncClient]:
    async with gateways[0].http() as http:
        yield http


@pytest.fixture
async def http_off(gateways: tuple[Gateway, Gateway]) -> AsyncIterator[httpx.AsyncClient]:
    async with gateways[1].http() as http:
        yield http


async def test_g1_legacy_graphql_ws_login_challenge_sends_the_current_state_then_approved(
    gateways: tuple[Gateway, Gateway], http_on: httpx.AsyncClient, http_off: httpx.AsyncClient
) -> None:
    on, _ = gateways
    account = await push_account(http_on)
    challenge = await login(http_on, account.username)
    assert challenge["__typename"] == "LoginChallenge"
    variables = {"id": challenge["id"], "t": challenge["token"]}
    async with legacy_socket(on.ws_url) as socket:
        await socket.start("1", LOGIN_CHALLENGE, variables)
        first = (await socket.data("1"))["loginChallenge"]
        assert (first["id"], first["status"]) == (challenge["id"], "PENDING")
        assert first["matchNumber"] == challenge["matchNumber"]

        node = await request_node(http_off, account.app.token, challenge)
        decided = await approve(http_off, account.app, node, challenge["matchNumber"])
        assert decided["data"]["approveLoginRequest"]["status"] == "APPROVED", decided
        assert (await socket.data("1"))["loginChallenge"]["status"] == "APPROVED"

        session = await complete(http_off, challenge)
        assert session["data"]["completeLoginChallenge"]["clientKind"] == "WEB", session
        assert (await socket.data("1"))["loginChallenge"]["status"] == "COMPLETED"
        assert await socket.receive() == {"type": "complete", "id": "1"}


async def test_g1_legacy_stop_ends_the_operation_and_the_socket_carries_on(
    gateways: tuple[Gateway, Gateway], http_on: httpx.AsyncClient
) -> None:
    on, _ = gateways
    account = await push_account(http_on)
    challenge = await login(http_on, account.username)
    variables = {"id": challenge["id"], "t": challenge["token"]}
    async with legacy_socket(on.ws_url) as socket:
        await socket.start("a", LOGIN_CHALLENGE, variables)
        assert (await socket.data("a"))["loginChallenge"]["status"] == "PENDING"
        await socket.send({"id": "a", "type": "stop"})
        assert await socket.receive() == {"type": "complete", "id": "a"}
        await socket.start("b", LOGIN_CHALLENGE, variables)
        assert (await socket.data("b"))["loginChallenge"]["status"] == "PENDING"


async def test_g1_g4_legacy_bearer_in_connection_init_authenticates_the_app(
    gateways: tuple[Gateway, Gateway], http_on: httpx.AsyncClient, http_off: httpx.AsyncClient
) -> None:
    """The app's session from `connection_init` reaches `loginRequests` (GraphQLContext reads
    `connection_params`, which the legacy handler fills too)."""
    on, _ = gateways
    account = await push_account(http_on)
    async with legacy_socket(on.ws_url, account.app.token) as socket:
        await socket.start("1", LOGIN_REQUESTS)
        challenge = await login(http_off, account.username)
        node = await request_node(http_off, account.app.token, challenge)
        update = (await socket.data("1"))["loginRequests"]
        assert (update["id"], update["status"], update["browser"]) == (
            node["id"],
            "PENDING",
            "Firefox",
        )
    async with legacy_socket(on.ws_url) as socket:
        await socket.start("1", LOGIN_REQUESTS)
        refused = await socket.receive()
    assert (refused["type"], refused["id"]) == ("error", "1"), refused
    assert refused["payload"]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer not-a-session-token", "not-a-session-token", "Basic dXNlcjpwYXNz", "Bearer ", 42],
)
async def test_g1_g4_legacy_invalid_authorization_in_connection_init_closes_with_4403(
    gateways: tuple[Gateway, Gateway], authorization: object
) -> None:
    """As on graphql-transport-ws: never an anonymous socket. The legacy client first hears
    `connection_error` (strawberry's own handler would then close 1011)."""
    on, _ = gateways
    async with open_legacy(on.ws_url) as socket:
        answer = await socket.initialise({"authorization": authorization})
        assert answer["type"] == "connection_error", answer
        assert await socket.wait_closed() == 4403


async def test_g1_g4_legacy_login_challenge_with_a_wrong_token_is_an_error_with_not_found(
    gateways: tuple[Gateway, Gateway], http_on: httpx.AsyncClient
) -> None:
    on, _ = gateways
    account = await push_account(http_on)
    challenge = await login(http_on, account.username)
    async with legacy_socket(on.ws_url) as socket:
        await socket.start("1", LOGIN_CHALLENGE, {"id": challenge["id"], "t": "not-the-token"})
        refused = await socket.receive()
        assert (refused["type"], refused["id"]) == ("error", "1"), refused
        assert refused["payload"]["extensions"]["code"] == "NOT_FOUND"
        await socket.start("2", LOGIN_CHALLENGE, {"id": challenge["id"], "t": challenge["token"]})
        assert (await socket.data("2"))["loginChallenge"]["status"] == "PENDING"


async def test_g1_g3_legacy_socket_runs_at_most_ten_operations_at_once(
    gateways: tuple[Gateway, Gateway], http_on: httpx.AsyncClient
) -> None:
    on, _ = gateways
    account = await push_account(http_on)
    challenge = await login(http_on, account.username)
    variables = {"id": challenge["id"], "t": challenge["token"]}
    async with legacy_socket(on.ws_url) as socket:
        for operation in range(MAX_OPERATIONS_PER_SOCKET):
            await socket.start(str(operation), LOGIN_CHALLENGE, variables)
            assert (await socket.data(str(operation)))["loginChallenge"]["status"] == "PENDING"
        await socket.start("over", LOGIN_CHALLENGE, variables)
        refused = await socket.receive()
        assert (refused["type"], refused["id"]) == ("error", "over"), refused
        assert refused["payload"]["extensions"]["code"] == "QUERY_REJECTED"
        await socket.send({"id": "0", "type": "stop"})
        assert await socket.receive() == {"type": "complete", "id": "0"}
        await socket.start("again", LOGIN_CHALLENGE, variables)
        assert (await socket.data("again"))["loginChallenge"]["status"] == "PENDING"


async def test_g1_g3_legacy_message_over_64_kb_closes_the_socket(
    gateways: tuple[Gateway, Gateway],
) -> None:
    on, _ = gateways
    async with legacy_socket(on.ws_url) as socket:
        padding = "#" + "x" * (MAX_BODY_BYTES + 1) + "\n"
        await socket.start("big", padding + LOGIN_REQUESTS)
        assert await socket.wait_closed() == 1009  # message too big


@pytest.mark.parametrize(
    "message",
    [
        {"id": "1", "type": "start"},
        {"id": "1", "type": "start", "payload": {"variables": {}}},
        {"type": "stop"},
        ["start"],
    ],
    ids=["no payload", "no query", "stop without id", "not an object"],
)
async def test_g1_legacy_malformed_message_closes_4400(
    gateways: tuple[Gateway, Gateway], message: object
) -> None:
    """graphql-transport-ws closes 4400 on a message without its fields; strawberry's legacy
    handler would fail the whole connection (1011) with a traceback in the log."""
    on, _ = gateways
    async with legacy_socket(on.ws_url) as socket:
        await socket.connection.send(json.dumps(message))
        assert await socket.wait_closed() == 4400


async def test_g1_legacy_second_connection_init_closes_4429(
    gateways: tuple[Gateway, Gateway],
) -> None:
    on, _ = gateways
    async with legacy_socket(on.ws_url) as socket:
        await socket.send({"type": "connection_init", "payload": {}})
        assert await socket.wait_closed() == 4429


async def test_g1_legacy_gateway_still_serves_graphql_transport_ws(
    gateways: tuple[Gateway, Gateway],
) -> None:
    on, _ = gateways
    async with graphql_socket(on.ws_url) as socket:
        await socket.ping()
        assert await (await socket.subscribe("query { viewer { username } }")).next() == {
            "viewer": None
        }


async def test_g1_by_default_a_client_offering_only_graphql_ws_is_refused_with_4406(
    gateways: tuple[Gateway, Gateway],
) -> None:
    _, off = gateways
    async with open_legacy(off.ws_url) as socket:
        assert socket.connection.subprotocol is None
        assert await socket.wait_closed() == 4406  # subprotocol not acceptable


async def test_g1_legacy_socket_without_connection_init_closes_4408(
    services: Services, redis: ArqRedis
) -> None:
    """As graphql-transport-ws does after `connection_init_wait_timeout` (a minute in
    production; a fraction of a second here)."""
    view = KanmonGraphQL(
        services,
        EventHub(redis),
        schema=build_schema(development=False),
        development=False,
        legacy_ws=True,
        connection_init_wait_timeout=timedelta(seconds=0.2),
    )
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [LEGACY],
    }
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    task = asyncio.create_task(view(scope, incoming.get, outgoing.put))
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            accepted = await outgoing.get()
            assert (accepted["type"], accepted.get("subprotocol")) == ("websocket.accept", LEGACY)
            closed = await outgoing.get()
        assert (closed["type"], closed["code"]) == ("websocket.close", 4408), closed
    finally:
        await incoming.put({"type": "websocket.disconnect", "code": 4408})
        async with asyncio.timeout(WAIT_SECONDS):
            await task
