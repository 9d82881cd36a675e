"""The process's event listener (P3, P5): every subscriber of a gateway process hears decisions
through it, so no failure of the Redis client may end it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, cast

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from gateway.core.events import EventHub, challenge_channel, publish

WAIT_SECONDS = 10.0


class FirstPubSubBreaks:
    """The suite's real Redis, except that the first pub/sub connection fails the way redis-py's
    does when its stream is closed under a command (redis/redis-py#3546): with an AttributeError
    from its writer, not a RedisError."""

    def __init__(self, redis: ArqRedis) -> None:
        self._redis = redis
        self.broken = 0

    def pubsub(self, **kwargs: Any) -> PubSub:
        pubsub = self._redis.pubsub(**kwargs)
        if self.broken == 0:
            self.broken += 1

            async def psubscribe(*_: Any, **__: Any) -> None:
                raise AttributeError("'NoneType' object has no attribute 'writelines'")

            pubsub.psubscribe = psubscribe  # type: ignore[method-assign]
        return pubsub


async def heard_after_publishing(redis: ArqRedis, channel: str, heard: asyncio.Event) -> None:
    """PSUBSCRIBE is sent, not acknowledged, when the listener wakes its subscribers: until
    Redis has it, a signal on another connection may go unheard, so signal until one is."""
    heard.clear()
    while not heard.is_set():
        await publish(redis, [channel])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.05):
                await heard.wait()


async def test_p3_p5_the_listener_outlives_an_unexpected_client_error(
    redis: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FirstPubSubBreaks(redis)
    hub = EventHub(cast(Redis, flaky))
    channel = challenge_channel(uuid.uuid4())
    caplog.set_level(logging.INFO, logger="gateway.core.events")
    try:
        async with hub.subscribe(channel) as heard:
            async with asyncio.timeout(WAIT_SECONDS):
                await heard.wait()  # the reconnect wakes every subscriber to re-read
                await heard_after_publishing(redis, channel, heard)
    finally:
        await hub.stop()
    assert flaky.broken == 1
    failures = [r for r in caplog.records if r.getMessage().startswith("event listener failed")]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
