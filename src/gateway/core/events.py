"""Change signals over Redis pub/sub, so any gateway process can serve any subscriber (P3, P5).

A signal only says "this challenge (or this user's requests) changed"; subscribers re-read the
state from the database. Lost signals therefore cost latency, never correctness: after the
listener reconnects, every local subscriber is woken to re-read.

One listener per process (`EventHub`) pattern-subscribes once and wakes the local subscribers of
each channel; a subscriber is an `asyncio.Event`, so a burst of signals coalesces into one wake-up
and memory per subscriber stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PREFIX = "kanmon:ev:"
RECONNECT_MAX_SECONDS = 2.0
LISTEN_WAIT_SECONDS = 30.0


def challenge_channel(challenge_id: UUID) -> str:
    return f"{PREFIX}challenge:{challenge_id}"


def user_channel(user_id: UUID) -> str:
    return f"{PREFIX}user:{user_id}"


async def publish(redis: Redis, channels: list[str]) -> None:
    """After commit; a failure is logged and left to the subscribers' resync."""
    unique = list(dict.fromkeys(channels))
    try:
        if len(unique) == 1:
            # Most mutations signal one channel: a plain command costs a fraction of a
            # pipeline's CPU in redis-py.
            await redis.publish(unique[0], b"1")
        else:
            async with redis.pipeline(transaction=False) as pipe:
                for channel in unique:
                    pipe.publish(channel, b"1")
                await pipe.execute()
    except (RedisError, OSError):
        log.warning("event publish failed", extra={"channels": len(channels)})


class EventHub:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="kanmon-event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """The event is set on every signal for `channel` and after every reconnect."""
        self.start()
        waiter = asyncio.Event()
        self._waiters[channel].add(waiter)
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(channel)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[channel]

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(f"{PREFIX}*")
                self._wake_all()  # anything published while we were away is re-read
                delay = 0.05
                while True:
                    # A wait of its own, not the client's command timeout (which would end
                    # an idle listener as an error): None when nothing came meanwhile.
                    message = await pubsub.get_message(timeout=LISTEN_WAIT_SECONDS)
                    if message is not None:
                        self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                log.warning("event listener lost Redis; reconnecting")
            except Exception:
                # redis-py can fail with other errors when a connection closes under a command
                # (AttributeError or TypeError from its stream writer). The listener is the
                # process's only ear: if it ended, no subscriber here would hear a decision.
                log.exception("event listener failed; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        for waiter in self._waiters.get(str(channel), ()):
            waiter.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.set()
