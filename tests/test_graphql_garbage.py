"""P3, P5: GraphQL operations leave no reference cycles, so no collector pause (5 to 10 ms each
on the bench machine, every request in flight waiting) stands between an approval and its
event. See gateway.graphql.execution."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pyotp
import pytest
from graphql import GraphQLError
from graphql.execution.executor import Executor
from starlette.applications import Starlette
from starlette.requests import Request

from gateway.app import create_app
from gateway.container import Services
from gateway.core.errors import DomainError
from gateway.graphql.context import GraphQLContext
from gateway.graphql.execution import KanmonExecutionContext
from gateway.graphql.schema import build_schema
from gateway.settings import Settings
from tests.graphql_client import (
    BEGIN_TOTP,
    CONFIRM_TOTP,
    ENABLE_2FA,
    LOGIN,
    PASSWORD,
    VERIFY,
    data,
    sign_up,
)
from tests.push_helpers import APPROVE, COMPLETE, login, push_account, request_node
from tests.secrets_seen import remember

SETTINGS = "{ viewer { securitySettings { twoFactorEnabled methods totpEnabled } } }"

WAIT_FOR_DECISION = """
subscription($id: ID!, $t: String!) { loginChallenge(id: $id, token: $t) { status } }"""
REMOVE_TOTP = "mutation { removeTotp { twoFactorDisabled } }"

Post = Callable[..., Awaitable[dict[str, Any]]]


def asgi_scope(kind: str, headers: list[tuple[bytes, bytes]], **more: Any) -> dict[str, Any]:
    """A request to /graphql as a server hands it to the app (`kind`: http or websocket)."""
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        **more,
    }


@pytest.fixture
async def gateway(settings: Settings, services: Services) -> AsyncIterator[Starlette]:
    app = create_app(settings, services)
    try:
        yield app
    finally:
        await app.state.events.stop()


@pytest.fixture
def post(gateway: Starlette) -> Post:
    """POST /graphql straight into the ASGI app: an HTTP client's own objects (httpx's request
    and response streams) form cycles of their own, which are not the gateway's."""

    async def call(
        query: str, variables: dict[str, Any] | None = None, token: str | None = None
    ) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        headers = [(b"content-type", b"application/json")]
        if token:
            headers.append((b"authorization", f"Bearer {token}".encode()))
        scope = asgi_scope("http", headers, method="POST")
        requests = [{"type": "http.request", "body": body, "more_body": False}]
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            return requests.pop() if requests else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await gateway(scope, receive, send)
        answer: dict[str, Any] = json.loads(b"".join(chunks))
        remember(variables or {})
        remember(answer)
        return answer

    return call


# Part of every operation's object graph: if the collector finds one of these, the operation
# left a cycle. (Other garbage may come from the test process's own background tasks.)
OPERATION_OBJECTS = (GraphQLContext, Executor, Request, GraphQLError, DomainError)


