"""W2: liveness and readiness over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
from arq.connections import ArqRedis
from starlette.applications import Starlette

from gateway.app import READINESS_TIMEOUT_SECONDS, create_app
from gateway.container import (
    REDIS_COMMAND_TIMEOUT_SECONDS,
    Services,
    build_services,
    redis_client,
)
from gateway.core.db import CONNECT_TIMEOUT_SECONDS, STATEMENT_TIMEOUT_SECONDS, tortoise_config
from gateway.settings import Settings
from tests.graphql_client import LOGIN, PASSWORD, gql


@asynccontextmanager
async def frozen_redis() -> AsyncIterator[ArqRedis]:
    """A client (with the command bound every Kanmon client has) of a server that accepts
    connections but reads nothing and answers nothing, as a frozen Redis (or one partitioned
    away after the handshake) does."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    client = redis_client(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield client
    finally:
        await client.aclose()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def app_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_w2_healthz_answers_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_w2_readyz_answers_200_when_database_and_redis_answer(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": True, "redis": True}


async def test_w2_readyz_answers_503_soon_when_redis_stops_answering(
    settings: Settings, services: Services
) -> None:
    """A Redis that accepts connections but never answers (frozen, or partitioned after the
    handshake): the probe says unavailable within its bound instead of hanging."""
    async with frozen_redis() as frozen:
        app = create_app(settings, replace(services, redis=frozen))
        async with app_client(app) as http:
            response = await asyncio.wait_for(http.get("/readyz"), READINESS_TIMEOUT_SECONDS + 10)
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": True, "redis": False}


def test_w2_a_frozen_postgresql_cannot_hold_requests_or_startup_unbounded() -> None:
    """Serving, workers and admin connect and run every statement within a bound (a request
    then answers SERVICE_UNAVAILABLE); migrations keep no statement bound (an index built on a
    large table takes what it takes)."""
    url = "postgres://postgres@127.0.0.1:5432/kanmon"
    serving = tortoise_config(url)["connections"]["default"]["credentials"]
    migrating = tortoise_config(url, bounded=False)["connections"]["default"]["credentials"]
    assert serving["timeout"] == migrating["timeout"] == CONNECT_TIMEOUT_SECONDS
    assert serving["command_timeout"] == STATEMENT_TIMEOUT_SECONDS
    assert "command_timeout" not in migrating


async def test_w2_a_login_answers_service_unavailable_soon_when_redis_stops_answering(
    settings: Settings, services: Services, redis: ArqRedis, username: str
) -> None:
    """The L3 throttle asks Redis first: with a Redis that accepts connections but answers
    nothing, a login gives up after the command bound instead of waiting for TCP."""
    assert redis.connection_pool.connection_kwargs["socket_timeout"] == (
        REDIS_COMMAND_TIMEOUT_SECONDS
    )
    async with frozen_redis() as frozen:
        app = create_app(settings, build_services(settings, frozen))
        async with app_client(app) as http:
            body = await asyncio.wait_for(
                gql(http, LOGIN, {"u": username, "p": PASSWORD, "k": "WEB"}),
                REDIS_COMMAND_TIMEOUT_SECONDS + 10,
            )
    assert [e["extensions"]["code"] for e in body["errors"]] == ["SERVICE_UNAVAILABLE"]
