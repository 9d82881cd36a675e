"""G3: one client address holds at most KANMON_WEBSOCKETS_PER_IP websockets open on a gateway
process; one more is refused before its handshake with HTTP 429 and RATE_LIMITED.

A real `kanmon serve` process with the limit at 2. It trusts X-Forwarded-For from 127.0.0.1
(uvicorn's default), so the tests speak for several client addresses from one machine, as a
proxy in front of the gateway would.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from arq.connections import ArqRedis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from gateway.settings import Settings
from tests.gateway_processes import Gateway, running_gateways
from tests.graphql_client import random_ip
from tests.ws_client import PROTOCOL, WAIT_SECONDS

LIMIT = 2


@pytest.fixture(scope="module")
async def gateway(settings: Settings, redis: ArqRedis) -> AsyncIterator[Gateway]:
    env = {"KANMON_WEBSOCKETS_PER_IP": str(LIMIT)}
    async with running_gateways(settings, 1, env, prefix="ws-limits") as (started,):
        yield started


@asynccontextmanager
async def socket_from(gateway: Gateway, address: str) -> AsyncIterator[ClientConnection]:
    """A graphql-transport-ws socket past `connection_ack`, sent on behalf of `address`."""
    async with asyncio.timeout(WAIT_SECONDS):
        connection = await connect(
            gateway.ws_url,
            subprotocols=[PROTOCOL],
            additional_headers={"X-Forwarded-For": address},
            open_timeout=WAIT_SECONDS,
        )
    try:
        await connection.send(json.dumps({"type": "connection_init", "payload": {}}))
        async with asyncio.timeout(WAIT_SECONDS):
            assert json.loads(await connection.recv())["type"] == "connection_ack"
        yield connection
    finally:
        await connection.close()


async def refusal(gateway: Gateway, address: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        async with socket_from(gateway, address):
            pass
    return refused.value


async def opens_again(gateway: Gateway, address: str) -> None:
    """The server counts a socket until its side has seen the close, a moment after the
    client's: retry until a socket opens, within WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            async with socket_from(gateway, address):
                return
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise


async def refused_so_far(gateway: Gateway) -> float:
    """O3: kanmon_websockets_refused_total as /metrics reports it."""
    async with gateway.http() as http:
        text = (await http.get("/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("kanmon_websockets_refused_total ")]
    return float(line.split()[1])


async def test_g3_one_address_holds_at_most_the_limit(gateway: Gateway) -> None:
    address = random_ip()
    async with AsyncExitStack() as held:
        for _ in range(LIMIT):
            await held.enter_async_context(socket_from(gateway, address))
        counted = await refused_so_far(gateway)
        refused = await refusal(gateway, address)
        assert await refused_so_far(gateway) == counted + 1
        assert refused.response.status_code == 429
        assert refused.response.headers["Retry-After"].isdigit()
        (error,) = json.loads(refused.response.body)["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] > 0
        # Another address is not held back by this one.
        async with socket_from(gateway, random_ip()):
            pass
    # Closed sockets are no longer counted.
    await opens_again(gateway, address)


async def test_g3_a_burst_of_sockets_opens_only_the_limit(gateway: Gateway) -> None:
    address = random_ip()
    opened = 0
    refused = 0
    refusal_statuses: list[int] = []
    release = asyncio.Event()
    all_answered = asyncio.Event()
    burst = 20

    async def one() -> None:
        nonlocal opened, refused
        try:
            async with socket_from(gateway, address):
                opened += 1
                if opened + refused == burst:
                    all_answered.set()
                await release.wait()
        except InvalidStatus as exc:
            refusal_statuses.append(exc.response.status_code)
            refused += 1
            if opened + refused == burst:
                all_answered.set()

    tasks = [asyncio.create_task(one()) for _ in range(burst)]
    async with asyncio.timeout(WAIT_SECONDS):
        await all_answered.wait()
    release.set()
    await asyncio.gather(*tasks)
    assert (opened, refused) == (LIMIT, burst - LIMIT)
    assert set(refusal_statuses) == {429}


def random_ipv6_64() -> str:
    """The first four groups of a fresh /64 in the documentation range."""
    return f"2001:db8:{secrets.randbits(16):x}:{secrets.randbits(16):x}"


async def test_g3_ipv6_callers_count_per_64(gateway: Gateway) -> None:
    prefix = random_ipv6_64()
    async with AsyncExitStack() as held:
        for host in range(1, LIMIT + 1):
            await held.enter_async_context(socket_from(gateway, f"{prefix}::{host:x}"))
        refused = await refusal(gateway, f"{prefix}:ffff:ffff:ffff:ffff")
        assert refused.response.status_code == 429
        async with socket_from(gateway, f"{random_ipv6_64()}::1"):
            pass
