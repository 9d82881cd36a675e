"""The websocket protocols' handlers, held to the same rules: graphql-transport-ws, and the
legacy graphql-ws when configured (G1). Strawberry's own handlers take a client message's
fields on trust; these close the socket on malformed ones instead of failing later with an
unmasked error or a dead connection."""

from __future__ import annotations

import asyncio
import contextlib

from graphql import GraphQLError
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    Message,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage,
    OperationMessage,
    StartMessage,
)

from gateway.graphql.context import GraphQLContext

# Operations running at once on one socket. A waiting page needs one subscription and an app
# two; each open one holds about 52 KiB of the gateway, so a socket may not hold thousands.
MAX_OPERATIONS_PER_SOCKET = 10
LIMIT_REACHED = GraphQLError(
    f"At most {MAX_OPERATIONS_PER_SOCKET} operations run at once on one socket.",
    extensions={"code": "QUERY_REJECTED"},
).formatted


def well_formed(payload: object) -> bool:
    """A subscribe/start payload as the protocols define it: a query string, and variables
    and an operation name that are absent, null or of their own type."""
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return False
    variables = payload.get("variables")
    name = payload.get("operationName")
    return isinstance(variables, dict | None) and isinstance(name, str | None)


# Messages that name an operation: the protocol gives them a string `id`.
OPERATION_MESSAGES = frozenset({"subscribe", "complete"})


def well_formed_message(message: object) -> bool:
    """A JSON object, and a string `id` on the messages that carry one. Strawberry indexes
    the message and keys its operations by the id: an array, or an id that is an array or
    an object, would fail inside the handler and drop the socket without a close code."""
    if not isinstance(message, dict):
        return False
    return message.get("type") not in OPERATION_MESSAGES or isinstance(message.get("id"), str)


class TransportWSHandler(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    """graphql-transport-ws: a message that is not one the protocol specifies (not an object,
    an operation id that is not a string, a `subscribe` whose payload is not well formed)
    closes 4400, as the protocol says of invalid messages (strawberry would run it and fail
    inside)."""

    async def handle_message(self, message: Message) -> None:
        if not well_formed_message(message):
            await self.handle_invalid_message("Invalid message")
            return
        await super().handle_message(message)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if not well_formed(message.get("payload")):
            await self.websocket.close(code=4400, reason="Invalid subscribe payload")
            return
        # Strawberry's own limit answers without a code (G2); the checks before it (4401,
        # 4409) stay strawberry's.
        if (
            self.connection_acknowledged
            and message["id"] not in self.operations
            and len(self.operations) >= MAX_OPERATIONS_PER_SOCKET
        ):
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [LIMIT_REACHED]}
            )
            return
        await super().handle_subscribe(message)


class LegacyWSHandler(BaseGraphQLWSHandler[GraphQLContext, None]):
    """G1: the legacy graphql-ws protocol, held to what graphql-transport-ws does here.
    Strawberry's handler would close 1011 on refused credentials (G4 says 4403), fail the
    whole connection on a message without its fields, accept a second `connection_init`
    and leave a socket that never sends one open for good."""

    _init_received = False

    async def handle(self) -> None:
        timeout = asyncio.create_task(self._close_if_never_initialised())
        try:
            await super().handle()
        finally:
            timeout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timeout

    async def _close_if_never_initialised(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._init_received:
            with contextlib.suppress(RuntimeError):  # the client left meanwhile
                await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    async def handle_message(self, message: OperationMessage) -> None:
        try:
            await super().handle_message(message)
        except (KeyError, TypeError):  # `start` without a payload or query, a non-object
            await self.websocket.close(code=4400, reason="Failed to parse message")

    async def handle_start(self, message: StartMessage) -> None:
        if not well_formed(message.get("payload")):
            await self.websocket.close(code=4400, reason="Failed to parse message")
            return
        if message["id"] not in self.tasks and len(self.tasks) >= MAX_OPERATIONS_PER_SOCKET:
            await self.send_message(
                {"type": "error", "id": message["id"], "payload": LIMIT_REACHED}
            )
            return
        await super().handle_start(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            await self.websocket.close(code=4400, reason="Invalid connection init payload")
            return
        if self._init_received:
            await self.websocket.close(code=4429, reason="Too many initialisation requests")
            return
        self._init_received = True
        self.context.connection_params = payload
        try:
            acknowledgement = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as rejection:
            await self.send_message({"type": "connection_error", "payload": rejection.payload})
            await self.websocket.close(code=4403, reason="Forbidden")
            return
        if isinstance(acknowledgement, dict):
            await self.send_message({"type": "connection_ack", "payload": acknowledgement})
        else:
            await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())
