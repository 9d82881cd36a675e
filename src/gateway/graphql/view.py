"""The HTTP/websocket edge of GraphQL: context, and the limits that apply before parsing."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UnsetType

from gateway.container import Services
from gateway.core.events import EventHub
from gateway.graphql.context import GraphQLContext
from gateway.graphql.errors import map_error
from gateway.graphql.execution import release_tracebacks
from gateway.graphql.limits import MAX_BODY_BYTES
from gateway.graphql.sockets import LegacyWSHandler, TransportWSHandler

TOO_DEEP = "The request is nested too deeply."


class KanmonGraphQL(GraphQL[GraphQLContext, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(
        self,
        services: Services,
        events: EventHub,
        *,
        development: bool,
        legacy_ws: bool = False,
        **kwargs: Any,
    ) -> None:
        """G1: graphql-transport-ws always; the legacy graphql-ws too when `legacy_ws`
        (KANMON_GRAPHQL_WS_LEGACY)."""
        protocols: tuple[str, ...] = (GRAPHQL_TRANSPORT_WS_PROTOCOL,)
        if legacy_ws:
            protocols += (GRAPHQL_WS_PROTOCOL,)
        super().__init__(subscription_protocols=protocols, **kwargs)
        self._services = services
        self._events = events
        self._development = development

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """G2: what strawberry refuses before GraphQL begins (no query, an unknown operation
        name, a mutation by GET, a content type it does not read) it answers in plain text;
        here it is a GraphQL error with a code, as every other answer is."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope, receive=receive))
        except HTTPException as exc:
            code = "NOT_FOUND" if exc.status_code == HTTPStatus.NOT_FOUND else "BAD_USER_INPUT"
            response = _refusal(exc.reason, exc.status_code, code)
        await response(scope, receive, send)

    def decode_json(self, data: str | bytes) -> object:
        """JSON nested thousands deep (a GET's `variables`, a websocket message) exhausts the
        parser's recursion: it is refused as malformed JSON (400, or close 4400)."""
        try:
            return json.loads(data)
        except RecursionError:
            raise json.JSONDecodeError(TOO_DEEP, "", 0) from None

    async def on_ws_connect(self, context: GraphQLContext) -> UnsetType | dict[str, object] | None:
        """G4: credentials in `connection_init` must be a valid bearer session (else close
        4403); none at all is fine, since `loginChallenge` takes its own credential."""
        if context.presents_credentials() and await context.session() is None:
            raise ConnectionRejectionError({"reason": "invalid session"})
        return None

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """G2: every HTTP answer's errors pass through the one mapping, whichever stage
        (parsing, validation, execution) produced them."""
        if result.errors:
            raw = result.errors
            result.errors = [map_error(e, development=self._development) for e in raw]
            release_tracebacks(raw)
        return await super().process_result(request, result)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> GraphQLContext:
        return GraphQLContext(
            request=request, response=response, services=self._services, events=self._events
        )


def _refusal(message: str, status: int, code: str) -> Response:
    body = {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status)


def _rejection(message: str, status: int) -> Response:
    """G3: a request over the limits."""
    return _refusal(message, status, "QUERY_REJECTED")


class RequestLimits:
    """G3: bodies over 64 KB and array batches are refused before strawberry sees them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await _rejection("The request body is over 64 KB.", 413)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _rejection("The request body is over 64 KB.", 413)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body.lstrip()[:1] == b"[":
            await _rejection("Batched requests are not accepted.", 400)(scope, receive, send)
            return
        if _is_json(headers) and (problem := _json_body_problem(body)):
            await _refusal(problem, 400, "BAD_USER_INPUT")(scope, receive, send)
            return
        await self.app(scope, _replay(body), send)


def _is_json(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"


def _json_body_problem(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "The body must be a JSON object."
    except RecursionError:
        # A few thousand nested brackets fit in 64 KB; nothing of the API nests so deep.
        return TOO_DEEP
    return None if isinstance(parsed, dict) else "The body must be a JSON object."


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
