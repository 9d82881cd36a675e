"""Firebase Cloud Messaging HTTP v1 through firebase-admin's async API (API.md "Push"; P2, P10).

One `FcmSender` owns one firebase `App` with a unique name. firebase-admin's async HTTP client
binds to the event loop that first uses it, so the App is created inside the running loop
(`await FcmSender.create(...)` / `from_settings(...)`, e.g. in the worker's startup) and used only
from that loop; `await sender.close()` deletes it (off the loop: `delete_app` runs `asyncio.run`).

Decisions, knowingly:

- Tokens, not installation ids. `messaging.Message(token=...)` warns in firebase-admin 7.x
  ("Message.token is deprecated. Use Message.fid instead."). Devices enrol FCM *registration
  tokens* (SPEC P1, P9), which FCM v1 still accepts as `message.token`; that one warning is
  filtered where the message is built, nowhere else.
- Retries. firebase-admin's async client retries HTTP 500/503 itself, 4 times with exponential
  back-off (~7 s), which would hold the whole batch's answer for that long. The fan-out already
  retries QUOTA_EXCEEDED / UNAVAILABLE / INTERNAL for the failed devices only, with its own
  back-off (P2), so this adapter *configures* the library's retry down to `transport_retries`
  immediate retries (default 1; the library's first retry has no back-off). 429 is never
  retried by the library and Retry-After is not honoured.
- OAuth. google-auth refreshes the service-account token with a *blocking* `requests` call from
  inside the async client's auth flow, i.e. on the event loop. `send` refreshes the token first
  in a thread when it is missing or about to expire, so the loop never blocks on the token
  endpoint (the service account's `token_uri`, honoured, so a local token endpoint works).
  Only a 401 from FCM (token revoked mid-life) still makes the library refresh on the loop.
- Payload: data keys `type=login_request` and `request_id` only (P10); Android priority high with
  TTL = time left; APNs `apns-priority: 10` and `apns-expiration` = now + TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from datetime import timedelta
from os import PathLike
from typing import Any, Self

import firebase_admin
import httpx
from firebase_admin import credentials, exceptions, messaging
from google.auth import exceptions as google_auth_exceptions
from google.auth.transport import requests as google_auth_requests

from gateway.factors.push.port import MAX_BATCH, PushMessage, PushOutcome, PushResult

log = logging.getLogger(__name__)

GOOGLE_FCM_ENDPOINT = "https://fcm.googleapis.com"
DEFAULT_TIMEOUT_SECONDS = 10
# HTTP statuses firebase-admin's async transport retries by itself (see `_http_client`).
LIBRARY_RETRY_STATUSES = (500, 503)

# The exact warning `messaging.Message(token=...)` raises in firebase-admin 7.x.
_TARGET_WARNING = r"Message\.token is deprecated"


def fcm_send_url(endpoint: str, project_id: str) -> str:
    """`{endpoint}/v1/projects/{project_id}/messages:send` (API.md: KANMON_FCM_ENDPOINT)."""
    return f"{endpoint.rstrip('/')}/v1/projects/{project_id}/messages:send"


def _configure_messaging_service(
    app: firebase_admin.App,
    *,
    endpoint: str | None,
    transport_retries: int,
    timeout_seconds: int,
) -> Any:
    """THE one place that reaches into firebase-admin's private messaging service.

    firebase-admin has no FCM endpoint setting and no retry option. Its `_MessagingService`
    (`messaging._get_messaging_service(app)`, one per App) builds `self._fcm_url` from the class
    constant `_MessagingService.FCM_URL` ('https://fcm.googleapis.com/v1/projects/{0}/messages:send')
    and sends every async message with `self._async_client`, an `_http_client.HttpxAsyncClient`
    created with `DEFAULT_HTTPX_RETRY_CONFIG` (500/503, 4 retries). Here:

    - `_fcm_url` is replaced when an endpoint is configured (KANMON_FCM_ENDPOINT);
    - `_async_client` is replaced by an identical client with a smaller retry budget; it is
      returned so that `FcmSender.close` can close it on its own loop.

    Both attributes are checked before they are touched, so an upgrade that renames them fails
    here loudly instead of silently sending to Google or retrying for seconds;
    `test_fcm_endpoint_override_still_applies` also proves a request reaches the configured
    endpoint. Verified against firebase-admin 7.7.
    """
    from firebase_admin import _http_client, _retry

    service = messaging._get_messaging_service(app)
    project_id = app.project_id
    expected_url = messaging._MessagingService.FCM_URL.format(project_id)
    current_url = getattr(service, "_fcm_url", None)
    if current_url != expected_url:
        raise RuntimeError(
            "firebase-admin's messaging service no longer keeps its send URL in `_fcm_url` "
            f"(found {current_url!r}): update workers.adapters.fcm._configure_messaging_service"
        )
    old_client = getattr(service, "_async_client", None)
    if not isinstance(old_client, _http_client.HttpxAsyncClient):
        raise RuntimeError(
            "firebase-admin's messaging service no longer sends through `_async_client`: "
            "update workers.adapters.fcm._configure_messaging_service"
        )
    if endpoint is not None:
        service._fcm_url = fcm_send_url(endpoint, project_id)
    client = _http_client.HttpxAsyncClient(
        credential=app.credential.get_credential(),
        # A batch is up to 500 requests at once over a bounded pool: the timeout runs from
        # when a request goes out, not while it waits its turn for a connection.
        timeout=httpx.Timeout(timeout_seconds, pool=None),
        retry_config=_retry.HttpxRetry(
            max_retries=transport_retries,
            status_forcelist=list(LIBRARY_RETRY_STATUSES),
            backoff_factor=0.5,
        ),
    )
    service._async_client = client
    # The replaced client never sent anything: no connection to close, nothing bound to a loop.
    return client


def _build_message(message: PushMessage, now: float) -> messaging.Message:
    ttl = max(0, message.ttl_seconds)
    with warnings.catch_warnings():
        # Registration tokens on purpose (module docstring); only this warning, only here.
        warnings.filterwarnings("ignore", message=_TARGET_WARNING, category=DeprecationWarning)
        return messaging.Message(
            token=message.token,
            data={"type": "login_request", "request_id": message.request_id},
            android=messaging.AndroidConfig(priority="high", ttl=timedelta(seconds=ttl)),
            apns=messaging.APNSConfig(
                headers={"apns-priority": "10", "apns-expiration": str(int(now) + ttl)}
            ),
        )


def _invalid_token(error: exceptions.FirebaseError) -> bool:
    text = str(error).lower()
    return "registration token" in text and ("not a valid" in text or "invalid" in text)


def outcome_for(error: BaseException) -> tuple[PushOutcome, str]:
    """Maps one message's error to an outcome and a short detail (an error code; never the
    token, never the server's message, which may quote it)."""
    if isinstance(error, messaging.UnregisteredError):
        return PushOutcome.UNREGISTERED, "UNREGISTERED"
    if isinstance(error, messaging.SenderIdMismatchError):
        return PushOutcome.SENDER_ID_MISMATCH, "SENDER_ID_MISMATCH"
    if isinstance(error, messaging.QuotaExceededError):
        return PushOutcome.RETRY, "QUOTA_EXCEEDED"
    if isinstance(error, exceptions.UnavailableError):
        return PushOutcome.RETRY, "UNAVAILABLE"
    if isinstance(error, exceptions.InternalError):
        return PushOutcome.RETRY, "INTERNAL"
    if isinstance(error, exceptions.InvalidArgumentError) and _invalid_token(error):
        return PushOutcome.UNREGISTERED, "INVALID_REGISTRATION_TOKEN"
    if isinstance(error, messaging.ThirdPartyAuthError):
        return PushOutcome.FAILED, "THIRD_PARTY_AUTH_ERROR"
    if isinstance(error, exceptions.FirebaseError):
        return PushOutcome.FAILED, str(error.code or type(error).__name__)[:64]
    return PushOutcome.FAILED, type(error).__name__[:64]


