"""The ASGI application: GraphQL on /graphql (HTTP and websocket), health and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from tortoise import connections

from gateway.container import Services, build_services, redis_client
from gateway.core.db import close_database, open_database
from gateway.core.events import EventHub
from gateway.core.jobs import QUEUES, queue_key
from gateway.core.metrics import OUTBOX_BACKLOG, QUEUE_DEPTH, render
from gateway.core.outbox import OutboxMessage
from gateway.graphql.schema import build_schema
from gateway.graphql.socket_limits import WebSocketsPerAddress
from gateway.graphql.view import KanmonGraphQL, RequestLimits
from gateway.logs import RequestIdMiddleware
from gateway.settings import Settings
from gateway.webhooks.sms import sms_webhook_routes

READINESS_TIMEOUT_SECONDS = 2.0

log = logging.getLogger(__name__)


async def healthz(_: Request) -> JSONResponse:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return JSONResponse({"status": "ok"})


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """With `services` given (tests, embedding), the caller owns the database and Redis and
    stops `app.state.events` when done; the services' own settings then govern the domain
    and the webhooks, `settings` only the HTTP surface (development tools)."""
    holder: dict[str, Services] = {}
    if services is not None:
        holder["services"] = services

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if services is not None:
            yield
            return
        await open_database(settings.resolved_database_url())
        holder["services"] = build_services(settings, redis_client(_require_redis(settings)))
        await _say_if_redis_is_silent(holder["services"])
        try:
            yield
        finally:
            await app.state.events.stop()
            await holder["services"].close()
            await close_database()

    async def readyz(_: Request) -> JSONResponse:
        """W2: ready when the database and Redis both answer, each within
        READINESS_TIMEOUT_SECONDS: a frozen server must read as unavailable while the
        orchestrator asks, not hold its probe until TCP gives up."""
        checks = {"database": False, "redis": False}
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
                await connections.get("default").execute_query("SELECT 1")
            checks["database"] = True
        except Exception:
            log.warning("readiness: database unavailable")
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
                checks["redis"] = bool(await holder["services"].redis.ping())
        except Exception:
            log.warning("readiness: redis unavailable")
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "unavailable", "checks": checks},
            status_code=200 if ready else 503,
        )

    schema = build_schema(development=settings.development)
    events = _LazyEvents(holder)
    graphql_app = _LazyGraphQL(holder, events, schema, settings)

    async def metrics(_: Request) -> Response:
        """O3: Prometheus text format; queue depth and outbox backlog are read now."""
        services = holder["services"]
        # What cannot be read is NaN, not an empty queue: an outage must not look idle, and
        # the backlog (read from the database) is most worth seeing while Redis is down.
        depths = dict.fromkeys(QUEUES, math.nan)
        try:
            for queue in QUEUES:
                depths[queue] = float(await services.redis.zcard(queue_key(queue)))
        except Exception:
            log.warning("metrics: could not read the queue depths")
            depths = dict.fromkeys(QUEUES, math.nan)
        for queue, depth in depths.items():
            QUEUE_DEPTH.labels(queue).set(depth)
        try:
            backlog = float(await OutboxMessage.filter(dispatched_at__isnull=True).count())
        except Exception:
            log.warning("metrics: could not read the outbox backlog")
            backlog = math.nan
        OUTBOX_BACKLOG.set(backlog)
        body, content_type = render()
        return Response(body, media_type=content_type)

    routes = [
        Route("/graphql", RequestLimits(graphql_app), methods=["GET", "POST"]),
        WebSocketRoute("/graphql", WebSocketsPerAddress(graphql_app, settings.websockets_per_ip)),
        *sms_webhook_routes(lambda: holder["services"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(RequestIdMiddleware)])
    app.state.events = events
    return app


async def _say_if_redis_is_silent(services: Services) -> None:
    """W2: a gateway whose Redis is down or frozen at startup starts anyway, live (/healthz)
    and not ready (/readyz 503), and becomes ready by itself once Redis answers: its client
    opens connections as commands need them (`container.redis_client`). Under Kubernetes that
    keeps the pod out of the Service until Redis is back, with no restarts: a gateway that
    exited would go into CrashLoopBackOff and, its back-off grown to minutes, come back long
    after Redis did; one that hung in its startup (arq's unbounded ping did that on a frozen
    Redis) answered no probe and was killed over and over. This check only says so in the
    log, within READINESS_TIMEOUT_SECONDS, so an operator knows why the gateway is not ready."""
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            await services.redis.ping()
    except Exception as error:
        log.warning(
            "Redis does not answer at startup; the gateway serves, not ready, until it does",
            extra={
                "error": type(error).__name__,
                "detail": str(error) or f"no answer within {READINESS_TIMEOUT_SECONDS:g} s",
            },
        )


class _LazyEvents:
    """One EventHub per process, on the services' Redis. Its listener starts with the first
    subscription (`EventHub.subscribe`), not the first request: a process that serves only
    queries and mutations publishes, and holds no pub/sub connection."""

    def __init__(self, holder: dict[str, Services]) -> None:
        self._holder = holder
        self.hub: EventHub | None = None

    def get(self) -> EventHub:
        if self.hub is None:
            self.hub = EventHub(self._holder["services"].redis)
        return self.hub

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None


class _LazyGraphQL:
    """The GraphQL view needs the services, which exist only once the lifespan has run."""

    def __init__(
        self,
        holder: dict[str, Services],
        events: _LazyEvents,
        schema: object,
        settings: Settings,
    ) -> None:
        self._holder = holder
        self._events = events
        self._schema = schema
        self._settings = settings
        self._view: KanmonGraphQL | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            async with _tracked(send) as tracked_send:
                await self._view_for_call()(scope, receive, tracked_send)
            return
        await self._view_for_call()(scope, receive, send)

    def _view_for_call(self) -> KanmonGraphQL:
        if self._view is None:
            self._view = KanmonGraphQL(
                self._holder["services"],
                self._events.get(),
                schema=self._schema,
                development=self._settings.development,
                legacy_ws=self._settings.graphql_ws_legacy,
                graphql_ide="graphiql" if self._settings.development else None,
            )
        return self._view


# Open websockets of this process, so a shutdown can say "going away" (1001) to each client
# and let it reconnect to another gateway before the process stops.
_open_websockets: dict[int, Send] = {}


@asynccontextmanager
async def _tracked(send: Send) -> AsyncIterator[Send]:
    key = id(send)
    closed = False

    async def tracked(message: Message) -> None:
        nonlocal closed
        if message["type"] == "websocket.close":
            closed = True
            _open_websockets.pop(key, None)
        if not closed or message["type"] == "websocket.close":
            await send(message)

    _open_websockets[key] = tracked
    try:
        yield tracked
    finally:
        _open_websockets.pop(key, None)


async def close_websockets(code: int = 1001) -> int:
    """O2: ends every websocket of this process with `code` (1001, going away)."""
    sends = list(_open_websockets.values())
    for send in sends:
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": "server shutting down"})
    return len(sends)


def _require_redis(settings: Settings) -> str:
    if not settings.redis_url:
        from gateway.settings import ConfigurationError

        raise ConfigurationError("KANMON_REDIS_URL is required (kanmon dev starts one for you)")
    return settings.redis_url
