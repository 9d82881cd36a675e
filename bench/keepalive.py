"""A minimal HTTP/1.1 keep-alive client for the benches: a JSON POST and an answer with a
Content-Length, nothing more. httpx costs about 1 ms of client CPU per request on the 2-core
bench machine (its pool, models and anyio streams); on a machine the gateways share with the
bench, that CPU and the latency it adds before the request leaves would count against the
server. Both benches import it from their own directory (`python bench/<name>.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Protocol


class RequestFailed(Exception):
    """A request that did not answer with data: its GraphQL code, or the HTTP status."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class HttpError(Exception):
    """The connection failed or answered something that is not HTTP/1.1 with a length."""


class Http(Protocol):
    async def post_json(self, path: str, payload: dict[str, Any], token: str | None) -> Any:
        """POST `payload` as JSON; the parsed body of a 200, else RequestFailed(HTTP_<n>)."""
        ...


class KeepAliveConnection:
    """One connection, one request at a time. With 32 of them, httpx took 0.5 to 0.7 of a core
    from the two the server has in bench/login_totp.py; this costs a fraction of that."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self._host, self._port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def post_json(self, path: str, payload: dict[str, Any], token: str | None) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}\r\n"
        )
        try:
            if self._writer is None:
                await self.connect()
            reader, writer = self._reader, self._writer
            assert reader is not None
            assert writer is not None
            writer.write(head.encode("ascii") + body)
            status, length, close = await self._read_head(reader)
            answer = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            raise HttpError(type(exc).__name__) from exc
        if close:
            await self.close()
        if status != 200:
            raise RequestFailed(f"HTTP_{status}")
        return json.loads(answer)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
        status_line = await reader.readline()
        if not status_line.startswith(b"HTTP/1.1 "):
            raise ValueError("not an HTTP/1.1 answer")
        status = int(status_line.split()[1])
        length: int | None = None
        close = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        if length is None:
            raise ValueError("no Content-Length")
        return status, length, close


async def graphql(
    http: Http,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = await http.post_json(
        "/graphql", {"query": query, "variables": variables or {}}, token
    )
    errors = body.get("errors")
    if errors:
        raise RequestFailed(str(errors[0].get("extensions", {}).get("code", "UNKNOWN")))
    data: dict[str, Any] = body["data"]
    return data