class FcmSender:
    """`PushSender` over FCM HTTP v1. Build with `await FcmSender.create(...)` inside the loop
    that will use it; `await close()` when done."""

    def __init__(
        self,
        app: firebase_admin.App,
        http: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._http = http
        self._loop = loop
        self._clock = clock
        self._credential: Any = app.credential.get_credential()
        self._refresh_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def create(
        cls,
        credentials_path: str | PathLike[str],
        *,
        project_id: str | None = None,
        endpoint: str | None = None,
        transport_retries: int = 1,
        timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> Self:
        """Loads the service-account file, creates a uniquely named App bound to the running
        loop and points its messaging service at `endpoint` (Google's when None)."""
        loop = asyncio.get_running_loop()
        certificate = await asyncio.to_thread(credentials.Certificate, str(credentials_path))
        options: dict[str, Any] = {"httpTimeout": timeout_seconds}
        if project_id:
            options["projectId"] = project_id
        app = firebase_admin.initialize_app(
            certificate, options=options, name=f"kanmon-fcm-{uuid.uuid4().hex}"
        )
        try:
            if not app.project_id:
                raise ValueError(
                    "no FCM project id: set KANMON_FCM_PROJECT_ID or use a service-account "
                    "file with a project_id"
                )
            http = _configure_messaging_service(
                app,
                endpoint=endpoint,
                transport_retries=transport_retries,
                timeout_seconds=timeout_seconds,
            )
        except BaseException:
            await asyncio.to_thread(firebase_admin.delete_app, app)
            raise
        return cls(app, http, loop, clock=clock)

    @classmethod
    async def from_settings(
        cls,
        credentials_path: str | PathLike[str],
        project_id: str | None,
        endpoint: str | None,
    ) -> Self:
        """From KANMON_FCM_CREDENTIALS, KANMON_FCM_PROJECT_ID (None: the file's project_id) and
        KANMON_FCM_ENDPOINT (None: Google's)."""
        return await cls.create(credentials_path, project_id=project_id, endpoint=endpoint)

    @property
    def project_id(self) -> str:
        return str(self._app.project_id)

    @property
    def app_name(self) -> str:
        return str(self._app.name)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Close the HTTP client here, on the loop its connections belong to: delete_app closes it
        # again (a no-op by then) with asyncio.run() in another thread, which would otherwise
        # tear this loop's sockets down from that thread (asyncio debug mode refuses it).
        try:
            await self._http.aclose()
        finally:
            # delete_app runs asyncio.run(): not allowed on a running loop, hence the thread.
            await asyncio.to_thread(firebase_admin.delete_app, self._app)

    async def send(self, messages: list[PushMessage]) -> list[PushResult]:
        """One result per message, in order; any number of messages, sent in batches of at most
        MAX_BATCH, one batch after another."""
        if self._closed:
            raise RuntimeError("FcmSender is closed")
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("FcmSender used from another event loop than the one it was made in")
        results: list[PushResult] = []
        for start in range(0, len(messages), MAX_BATCH):
            results.extend(await self._send_batch(messages[start : start + MAX_BATCH]))
        return results

    async def _send_batch(self, batch: Sequence[PushMessage]) -> list[PushResult]:
        results: dict[int, PushResult] = {}
        to_send: list[tuple[int, messaging.Message]] = []
        now = self._clock()
        for index, message in enumerate(batch):
            if message.ttl_seconds <= 0:
                # The request has expired: a push now would only be noise.
                results[index] = PushResult(message.device_id, PushOutcome.FAILED, "expired")
            elif not message.token:
                results[index] = PushResult(message.device_id, PushOutcome.FAILED, "no_token")
            else:
                to_send.append((index, _build_message(message, now)))
        if to_send:
            failure = await self._refresh_token()
            if failure is not None:
                outcome, detail = failure
                for index, _ in to_send:
                    results[index] = PushResult(batch[index].device_id, outcome, detail)
            else:
                sent = await self._send_each(to_send, batch)
                for (index, _), result in zip(to_send, sent, strict=True):
                    results[index] = result
        return [results[i] for i in range(len(batch))]

    async def _send_each(
        self, to_send: list[tuple[int, messaging.Message]], batch: Sequence[PushMessage]
    ) -> list[PushResult]:
        try:
            response = await messaging.send_each_async(
                [m for _, m in to_send], dry_run=False, app=self._app
            )
        except exceptions.FirebaseError as error:
            # The batch as a whole broke (firebase-admin wraps anything unexpected in
            # UnknownError); some messages may have gone out, so none is sent twice.
            log.error("fcm batch failed: %s", type(error).__name__)
            detail = str(error.code or type(error).__name__)[:64]
            return [PushResult(batch[i].device_id, PushOutcome.FAILED, detail) for i, _ in to_send]
        return [
            self._result(batch[index], answer)
            for (index, _), answer in zip(to_send, response.responses, strict=True)
        ]

    def _result(self, message: PushMessage, answer: Any) -> PushResult:
        if answer.success:
            return PushResult(message.device_id, PushOutcome.SENT)
        outcome, detail = outcome_for(answer.exception)
        if outcome is PushOutcome.FAILED:
            log.warning("fcm push failed for device %s: %s", message.device_id, detail)
        return PushResult(message.device_id, outcome, detail)

    async def _refresh_token(self) -> tuple[PushOutcome, str] | None:
        """Refreshes the OAuth token off the loop when needed; an outcome for every message of
        the batch if that fails."""
        if self._credential.valid:
            return None
        async with self._refresh_lock:
            if self._credential.valid:
                return None
            try:
                await asyncio.to_thread(self._credential.refresh, google_auth_requests.Request())
            except google_auth_exceptions.RefreshError as error:
                if getattr(error, "retryable", False):
                    return PushOutcome.RETRY, "OAUTH_UNAVAILABLE"
                log.error("fcm: the service account's token request was refused: %s", error)
                return PushOutcome.FAILED, "OAUTH_REFUSED"
            except google_auth_exceptions.TransportError:
                return PushOutcome.RETRY, "OAUTH_UNAVAILABLE"
        return None
