"""Twilio's Messages API over httpx (API.md): form POST, basic auth, StatusCallback."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from gateway.factors.sms.delivery import (
    CONNECT_FAILED,
    CONNECTION_LOST,
    TIMED_OUT,
    ProviderOutcome,
    ProviderResult,
)

# A refused credential is the provider's problem, not the number's: like an outage, it uses up
# the primary's tries and then the fallback takes over (S3).
PROVIDER_TROUBLE = frozenset({401, 403})

# Transport errors raised before any of the request was written: no connection (refused,
# unreachable, or not opened in time), none free in the pool, a request httpx would not send,
# a proxy that would not tunnel. Any other transport error may come after the provider read the
# request, so its try may have sent the message (S4). A connection that Twilio had closed while
# idle in the pool also ends in one of those, and is counted as possibly sent though it was not:
# possible duplicates are counted, never hidden.
NOTHING_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


class TwilioProvider:
    def __init__(
        self,
        *,
        name: str,
        client: httpx.AsyncClient,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        status_callback: str,
        timeout: float,
    ) -> None:
        self.name = name
        self._client = client
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._auth = (account_sid, auth_token)
        self._sender = sender
        self._callback = status_callback
        self._timeout = timeout

    async def send(self, to: str, body: str) -> ProviderResult:
        form = {"To": to, "From": self._sender, "Body": body, "StatusCallback": self._callback}
        try:
            response = await self._client.post(
                self._url, data=form, auth=self._auth, timeout=self._timeout
            )
        except NOTHING_SENT:
            return ProviderResult(ProviderOutcome.TRANSIENT, error_code=CONNECT_FAILED)
        except httpx.TimeoutException:
            # Reading or writing: the request may have been read already.
            return ProviderResult(ProviderOutcome.TRANSIENT, error_code=TIMED_OUT)
        except httpx.TransportError:
            # Closed or reset (ReadError, WriteError, RemoteProtocolError) before an answer.
            return ProviderResult(ProviderOutcome.TRANSIENT, error_code=CONNECTION_LOST)
        status = response.status_code
        payload = _json(response)
        if status in (200, 201):
            sid = payload.get("sid")
            return ProviderResult(
                ProviderOutcome.SENT, sid=str(sid) if sid else None, http_status=status
            )
        code = str(payload["code"]) if payload.get("code") is not None else None
        if status == 429:
            return ProviderResult(
                ProviderOutcome.TRANSIENT,
                http_status=status,
                error_code=code or "429",
                retry_after=_retry_after(response),
            )
        if status >= 500 or status in PROVIDER_TROUBLE:
            return ProviderResult(ProviderOutcome.TRANSIENT, http_status=status, error_code=code)
        return ProviderResult(ProviderOutcome.PERMANENT, http_status=status, error_code=code)


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
