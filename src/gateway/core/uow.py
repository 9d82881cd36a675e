"""The edge owns the transaction: one unit of work per mutation, outbox rows inside it, the
relay after commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from tortoise.transactions import in_transaction

from gateway.core import events, outbox
from gateway.core.jobs import JobRequest
from gateway.core.outbox import OutboxMessage, OutboxRelay


class UnitOfWork:
    def __init__(self) -> None:
        self.pending: list[OutboxMessage] = []
        self.signals: list[str] = []

    async def enqueue(self, job: JobRequest) -> None:
        self.pending.append(await outbox.add(job))

    def signal(self, channel: str) -> None:
        """Published to subscribers after commit (never before: they would read old state)."""
        self.signals.append(channel)


class UnitOfWorkFactory:
    def __init__(self, relay: OutboxRelay, redis: Redis) -> None:
        self._relay = relay
        self._redis = redis

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[UnitOfWork]:
        work = UnitOfWork()
        async with in_transaction("default"):
            yield work
        if work.pending:
            await self._relay.dispatch(work.pending)
        if work.signals:
            await events.publish(self._redis, work.signals)
