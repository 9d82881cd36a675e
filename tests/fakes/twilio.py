"""A fake of Twilio's Messages API (API.md), served over real HTTP by uvicorn on 127.0.0.1.

It answers `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form To, From, Body,
StatusCallback; HTTP basic auth AccountSid:AuthToken) the way Twilio does, records every request,
can be scripted to fail (timeouts, 5xx, 429 with Retry-After, Twilio errors 21211 and 21610, a
connection closed or reset after the message was taken), and posts signed delivery receipts back
to a message's StatusCallback.

    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        twilio.script(TIMEOUT, http_error(503), OK, to="+14155552671")
        ...  # point KANMON_TWILIO_BASE_URL at twilio.base_url
        await twilio.post_receipt(client, sid, "delivered")

The signature here is written independently of `gateway.factors.sms.signature`, so a test that
signs with the fake checks the gateway against Twilio's documented algorithm, not against itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode

import httpx

from tests.fakes.server import LoopbackServer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
# However a test goes wrong, a held request ends by itself after this long.
HOLD_CAP_SECONDS = 30.0
WAIT_CAP_SECONDS = 10.0


class Kind(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    RATE_LIMITED = "rate_limited"
    TWILIO_ERROR = "twilio_error"
    HANG_UP = "hang_up"
    RESET = "reset"


# The behaviours under which the fake takes the message (a sid, in `FakeTwilio.messages`), whether
# or not the client hears so.
ACCEPTING = frozenset({Kind.OK, Kind.HANG_UP, Kind.RESET})


@dataclass(frozen=True)
class Behaviour:
    """How the fake answers one send request."""

    kind: Kind
    status: int = 201
    error_code: int | None = None
    message: str | None = None
    retry_after: str | None = None
    # Wait for `FakeTwilio.release()` (or the cap) before answering: lets a test act while a
    # send is in flight.
    held: bool = False

    def held_until_released(self) -> Behaviour:
        return replace(self, held=True)


OK = Behaviour(Kind.OK)
# No answer until the client gives up (it disconnects), `release()` is called, or the cap.
TIMEOUT = Behaviour(Kind.TIMEOUT, status=504)
INVALID_NUMBER = Behaviour(
    Kind.TWILIO_ERROR, 400, 21211, "The 'To' number is not a valid phone number."
)
UNSUBSCRIBED = Behaviour(Kind.TWILIO_ERROR, 400, 21610, "Attempt to send to unsubscribed recipient")
# The message is taken (Twilio sends it), then the connection closes without an answer: the
# client reads the end of the stream where the response should be.
HANG_UP = Behaviour(Kind.HANG_UP)
# The same, ended by a TCP reset (RST) instead of an orderly close.
RESET = Behaviour(Kind.RESET)


def http_error(status: int) -> Behaviour:
    """A 5xx from Twilio's edge: JSON with Twilio's 20xxx code for the status."""
    messages = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
    return Behaviour(Kind.HTTP_ERROR, status, 20000 + status, messages.get(status, "Server Error"))


def rate_limited(retry_after: float | int = 0) -> Behaviour:
    return Behaviour(
        Kind.RATE_LIMITED, 429, 20429, "Too Many Requests", retry_after=str(retry_after)
    )


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    account_sid: str | None
    form: dict[str, str]
    auth_ok: bool
    at: datetime
    behaviour: Behaviour | None
    sid: str | None

    @property
    def to(self) -> str | None:
        return self.form.get("To")


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """X-Twilio-Signature: base64(HMAC-SHA1(token, url + name1value1name2value2...)), the
    parameters sorted by name."""
    payload = url
    for name, value in sorted(params, key=lambda pair: pair[0]):
        payload += name + value
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass
class _Scripts:
    anyone: deque[Behaviour] = field(default_factory=deque)
    by_number: dict[str, deque[Behaviour]] = field(default_factory=dict)


class FakeTwilio:
    def __init__(self, *, account_sid: str, auth_token: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[RecordedRequest] = []
        # Messages taken (answered 201, or hung up on after taking them: see ACCEPTING), by sid.
        self.messages: dict[str, RecordedRequest] = {}
        # What to do once the scripts are used up.
        self.default: Behaviour = OK
        self._scripts = _Scripts()
        self._arrived = asyncio.Condition()
        self._release = asyncio.Event()
        self._loopback = LoopbackServer(self._app, "fake Twilio server")
        self._port: int | None = None

    # Lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeTwilio is not running; use `async with FakeTwilio(...)`")
        return f"http://127.0.0.1:{self._port}"

    async def __aenter__(self) -> Self:
        self._port = await self._loopback.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        await self._loopback.stop()
        self._port = None

    # Scripting ---------------------------------------------------------------------------

    def script(self, *behaviours: Behaviour, to: str | None = None) -> None:
        """Queues behaviours, one consumed per send request (for `to` only, if given)."""
        if to is None:
            self._scripts.anyone.extend(behaviours)
        else:
            self._scripts.by_number.setdefault(to, deque()).extend(behaviours)

    def release(self) -> None:
        """Lets every held request answer; later held requests wait for the next release."""
        self._release.set()
        self._release = asyncio.Event()

    def _next_behaviour(self, to: str | None) -> Behaviour:
        queue = self._scripts.by_number.get(to) if to is not None else None
        if queue:
            return queue.popleft()
        if self._scripts.anyone:
            return self._scripts.anyone.popleft()
        return self.default

    # Inspection --------------------------------------------------------------------------

    def requests_to(self, number: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.to == number]

    def sent_to(self, number: str) -> list[RecordedRequest]:
        """Messages accepted for `number`, in order."""
        return [r for r in self.messages.values() if r.to == number]

    async def wait_for_requests(
        self, count: int, *, to: str | None = None
    ) -> list[RecordedRequest]:
        """Waits until at least `count` send requests (to `to`, if given) have arrived (at most
        WAIT_CAP_SECONDS: a test waiting for a request that never comes fails, not hangs)."""

        def enough() -> bool:
            return len(self.requests_to(to) if to else self.requests) >= count

        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(enough), WAIT_CAP_SECONDS)
        return self.requests_to(to) if to else list(self.requests)

    # Receipts ----------------------------------------------------------------------------

    def receipt_params(
        self, sid: str, status: str, error_code: str | None = None
    ) -> list[tuple[str, str]]:
        """The form Twilio posts to a StatusCallback (the fields Twilio sends, not only the
        ones the gateway reads: the signature covers them all)."""
        sent = self.messages.get(sid)
        params = [
            ("AccountSid", self.account_sid),
            ("ApiVersion", "2010-04-01"),
            ("MessageSid", sid),
            ("MessageStatus", status),
            ("SmsSid", sid),
            ("SmsStatus", status),
        ]
        if sent is not None:
            params += [("From", sent.form.get("From", "")), ("To", sent.form.get("To", ""))]
        if error_code is not None:
            params.append(("ErrorCode", error_code))
        return params

    async def post_receipt(
        self,
        client: httpx.AsyncClient,
        sid: str,
        status: str,
        *,
        error_code: str | None = None,
        url: str | None = None,
        auth_token: str | None = None,
        signed: bool = True,
    ) -> httpx.Response:
        """Posts a delivery receipt for message `sid` to its StatusCallback (or `url`), signed
        with this account's auth token (or `auth_token`; `signed=False` sends no signature).
        `client` decides where it goes: an ASGI app through httpx.ASGITransport, or a server."""
        if url is None:
            sent = self.messages.get(sid)
            if sent is None or "StatusCallback" not in sent.form:
                raise LookupError(f"no StatusCallback recorded for {sid}; pass url=")
            url = sent.form["StatusCallback"]
        params = self.receipt_params(sid, status, error_code)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signed:
            headers["X-Twilio-Signature"] = twilio_signature(
                auth_token if auth_token is not None else self.auth_token, url, params
            )
        return await client.post(url, content=urlencode(params).encode(), headers=headers)

    # The HTTP side -----------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        match = MESSAGES_PATH.match(path)
        path_sid = match.group("sid") if match else None
        auth_ok = path_sid is not None and self._auth_ok(path_sid, headers.get("authorization"))
        if match is None or method != "POST":
            await self._record(method, path, path_sid, form, auth_ok, None, None)
            await _json(send, 404, _error(20404, "The requested resource was not found", 404))
            return
        if not auth_ok:
            await self._record(method, path, path_sid, form, auth_ok, None, None)
            await _json(send, 401, _error(20003, "Authenticate", 401))
            return
        behaviour = self._next_behaviour(form.get("To"))
        sid = "SM" + secrets.token_hex(16) if behaviour.kind in ACCEPTING else None
        await self._record(method, path, path_sid, form, auth_ok, behaviour, sid)
        if behaviour.kind in (Kind.HANG_UP, Kind.RESET):
            await _hang_up(receive, reset=behaviour.kind is Kind.RESET)
            return
        if behaviour.kind is Kind.TIMEOUT:
            await self._hold(receive, until_disconnect=True)
        elif behaviour.held:
            await self._hold(receive, until_disconnect=False)
        await self._answer(send, behaviour, form, sid)

    async def _answer(
        self, send: Send, behaviour: Behaviour, form: dict[str, str], sid: str | None
    ) -> None:
        if behaviour.kind is Kind.OK:
            now = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
            await _json(
                send,
                201,
                {
                    "sid": sid,
                    "account_sid": self.account_sid,
                    "status": "queued",
                    "to": form.get("To"),
                    "from": form.get("From"),
                    "body": form.get("Body"),
                    "num_segments": "1",
                    "direction": "outbound-api",
                    "api_version": "2010-04-01",
                    "date_created": now,
                    "date_updated": now,
                    "error_code": None,
                    "error_message": None,
                    "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
                },
            )
            return
        extra = []
        if behaviour.retry_after is not None:
            extra.append((b"retry-after", behaviour.retry_after.encode()))
        payload = _error(behaviour.error_code, behaviour.message or "Error", behaviour.status)
        await _json(send, behaviour.status, payload, extra)

    def _auth_ok(self, path_sid: str, header: str | None) -> bool:
        if path_sid != self.account_sid or not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header.removeprefix("Basic ").strip(), validate=True)
            user, _, password = decoded.decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.account_sid) and hmac.compare_digest(
            password, self.auth_token
        )

    async def _record(
        self,
        method: str,
        path: str,
        account_sid: str | None,
        form: dict[str, str],
        auth_ok: bool,
        behaviour: Behaviour | None,
        sid: str | None,
    ) -> None:
        recorded = RecordedRequest(
            method, path, account_sid, form, auth_ok, datetime.now(UTC), behaviour, sid
        )
        self.requests.append(recorded)
        if sid is not None:
            self.messages[sid] = recorded
        async with self._arrived:
            self._arrived.notify_all()

    async def _hold(self, receive: Receive, *, until_disconnect: bool) -> None:
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._release.wait())}
        if until_disconnect:
            waiters.add(asyncio.ensure_future(_disconnected(receive)))
        _, pending = await asyncio.wait(
            waiters, timeout=HOLD_CAP_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _hang_up(receive: Receive, *, reset: bool) -> None:
    """Ends the connection without an answer, after the whole request was read. ASGI has no
    message for that; uvicorn's h11 protocol (LoopbackServer's) hands the app the `receive` of
    its request cycle, which holds the connection's transport. Returns once uvicorn saw the
    connection end, so it does not answer 500 for the app."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.Transport):
        raise RuntimeError("hanging up needs uvicorn's h11 request cycle; did uvicorn change?")
    if reset:
        # Closing with a zero linger time sends RST instead of FIN.
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    await asyncio.wait_for(_disconnected(receive), HOLD_CAP_SECONDS)


def _error(code: int | None, message: str, status: int) -> dict[str, object]:
    """Twilio's error body."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
        "status": status,
    }


async def _json(
    send: Send,
    status: int,
    payload: object,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
