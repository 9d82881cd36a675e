"""Per-request context: the services, the caller's session (resolved once) and client facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket
from strawberry.types import Info as StrawberryInfo

from gateway.accounts.models import Session
from gateway.container import Services
from gateway.core.errors import Unauthenticated
from gateway.core.events import EventHub
from gateway.factors.push.models import Device
from gateway.security.service import SettingsView


@dataclass
class GraphQLContext:
    request: HTTPConnection
    response: Any
    services: Services
    events: EventHub
    # Strawberry fills this from `connection_init` on websockets; the attribute must exist.
    connection_params: dict[str, Any] | None = None
    settings: SettingsView | None = None
    _session: Session | None = field(default=None, repr=False)
    _session_loaded: bool = field(default=False, repr=False)
    _device: Device | None = field(default=None, repr=False)
    _device_loaded: bool = field(default=False, repr=False)

    @property
    def over_websocket(self) -> bool:
        return bool(self.request.scope["type"] == "websocket")

    @property
    def ip_address(self) -> str | None:
        return self.request.client.host if self.request.client else None

    def _authorization(self) -> str:
        """The Authorization header; on a websocket, `connection_init`'s `authorization` when
        it has one (G4 names that payload as the socket's credential, so an invalid token there
        closes 4403 even when the upgrade request carried a valid header, and a stale header
        never refuses a valid payload). The upgrade's header counts only without one."""
        if self.connection_params:
            presented = str(self.connection_params.get("authorization") or "")
            if presented.strip():
                return presented
        return str(self.request.headers.get("authorization", ""))

    def presents_credentials(self) -> bool:
        """Whether the client sent an authorization at all, usable or not."""
        return bool(self._authorization().strip())

    def bearer_token(self) -> str | None:
        scheme, _, token = self._authorization().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    @property
    def _per_operation(self) -> bool:
        """One context serves a whole websocket connection, whose operations (subscriptions,
        but also queries and mutations) may come long after `connection_init`: there the
        session is looked up on every call, so a revoked or expired one stops at once."""
        return isinstance(self.request, WebSocket)

    async def session(self, *, with_settings: bool = False) -> Session | None:
        """G4: the bearer token's session, looked up once per request. `with_settings` reads
        the user's settings summary in the same round trip (`settings` then holds it) when
        this is the request's first lookup."""
        if self._session_loaded and not self._per_operation:
            return self._session
        token = self.bearer_token()
        self.settings, self._device, self._device_loaded = None, None, False
        if token and with_settings:
            found = await self.services.security.session_with_settings(token)
            self._session, self.settings = found if found else (None, None)
        else:
            self._session = await self.services.accounts.session_for_token(token) if token else None
        self._session_loaded = True
        return self._session

    async def app_session(self) -> tuple[Session, Device | None]:
        """The session and the device enrolled from it (approvals, denials): one round trip
        when this is the request's first lookup. Raises UNAUTHENTICATED without a session."""
        if not self._session_loaded or self._per_operation:
            token = self.bearer_token()
            found = await self.services.approvals.app_session(token) if token else None
            self._session, self._device = found if found else (None, None)
            self.settings = None
            self._session_loaded = self._device_loaded = True
        if self._session is None:
            raise Unauthenticated()
        if not self._device_loaded:
            self._device = await self.services.push.device_of_session(self._session)
            self._device_loaded = True
        return self._session, self._device

    async def require_session(self) -> Session:
        session = await self.session()
        if session is None:
            raise Unauthenticated()
        return session


Info = StrawberryInfo[GraphQLContext, None]
