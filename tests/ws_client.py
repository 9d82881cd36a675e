"""A small graphql-transport-ws client for the tests, on the `websockets` package.

One reader task per socket sorts incoming messages by subscription id, answers the server's
pings, and records how the socket closed. Every wait is bounded, so a broken server fails a
test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

PROTOCOL = Subprotocol("graphql-transport-ws")
WAIT_SECONDS = 20.0


class ProtocolViolation(AssertionError):
    """The server sent something graphql-transport-ws does not allow here."""


@dataclass
class Message:
    type: str
    payload: Any = None


class Subscription:
    """The messages of one `subscribe` operation, in order."""

    def __init__(self, socket: GraphQLSocket, operation_id: str) -> None:
        self._socket = socket
        self.id = operation_id
        self.messages: asyncio.Queue[Message] = asyncio.Queue()

    async def receive(self, seconds: float = WAIT_SECONDS) -> Message:
        """The next `next`, `error` or `complete` for this operation (or the socket's close)."""
        try:
            async with asyncio.timeout(seconds):
                return await self.messages.get()
        except TimeoutError:
            raise AssertionError(
                f"subscription {self.id}: nothing arrived within {seconds:.0f} s"
            ) from None

    async def next(self, seconds: float = WAIT_SECONDS) -> dict[str, Any]:
        """The `data` of the next `next` message; anything else fails the test."""
        message = await self.receive(seconds)
        if message.type != "next":
            raise ProtocolViolation(f"expected next, got {message.type}: {message.payload}")
        payload: dict[str, Any] = message.payload
        if payload.get("errors"):
            raise ProtocolViolation(f"next carried errors: {payload['errors']}")
        data: dict[str, Any] = payload["data"]
        return data

    async def error(self, seconds: float = WAIT_SECONDS) -> list[dict[str, Any]]:
        """The errors of an `error` message, or of a `next` that carries only errors."""
        message = await self.receive(seconds)
        if message.type == "error":
            errors: list[dict[str, Any]] = message.payload
            return errors
        if message.type == "next" and message.payload.get("errors"):
            found: list[dict[str, Any]] = message.payload["errors"]
            return found
        raise ProtocolViolation(f"expected an error, got {message.type}: {message.payload}")

    async def completed(self, seconds: float = WAIT_SECONDS) -> None:
        message = await self.receive(seconds)
        if message.type != "complete":
            raise ProtocolViolation(f"expected complete, got {message.type}: {message.payload}")

    async def stop(self) -> None:
        """The client's `complete`: the server ends the operation."""
        await self._socket.send({"id": self.id, "type": "complete"})


class GraphQLSocket:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._subscriptions: dict[str, Subscription] = {}
        self._control: asyncio.Queue[Message] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="graphql-ws-reader")

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await self.send({"type": "pong"})
                    continue
                operation = message.get("id")
                if operation is not None and operation in self._subscriptions:
                    await self._subscriptions[operation].messages.put(
                        Message(kind, message.get("payload"))
                    )
                else:
                    await self._control.put(Message(kind, message.get("payload")))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code
            self.close_reason = self.connection.close_reason
            self.closed.set()
            for subscription in self._subscriptions.values():
                await subscription.messages.put(Message("closed", self.close_code))
            await self._control.put(Message("closed", self.close_code))

    async def _control_message(self, seconds: float) -> Message:
        try:
            async with asyncio.timeout(seconds):
                return await self._control.get()
        except TimeoutError:
            raise AssertionError(f"no control message within {seconds:.0f} s") from None

    async def initialise(
        self, payload: dict[str, Any] | None, seconds: float = WAIT_SECONDS
    ) -> Message:
        """Sends `connection_init`; returns the answer (`connection_ack`, or `closed`)."""
        await self.send({"type": "connection_init", "payload": payload or {}})
        return await self._control_message(seconds)

    async def ping(self, seconds: float = WAIT_SECONDS) -> None:
        await self.send({"type": "ping"})
        answer = await self._control_message(seconds)
        if answer.type != "pong":
            raise ProtocolViolation(f"expected pong, got {answer.type}")

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> Subscription:
        operation = str(next(self._ids))
        subscription = Subscription(self, operation)
        self._subscriptions[operation] = subscription
        await self.send(
            {
                "id": operation,
                "type": "subscribe",
                "payload": {"query": query, "variables": variables or {}},
            }
        )
        return subscription

    async def wait_closed(self, seconds: float = WAIT_SECONDS) -> int | None:
        """The close code the server sent."""
        try:
            async with asyncio.timeout(seconds):
                await self.closed.wait()
        except TimeoutError:
            raise AssertionError(f"the socket was still open after {seconds:.0f} s") from None
        return self.close_code

    async def aclose(self) -> None:
        await self.connection.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                async with asyncio.timeout(WAIT_SECONDS):
                    await self._reader


@asynccontextmanager
async def open_socket(
    url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[GraphQLSocket]:
    """A graphql-transport-ws socket whose `connection_init` the caller sends; `headers` go
    on the upgrade request (native clients can send some)."""
    async with asyncio.timeout(WAIT_SECONDS):
        connection = await connect(
            url, subprotocols=[PROTOCOL], open_timeout=WAIT_SECONDS, additional_headers=headers
        )
    if connection.subprotocol != PROTOCOL:
        await connection.close()
        raise ProtocolViolation(f"server chose subprotocol {connection.subprotocol!r}")
    socket = GraphQLSocket(connection)
    socket.start()
    try:
        yield socket
    finally:
        await socket.aclose()


@asynccontextmanager
async def graphql_socket(url: str, token: str | None = None) -> AsyncIterator[GraphQLSocket]:
    """A socket past `connection_ack`, authenticated with `token` when given (G4)."""
    async with open_socket(url) as socket:
        payload = {"authorization": f"Bearer {token}"} if token else {}
        answer = await socket.initialise(payload)
        if answer.type != "connection_ack":
            raise ProtocolViolation(
                f"expected connection_ack, got {answer.type} (close {socket.close_code})"
            )
        yield socket
