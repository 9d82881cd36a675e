"""The HTTP/websocket edge of GraphQL: context, and the limits that apply before parsing."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UnsetType

from gateway.container import Services
from gateway.core.events import EventHub
from gateway.graphql.context import GraphQLContext
from gateway.graphql.errors import map_error
from gateway.graphql.execution import release_tracebacks
from gateway.graphql.limits import MAX_BODY_BYTES


class KanmonGraphQL(GraphQL[GraphQLContext, None]):
    def __init__(
        self, services: Services, events: EventHub, *, development: bool, **kwargs: Any
    ) -> None:
        super().__init__(subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,), **kwargs)
        self._services = services
        self._events = events
        self._development = development

    async def on_ws_connect(self, context: GraphQLContext) -> UnsetType | dict[str, object] | None:
        """G4: a session in `connection_init` must be valid (else close 4403); none at all is
        fine, since `loginChallenge` takes its own credential."""
        if context.bearer_token() is not None and await context.session() is None:
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


def _rejection(message: str, status: int) -> Response:
    body = {
        "data": None,
        "errors": [{"message": message, "extensions": {"code": "QUERY_REJECTED"}}],
    }
    return JSONResponse(body, status_code=status)


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
        if _is_json(headers) and not _valid_json_object(body):
            await _rejection("The body must be a JSON object.", 400)(scope, receive, send)
            return
        await self.app(scope, _replay(body), send)


def _is_json(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json"


def _valid_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
