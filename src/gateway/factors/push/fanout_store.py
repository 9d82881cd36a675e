"""The queries of a `push.fan_out` job (P2), written once: a push worker runs one job per login
request, and the query builder cost more CPU per job than the database spent on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid4

from gateway.core import sql
from gateway.factors.push.models import LoginRequest
from gateway.factors.push.port import PushOutcome, PushResult

# The request, its user's pushable devices and what each was sent for it so far, in one round
# trip; no device still gives the row.
_REQUEST_AND_DEVICES = sql.statement(
    lambda: (
        "SELECT "  # noqa: S608
        + sql.select_list(LoginRequest, "r", "r_")
        + ', d."id" AS "d_id", d."push_token" AS "d_push_token",'
        ' s."id" AS "s_id", s."outcome" AS "s_outcome"'
        ' FROM "login_requests" r LEFT JOIN "devices" d'
        ' ON d."user_id" = r."user_id" AND d."push_enabled"'
        ' LEFT JOIN "push_sends" s ON s."request_id" = r."id" AND s."device_id" = d."id"'
        ' WHERE r."id" = {0} ORDER BY d."created_at", d."id"'
    )
)

SEND_COLUMNS = '"id", "request_id", "device_id", "outcome", "attempts", "sent_at"'


@dataclass(frozen=True)
class Target:
    device_id: UUID
    push_token: str
    # Whether a send to this device was recorded for the request, and whether its outcome is
    # final (sent, or an error that no retry mends).
    recorded: bool = False
    settled: bool = False


async def request_and_devices(request_id: UUID) -> tuple[LoginRequest, list[Target]] | None:
    """The request as it is now and the devices its push may go to, oldest first, each with
    what was sent to it so far. The job decides from these, not from its try number: a job
    that Redis lost mid-retries and that the re-drive starts again at try 1 sends only to the
    devices still owed a message."""
    rows = await sql.fetch_rows(_REQUEST_AND_DEVICES(), [request_id])
    if not rows:
        return None
    request = sql.to_model(LoginRequest, rows[0], "r_")
    targets = [
        Target(
            _uuid(row["d_id"]),
            str(row["d_push_token"]),
            recorded=row["s_id"] is not None,
            settled=row["s_outcome"] not in (None, PushOutcome.RETRY.value),
        )
        for row in rows
        if row["d_id"] is not None
    ]
    return request, targets


async def record_first_sends(
    request_id: UUID, results: Sequence[PushResult], sent_at: datetime
) -> None:
    """The first sends to these devices for the request: one insert for the whole batch;
    `sent_at` only for the messages FCM took."""
    if not results:
        return
    values: list[object] = []
    groups: list[str] = []
    for result in results:
        first = len(values)
        groups.append("(" + ", ".join(f"{{{first + i}}}" for i in range(6)) + ")")
        sent = sent_at if result.outcome is PushOutcome.SENT else None
        values += [uuid4(), request_id, result.device_id, result.outcome.value, 1, sent]
    # Only fixed column names and numbered placeholders go into the text; values are bound.
    statement = f'INSERT INTO "push_sends" ({SEND_COLUMNS}) VALUES ' + ", ".join(groups)  # noqa: S608
    await sql.execute(statement, values)


def _uuid(value: object) -> UUID:
    """asyncpg gives UUIDs; SQLite keeps them as text."""
    return value if isinstance(value, UUID) else UUID(str(value))
