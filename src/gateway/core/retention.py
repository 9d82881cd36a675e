"""Retention: rows that nothing reads any more are deleted in bounded batches, so the tables a
login or a text message writes to stop growing with every login ever made.

Each bounded context says which of its rows are past retention (a `Rule`); `purge` runs the
rules in turns, one batch of at most `batch_size` rows per statement, until every rule is done
or the run's batches or seconds are spent; the next run goes on from there. Every statement
commits on its own: a run holds no long transaction, and rows go children first, so a run cut
off anywhere leaves no row whose parent is gone.

This module keeps the machinery and the rules of `core`'s own tables (the outbox and F5's
counters). Security events (F3) are the user's history of their account and have no rule: they
are kept.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from tortoise.expressions import Q
from tortoise.models import Model

from gateway.core import sql
from gateway.core.code_throttle import FactorThrottle
from gateway.core.outbox import OutboxMessage

# Rows per statement, statements' batches per run and a run's seconds: a run every 10 minutes
# deletes up to a million rows, each statement a millisecond-scale one (the arq job's timeout
# is 30 s).
BATCH_SIZE = 1000
MAX_BATCHES = 1000
BUDGET_SECONDS = 20.0

# The sweeper and the re-drive (S4) look at undispatched rows, and at dispatched ones for an
# hour at most (workers.redrive): a dispatched row a day old is read by nothing.
OUTBOX_KEEP = timedelta(days=1)
# F5 counts wrong codes without ever forgetting them but on a success. A counter whose back-off
# ended a day ago is forgotten: that hands a guesser about 11 tries in its next 10 minutes (3
# free, then waits of 2, 4 ... 256 s), fewer than the 96 a day it gets waiting at the 15-minute
# cap, so forgetting is never worth waiting for.
THROTTLE_FORGET_AFTER = timedelta(days=1)

Ids = list[Any]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long rows are kept after they end, and how much one run may do."""

    challenges: timedelta = timedelta(days=7)
    sessions: timedelta = timedelta(days=30)
    sms: timedelta = timedelta(days=30)
    batch_size: int = BATCH_SIZE
    max_batches: int = MAX_BATCHES
    budget_seconds: float = BUDGET_SECONDS


class Rule(Protocol):
    """One kind of row past retention."""

    @property
    def table(self) -> str:
        """The table its rows are in (children are counted under their own)."""

    async def select(self, limit: int) -> Ids:
        """The ids of up to `limit` rows past retention."""

    async def delete(self, ids: Ids, batch_size: int) -> Counter[str]:
        """Deletes those of `ids` still past retention, their children first, at most
        `batch_size` rows per statement; returns the rows deleted per table."""


@dataclass(frozen=True)
class Child:
    """Rows that belong to a parent row through `column` (the parent's id), with their own
    children; they go with their parent, and first."""

    model: type[Model]
    column: str
    children: tuple[Child, ...] = ()

    @property
    def table(self) -> str:
        return self.model._meta.db_table


@dataclass(frozen=True)
class ModelRule:
    """Rows of `model` matching `past` (rechecked when they are deleted), with their
    `children`. A row past retention must stay so (its children go before that recheck)."""

    model: type[Model]
    past: Q
    children: tuple[Child, ...] = ()
    table: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", self.model._meta.db_table)

    async def select(self, limit: int) -> Ids:
        return list(await self.model.filter(self.past).limit(limit).values_list("id", flat=True))

    async def delete(self, ids: Ids, batch_size: int) -> Counter[str]:
        counts: Counter[str] = Counter()
        for child in self.children:
            await delete_children(child, ids, batch_size, counts)
        counts[self.table] += await self.model.filter(self.past, id__in=ids).delete()
        return counts


