"""G3: how many websockets one client address may hold open on a gateway process.

An open subscription socket costs the process about 52 KiB whether or not it ever sends a
message, and `loginChallenge` needs no session: without a cap, one client could open sockets
until the process runs out of memory and every waiting browser and app loses its push events.
The count is kept per process, in memory: it is exact, costs no round trip, and cannot be left
behind by a process that dies (a shared count in Redis would be, by the connections it held).
An address can therefore hold the limit on each gateway process behind the load balancer. IPv6
callers count per /64, as every per-address window does (`core.addresses`).
"""

from __future__ import annotations

import json
from collections import Counter

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.addresses import throttle_key
from gateway.core.errors import RateLimited
from gateway.core.metrics import WEBSOCKETS_REFUSED

RETRY_AFTER_SECONDS = 5
# The ASGI extension that lets a websocket be refused with an HTTP answer of our choosing
# (uvicorn has it); without it, closing before the handshake is answered makes the server send
# 403.
HTTP_RESPONSE_EXTENSION = "websocket.http.response"


class WebSocketsPerAddress:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._open: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = throttle_key(client[0]) if client else ""
        if self._open[key] >= self.limit:
            await self._refuse(scope, receive, send)
            return
        self._open[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """429 with the error every RATE_LIMITED answer carries, before the handshake is
        answered: the socket never opens, so it costs nothing past this call."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        WEBSOCKETS_REFUSED.inc()
        if HTTP_RESPONSE_EXTENSION not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008})
            return
        refusal = RateLimited(
            RETRY_AFTER_SECONDS, f"At most {self.limit} websockets may be open from one address."
        )
        error = {"message": refusal.message, "extensions": refusal.extensions}
        body = json.dumps({"data": None, "errors": [error]}).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
