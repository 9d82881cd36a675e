"""Retention of logins (L2, L5, P2, A2) and the purge of every context's rules: the
`housekeeping.purge` job calls `Retention.purge` (gateway.core.retention has the machinery).

Sessions are here rather than in `accounts`: whether one is still needed depends on the
devices enrolled from it (P7), which `accounts` cannot see.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tortoise.expressions import Q

from gateway.accounts.models import Session
from gateway.core import retention, sql
from gateway.core.clock import Clock, utc_now
from gateway.core.code_throttle import FactorThrottle
from gateway.core.outbox import OutboxMessage
from gateway.core.retention import Child, Ids, ModelRule, PurgeReport, RetentionPolicy, Rule
from gateway.factors.push.models import LoginRequest, PushSend
from gateway.factors.sms import retention as sms_retention
from gateway.factors.temporary_passwords import retention as temporary_retention
from gateway.login.models import LoginChallenge

log = logging.getLogger(__name__)

# Every table a run reports on, in the log line's order.
TABLES = (
    LoginChallenge._meta.db_table,
    LoginRequest._meta.db_table,
    PushSend._meta.db_table,
    Session._meta.db_table,
    OutboxMessage._meta.db_table,
    *sms_retention.TABLES,
    temporary_retention.TABLE,
    FactorThrottle._meta.db_table,
)


def challenge_rule(now: datetime, keep: timedelta) -> Rule:
    """L2, P2: challenges whose life ended more than `keep` ago, with their login requests and
    the requests' sends. A challenge ends by its `expires_at` at the latest, whatever its state
    (COMPLETED, DENIED, LOCKED or EXPIRED sooner, a PENDING one then), so counting from there
    keeps each at least `keep` after its end and never touches a pending, unexpired one. Its
    request and sends are read only while it is pending (the app's list, the fan-out and its
    re-drive)."""
    return ModelRule(
        LoginChallenge,
        Q(expires_at__lt=now - keep),
        children=(Child(LoginRequest, "challenge_id", (Child(PushSend, "request_id"),)),),
    )


# Sessions no device is enrolled from: `device_id` is set with the enrollment and cleared with
# the device's removal, and the devices table is asked too. An app's session that expired
# keeps its device enrolled (a method of the account) and is kept with it.
_ENDED_SESSIONS = """
SELECT s."id" FROM "sessions" s
WHERE s."device_id" IS NULL AND s."{column}" < {{0}}
  AND NOT EXISTS (SELECT 1 FROM "devices" d WHERE d."session_id" = s."id")
LIMIT {{1}}
"""


@dataclass(frozen=True)
class SessionRule:
    """A2: sessions that expired (`column` expires_at) or were revoked (revoked_at) before
    `cutoff` and that no device is enrolled from. A token of a deleted session is refused
    exactly as one of an expired or revoked session."""

    column: str
    cutoff: datetime
    table: str = Session._meta.db_table

    async def select(self, limit: int) -> Ids:
        statement = _ENDED_SESSIONS.format(column=self.column)
        rows = await sql.fetch_rows(statement, [self.cutoff, limit])
        return [row["id"] for row in rows]

    async def delete(self, ids: Ids, batch_size: int) -> Counter[str]:
        # A session already ended cannot enroll a device (P1 needs a usable one).
        ended: dict[str, Any] = {f"{self.column}__lt": self.cutoff, "device_id__isnull": True}
        return Counter({self.table: await Session.filter(id__in=ids, **ended).delete()})


class Retention:
    """Deletes what every context keeps no longer, in bounded batches, and logs one line per
    run with the rows deleted per table (counts only)."""

    def __init__(
        self,
        policy: RetentionPolicy,
        clock: Clock = utc_now,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._timer = timer

    def rules(self, now: datetime) -> list[Rule]:
        policy = self._policy
        return [
            challenge_rule(now, policy.challenges),
            SessionRule("expires_at", now - policy.sessions),
            SessionRule("revoked_at", now - policy.sessions),
            retention.outbox_rule(now),
            *sms_retention.rules(now, policy.sms),
            temporary_retention.rule(now),
            retention.ThrottleRule(now),
        ]

    async def purge(self) -> PurgeReport:
        started = self._timer()
        report = await retention.purge(
            self.rules(self._clock()), TABLES, self._policy, timer=self._timer
        )
        log.info(
            "retention purge",
            extra={
                **{f"deleted_{table}": count for table, count in report.deleted.items()},
                "batches": report.batches,
                "finished": report.finished,
                "seconds": round(self._timer() - started, 3),
            },
        )
        return report
