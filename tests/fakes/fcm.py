"""A fake of Firebase Cloud Messaging HTTP v1 and of Google's OAuth token endpoint, served over
real HTTP by uvicorn on 127.0.0.1 (API.md "Push").

- `POST /v1/projects/{project}/messages:send` with `Authorization: Bearer <token issued here>`
  and JSON `{"message": {...}}`: 200 `{"name": "projects/{p}/messages/{id}"}`, or the FCM v1
  error scripted for the message's token (bodies as FCM sends them: google.rpc status plus a
  `type.googleapis.com/google.firebase.fcm.v1.FcmError` detail, which is what firebase-admin
  parses into its exception classes). Without a token issued here: 401.
- `POST /token`: the OAuth 2.0 JWT-bearer grant google-auth makes for a service account; the
  assertion's RS256 signature is checked against the key this fake generated.
- `write_service_account(path)` writes a service-account JSON file with that key and a
  `token_uri` pointing at `/token`.

    async with FakeFcm(project_id="kanmon-test") as fcm:
        credentials = fcm.write_service_account(tmp_path / "sa.json")
        fcm.answer_always("dead-token", UNREGISTERED)
        ...  # KANMON_FCM_CREDENTIALS=credentials, KANMON_FCM_ENDPOINT=fcm.endpoint
        assert fcm.messages[0].data == {...}

The server runs as a task on the caller's event loop: a client that makes *blocking* HTTP calls
to it from that same loop (google-auth refreshing a token inline) would deadlock until its
timeout. `workers.adapters.fcm` refreshes tokens in a thread, so it never does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.server import LoopbackServer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth signs service-account assertions for Google's token endpoint whatever the file's
# token_uri (the request itself goes to token_uri); Google requires exactly this audience.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class Answer(StrEnum):
    """How the fake answers one send request."""

    OK = "OK"
    UNREGISTERED = "UNREGISTERED"
    SENDER_ID_MISMATCH = "SENDER_ID_MISMATCH"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # 400 for a malformed registration token (the message says so).
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    # 400 for a bad payload field: the sender's fault, not the token's.
    INVALID_PAYLOAD = "INVALID_PAYLOAD"


OK = Answer.OK
UNREGISTERED = Answer.UNREGISTERED
SENDER_ID_MISMATCH = Answer.SENDER_ID_MISMATCH
QUOTA_EXCEEDED = Answer.QUOTA_EXCEEDED
UNAVAILABLE = Answer.UNAVAILABLE
INTERNAL = Answer.INTERNAL
INVALID_ARGUMENT = Answer.INVALID_ARGUMENT
INVALID_PAYLOAD = Answer.INVALID_PAYLOAD

# status, google.rpc status, message, FcmError errorCode, extra details
_ERRORS: dict[Answer, tuple[int, str, str, str, list[dict[str, Any]]]] = {
    UNREGISTERED: (404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED", []),
    SENDER_ID_MISMATCH: (403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH", []),
    QUOTA_EXCEEDED: (
        429,
        "RESOURCE_EXHAUSTED",
        "Message rate exceeded for this device.",
        "QUOTA_EXCEEDED",
        [],
    ),
    UNAVAILABLE: (503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE", []),
    INTERNAL: (500, "INTERNAL", "Internal error encountered.", "INTERNAL", []),
    INVALID_ARGUMENT: (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        "INVALID_ARGUMENT",
        [
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [
                    {"field": "message.token", "description": "Invalid registration token"}
                ],
            }
        ],
    ),
    INVALID_PAYLOAD: (
        400,
        "INVALID_ARGUMENT",
        "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
        "INVALID_ARGUMENT",
        [
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [
                    {"field": "message.android.ttl", "description": "Invalid value"}
                ],
            }
        ],
    ),
}


def fcm_error_body(answer: Answer) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body FCM v1 sends for `answer` (not OK)."""
    status, rpc_status, message, error_code, extra = _ERRORS[answer]
    details = [{"@type": FCM_ERROR_TYPE, "errorCode": error_code}, *extra]
    return status, {
        "error": {"code": status, "message": message, "status": rpc_status, "details": details}
    }


