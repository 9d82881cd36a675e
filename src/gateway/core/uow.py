"""The edge owns the transaction: one unit of work per mutation, outbox rows inside it, the
relay after commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tortoise.transactions import in_transaction

from gateway.core import outbox
from gateway.core.jobs import JobRequest
from gateway.core.outbox import OutboxMessage, OutboxRelay


class UnitOfWork:
    def __init__(self) -> None:
        self.pending: list[OutboxMessage] = []

    async def enqueue(self, job: JobRequest) -> None:
        self.pending.append(await outbox.add(job))


class UnitOfWorkFactory:
    def __init__(self, relay: OutboxRelay) -> None:
        self._relay = relay

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[UnitOfWork]:
        work = UnitOfWork()
        async with in_transaction("default"):
            yield work
        if work.pending:
            await self._relay.dispatch(work.pending)