@asynccontextmanager
async def no_cycles_left(what: str) -> AsyncIterator[None]:
    """Fails when the block leaves operation objects that only the cyclic collector frees."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
        gc.collect()
        left = Counter(
            type(found).__qualname__ for found in gc.garbage if isinstance(found, OPERATION_OBJECTS)
        )
        assert not left, f"{what} left cycles holding {left.most_common(8)}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def each_leaves_nothing(
    operations: dict[str, Callable[[], Awaitable[dict[str, Any]]]],
) -> dict[str, dict[str, Any]]:
    """Each document must have run once before: its first run fills caches that stay (parse
    and validation, SQL texts)."""
    answers: dict[str, dict[str, Any]] = {}
    for what, operation in operations.items():
        async with no_cycles_left(what):
            answers[what] = await operation()
    return answers


class AsgiSocket:
    """A graphql-transport-ws client straight on the ASGI app (see `post`)."""

    def __init__(self, app: Starlette) -> None:
        self._app = app
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        scope = asgi_scope("websocket", [], subprotocols=["graphql-transport-ws"])
        self._task = asyncio.create_task(self._app(scope, self._outgoing.get, self._incoming.put))
        await self._outgoing.put({"type": "websocket.connect"})
        assert (await self._next())["type"] == "websocket.accept"
        await self.send({"type": "connection_init", "payload": {}})
        assert (await self.receive())["type"] == "connection_ack"

    async def send(self, message: dict[str, Any]) -> None:
        await self._outgoing.put({"type": "websocket.receive", "text": json.dumps(message)})

    async def receive(self) -> dict[str, Any]:
        message = await self._next()
        assert message["type"] == "websocket.send", message
        answer: dict[str, Any] = json.loads(message["text"])
        return answer

    async def _next(self) -> dict[str, Any]:
        async with asyncio.timeout(10):
            return await self._incoming.get()

    async def close(self) -> None:
        await self._outgoing.put({"type": "websocket.disconnect", "code": 1000})
        if self._task is not None:
            async with asyncio.timeout(10):
                await self._task


def test_p3_the_schema_runs_operations_on_the_cycle_free_executor() -> None:
    assert build_schema(development=False).execution_context_class is KanmonExecutionContext


async def test_p3_p5_an_approval_and_the_calls_around_it_leave_no_cycles(
    client: httpx.AsyncClient, post: Post
) -> None:
    account = await push_account(client)
    challenges = [await login(client, account.username) for _ in range(2)]
    nodes = [await request_node(client, account.app.token, c) for c in challenges]

    def approval(index: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        node, number = nodes[index], challenges[index]["matchNumber"]
        signature = account.app.key.approve(node["id"], node["nonce"], number)
        variables = {"id": node["id"], "s": signature, "m": number}
        return lambda: post(APPROVE, variables, token=account.app.token)

    def completion(index: int) -> Callable[[], Awaitable[dict[str, Any]]]:
        variables = {"id": challenges[index]["id"], "t": challenges[index]["token"]}
        return lambda: post(COMPLETE, variables)

    # Warm-up: every document once (parse and validation caches, SQL texts stay).
    await post(SETTINGS, token=account.app.token)
    await approval(0)()
    await completion(0)()

    answers = await each_leaves_nothing(
        {
            "settings query": lambda: post(SETTINGS, token=account.app.token),
            "approval": approval(1),
            "completion": completion(1),
        }
    )
    assert answers["settings query"]["data"]["viewer"]["securitySettings"]["twoFactorEnabled"]
    assert answers["approval"]["data"]["approveLoginRequest"]["status"] == "APPROVED"
    assert answers["completion"]["data"]["completeLoginChallenge"]["clientKind"] == "WEB"


async def test_p3_login_code_checks_and_refusals_leave_no_cycles(
    client: httpx.AsyncClient, post: Post, username: str
) -> None:
    """Errors close cycles of their own (error, traceback, frame, executor): the refusals
    here are the common ones (wrong code, no session, malformed input, unknown field)."""
    token = await sign_up(client, username)
    secret = (await data(client, BEGIN_TOTP, token=token))["beginTotpEnrollment"]["secret"]
    totp = pyotp.TOTP(secret)
    await data(client, CONFIRM_TOTP, {"c": totp.now()}, token=token)
    await data(client, ENABLE_2FA, token=token)
    login_vars = {"u": username, "p": PASSWORD, "k": "WEB"}
    wrong = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
    first = (await post(LOGIN, login_vars))["data"]["login"]
    await post(VERIFY, {"id": first["id"], "t": first["token"], "m": "TOTP", "c": wrong})
    await post("{ viewer { nope } }", token=token)
    await post(REMOVE_TOTP)
    second: dict[str, Any] = {}

    async def log_in() -> dict[str, Any]:
        body = await post(LOGIN, login_vars)
        second.update(body["data"]["login"])
        return body

    def verify(code: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: post(
            VERIFY, {"id": second["id"], "t": second["token"], "m": "TOTP", "c": code}
        )

    answers = await each_leaves_nothing(
        {
            "login": log_in,
            "wrong code": verify(wrong),
            # T2: the enrollment spent this step; the next one is within the drift allowed.
            "right code": verify(totp.at(time.time() + totp.interval)),
            "no session": lambda: post(REMOVE_TOTP),
            "malformed id": lambda: post(
                VERIFY, {"id": "not-an-id", "t": "x", "m": "TOTP", "c": "123456"}
            ),
            "unknown field": lambda: post("{ viewer { nope } }", token=token),
        }
    )
    assert answers["login"]["data"]["login"]["__typename"] == "LoginChallenge"
    assert answers["wrong code"]["errors"][0]["extensions"]["code"] == "INVALID_CODE"
    assert answers["right code"]["data"]["verifyLoginChallenge"]["clientKind"] == "WEB"
    assert answers["no session"]["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert answers["malformed id"]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert answers["unknown field"]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_p5_an_approval_reaching_the_waiting_subscription_leaves_no_cycles(
    client: httpx.AsyncClient, post: Post, gateway: Starlette
) -> None:
    account = await push_account(client)
    challenge = await login(client, account.username)
    node = await request_node(client, account.app.token, challenge)
    number = challenge["matchNumber"]
    signature = account.app.key.approve(node["id"], node["nonce"], number)
    # Warm-up of the approval's document, refused (BAD_USER_INPUT) and so changing nothing.
    await post(APPROVE, {"id": "not-an-id", "s": signature, "m": number}, token=account.app.token)
    socket = AsgiSocket(gateway)
    await socket.open()
    await socket.send(
        {
            "id": "1",
            "type": "subscribe",
            "payload": {
                "query": WAIT_FOR_DECISION,
                "variables": {"id": challenge["id"], "t": challenge["token"]},
            },
        }
    )
    first = await socket.receive()
    assert first["payload"]["data"]["loginChallenge"]["status"] == "PENDING"

    async def approve_and_hear_it() -> dict[str, Any]:
        answer = await post(
            APPROVE, {"id": node["id"], "s": signature, "m": number}, token=account.app.token
        )
        assert answer["data"]["approveLoginRequest"]["status"] == "APPROVED"
        return await socket.receive()

    heard = await each_leaves_nothing({"approval heard on the socket": approve_and_hear_it})
    event = heard["approval heard on the socket"]
    assert (event["id"], event["type"]) == ("1", "next")
    assert event["payload"]["data"]["loginChallenge"]["status"] == "APPROVED"
    await socket.close()