@dataclass(frozen=True)
class SendRequest:
    """One send request as the fake received it (`answer` None: refused before scripting)."""

    path: str
    project: str | None
    headers: dict[str, str]
    body: dict[str, Any]
    authorized: bool
    answer: Answer | None
    # Send requests fully answered by the fake when this one arrived.
    answered_before: int

    @property
    def message(self) -> dict[str, Any]:
        value = self.body.get("message")
        return value if isinstance(value, dict) else {}

    @property
    def token(self) -> str | None:
        value = self.message.get("token")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class AcceptedMessage:
    """A message FCM would deliver (answered 200)."""

    name: str
    token: str | None
    data: dict[str, str]
    android: dict[str, Any]
    apns: dict[str, Any]
    message: dict[str, Any]
    headers: dict[str, str]
    answered_before: int


@dataclass(frozen=True)
class TokenRequest:
    """One OAuth token request; `claims` from the JWT assertion when its signature checked out."""

    form: dict[str, str]
    claims: dict[str, Any] | None
    access_token: str | None


@dataclass
class _Hold:
    count: int
    timeout: float
    waiting: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Scripts:
    once: dict[str, deque[Answer]] = field(default_factory=dict)
    always: dict[str, Answer] = field(default_factory=dict)


class FakeFcm:
    def __init__(
        self,
        *,
        project_id: str = "kanmon-test",
        client_email: str = "kanmon-push@kanmon-test.iam.gserviceaccount.com",
    ) -> None:
        self.project_id = project_id
        self.client_email = client_email
        self.private_key_id = secrets.token_hex(20)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests: list[SendRequest] = []
        self.messages: list[AcceptedMessage] = []
        self.token_requests: list[TokenRequest] = []
        self.issued_tokens: list[str] = []
        self._answered = 0
        self._scripts = _Scripts()
        self._hold: _Hold | None = None
        self.most_held = 0
        self._loopback = LoopbackServer(self._app, "fake FCM server")
        self._port: int | None = None

    # Lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeFcm is not running; use `async with FakeFcm(...)`")
        return f"http://127.0.0.1:{self._port}"

    @property
    def endpoint(self) -> str:
        """What KANMON_FCM_ENDPOINT should be."""
        return self.base_url

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    async def __aenter__(self) -> Self:
        self._port = await self._loopback.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._loopback.stop()
        self._port = None

    # Service account ---------------------------------------------------------------------

    def service_account(self, *, project_id: str | None = None) -> dict[str, str]:
        """A service-account key (as the Firebase console downloads it) for this fake."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": project_id or self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def write_service_account(self, path: Path, *, project_id: str | None = None) -> Path:
        path.write_text(json.dumps(self.service_account(project_id=project_id), indent=2))
        path.chmod(0o600)
        return path

    # Scripting ---------------------------------------------------------------------------

    def script(self, token: str, *answers: Answer) -> None:
        """Queues answers for `token`, one consumed per send request; then `answer_always` or OK."""
        self._scripts.once.setdefault(token, deque()).extend(answers)

    def answer_always(self, token: str, answer: Answer) -> None:
        """Every send request to `token` gets `answer` (retries included)."""
        self._scripts.always[token] = answer

    def hold_answers(self, count: int, timeout: float) -> None:
        """Accepted sends wait for an answer until `count` of them are waiting at once; one
        that waits `timeout` seconds in vain is answered UNAVAILABLE. `most_held` is the most
        that waited at once: how many sends a client keeps in flight."""
        self._hold = _Hold(count, timeout)
        self.most_held = 0

    async def _held(self) -> bool:
        """False when the hold ran out before enough sends arrived."""
        hold = self._hold
        if hold is None:
            return True
        hold.waiting += 1
        self.most_held = max(self.most_held, hold.waiting)
        if hold.waiting >= hold.count:
            hold.full.set()
        try:
            await asyncio.wait_for(hold.full.wait(), hold.timeout)
        except TimeoutError:
            self._hold = None  # the client never had `count` in flight; stop holding the rest
            return False
        finally:
            hold.waiting -= 1
        return True

    def _next_answer(self, token: str | None) -> Answer:
        if token is None:
            return OK
        queue = self._scripts.once.get(token)
        if queue:
            return queue.popleft()
        return self._scripts.always.get(token, OK)

    # Inspection --------------------------------------------------------------------------

    def requests_to(self, token: str) -> list[SendRequest]:
        return [r for r in self.requests if r.token == token]

    def sent_to(self, token: str) -> list[AcceptedMessage]:
        return [m for m in self.messages if m.token == token]

    # The HTTP side -----------------------------------------------------------------------

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/token" and method == "POST":
            await self._token(send, body)
            return
        match = SEND_PATH.match(path)
        if match is None or method != "POST":
            await _json(send, 404, _rpc_error(404, "NOT_FOUND", "Not Found"))
            return
        await self._send_message(send, path, match.group("project"), headers, body)

    async def _send_message(
        self, send: Send, path: str, project: str, headers: dict[str, str], raw: bytes
    ) -> None:
        answered_before = self._answered
        try:
            parsed = json.loads(raw or b"{}")
        except ValueError:
            parsed = None
        body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        authorized = self._authorized(headers.get("authorization"))
        answer: Answer | None = None
        try:
            if not authorized:
                self.requests.append(
                    SendRequest(path, project, headers, body, False, None, answered_before)
                )
                await _json(
                    send,
                    401,
                    _rpc_error(
                        401,
                        "UNAUTHENTICATED",
                        "Request had invalid authentication credentials. Expected OAuth 2 "
                        "access token, login cookie or other valid authentication credential.",
                    ),
                )
                return
            if project != self.project_id:
                self.requests.append(
                    SendRequest(path, project, headers, body, True, None, answered_before)
                )
                await _json(
                    send, 404, _rpc_error(404, "NOT_FOUND", "Requested entity was not found.")
                )
                return
            message = body.get("message")
            if not isinstance(message, dict) or parsed is None:
                self.requests.append(
                    SendRequest(path, project, headers, body, True, None, answered_before)
                )
                await _json(
                    send, 400, _rpc_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
                )
                return
            token = message.get("token") if isinstance(message.get("token"), str) else None
            answer = self._next_answer(token) if await self._held() else UNAVAILABLE
            self.requests.append(
                SendRequest(path, project, headers, body, True, answer, answered_before)
            )
            if answer is OK:
                name = f"projects/{project}/messages/{secrets.token_hex(8)}"
                self.messages.append(
                    AcceptedMessage(
                        name=name,
                        token=token,
                        data=dict(message.get("data") or {}),
                        android=dict(message.get("android") or {}),
                        apns=dict(message.get("apns") or {}),
                        message=message,
                        headers=headers,
                        answered_before=answered_before,
                    )
                )
                await _json(send, 200, {"name": name})
                return
            status, payload = fcm_error_body(answer)
            await _json(send, status, payload)
        finally:
            self._answered += 1

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        presented = header.removeprefix("Bearer ").strip()
        return any(hmac.compare_digest(presented, issued) for issued in self.issued_tokens)

    async def _token(self, send: Send, raw: bytes) -> None:
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        claims = None
        if form.get("grant_type") == JWT_BEARER_GRANT:
            claims = self._verify_assertion(form.get("assertion", ""))
        if claims is None:
            self.token_requests.append(TokenRequest(form, None, None))
            await _json(
                send,
                400,
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
            )
            return
        access_token = "ya29.fake-" + secrets.token_urlsafe(32)
        self.issued_tokens.append(access_token)
        self.token_requests.append(TokenRequest(form, claims, access_token))
        await _json(
            send, 200, {"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}
        )

    def _verify_assertion(self, assertion: str) -> dict[str, Any] | None:
        """The claims of an RS256 JWT signed by this fake's key, issued by its client email for
        Google's token endpoint (or this fake's); None otherwise."""
        parts = assertion.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
            self._key.public_key().verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, binascii.Error, InvalidSignature):
            return None
        if not isinstance(header, dict) or header.get("alg") != "RS256":
            return None
        if not isinstance(claims, dict):
            return None
        if claims.get("iss") != self.client_email:
            return None
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            return None
        return claims


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rpc_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


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


async def _json(send: Send, status: int, payload: object) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json; charset=UTF-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