async def delete_children(
    child: Child, parent_ids: Ids, batch_size: int, counts: Counter[str]
) -> None:
    """Deletes the rows of `child` under `parent_ids` (and theirs), `batch_size` at a time."""
    while True:
        found = child.model.filter(**{f"{child.column}__in": parent_ids}).limit(batch_size)
        ids = list(await found.values_list("id", flat=True))
        if not ids:
            return
        for grandchild in child.children:
            await delete_children(grandchild, ids, batch_size, counts)
        counts[child.table] += await child.model.filter(id__in=ids).delete()
        if len(ids) < batch_size:
            return


def outbox_rule(now: datetime) -> Rule:
    """S4: dispatched rows a day after their dispatch; never an undispatched one, which the
    sweeper still has to send."""
    return ModelRule(OutboxMessage, Q(dispatched_at__lt=now - OUTBOX_KEEP))


@dataclass(frozen=True)
class ThrottleRule:
    """F5: counters at zero (a success reset them: no row counts the same) and counters whose
    back-off ended THROTTLE_FORGET_AFTER ago. A counter at one or two failures has no time on
    it and stays (one per account and method at most): forgetting it would hand out free
    guesses. A running back-off is never touched."""

    now: datetime
    table: str = FactorThrottle._meta.db_table

    def _past(self) -> Q:
        lapsed = Q(blocked_until__lt=self.now - THROTTLE_FORGET_AFTER)
        return lapsed | Q(blocked_until__isnull=True, consecutive_failures=0)

    async def select(self, limit: int) -> Ids:
        found = FactorThrottle.filter(self._past()).limit(limit)
        return list(await found.values_list("id", flat=True))

    async def delete(self, ids: Ids, batch_size: int) -> Counter[str]:
        connection = sql.default_connection()
        if sql.is_postgres(connection):
            # A code check counts under its user's row lock, reading the counter and then
            # writing it: a counter deleted in between would lose that failure. The delete
            # takes the same lock and passes over users a check holds.
            changed, _ = await connection.execute_query(
                _DELETE_THROTTLES, [list(ids), self.now - THROTTLE_FORGET_AFTER]
            )
        else:  # SQLite: one connection, whose transactions run one at a time.
            changed = await FactorThrottle.filter(self._past(), id__in=ids).delete()
        return Counter({self.table: changed})


_DELETE_THROTTLES = """
DELETE FROM "factor_throttles" WHERE "id" IN (
  SELECT t."id" FROM "factor_throttles" t JOIN "users" u ON u."id" = t."user_id"
  WHERE t."id" = ANY($1::uuid[])
    AND (t."blocked_until" < $2 OR (t."blocked_until" IS NULL AND t."consecutive_failures" = 0))
  FOR UPDATE OF u SKIP LOCKED
)
"""


@dataclass(frozen=True)
class PurgeReport:
    deleted: dict[str, int]
    batches: int
    # Every rule ran out of rows (else the run's bounds stopped it; the next run goes on).
    finished: bool

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


async def purge(
    rules: Sequence[Rule],
    tables: Sequence[str],
    policy: RetentionPolicy,
    timer: Callable[[], float] = time.monotonic,
) -> PurgeReport:
    """Runs `rules` in turns, a batch each, until all are done or `policy`'s bounds are
    reached. A rule is done when a batch finds fewer rows than it asked for, or deletes none
    of those it found (they stopped being past retention meanwhile)."""
    deadline = timer() + policy.budget_seconds
    counts: Counter[str] = Counter({table: 0 for table in tables})
    active = list(rules)
    batches = 0
    while active and batches < policy.max_batches and timer() < deadline:
        for rule in list(active):
            ids = await rule.select(policy.batch_size)
            deleted = await rule.delete(ids, policy.batch_size) if ids else Counter()
            counts.update(deleted)
            batches += 1
            if len(ids) < policy.batch_size or not deleted[rule.table]:
                active.remove(rule)
            if batches >= policy.max_batches or timer() >= deadline:
                break
    return PurgeReport(dict(counts), batches, finished=not active)
