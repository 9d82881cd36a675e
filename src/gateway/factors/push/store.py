"""The queries of an approval or a denial (P4, P6), folded into as few round trips as the rules
allow: every waiting web client is held up by them."""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

from gateway.accounts.models import Session
from gateway.accounts.store import session_from_row, session_with_user_sql
from gateway.core import audit, sql
from gateway.factors.push.models import Device, LoginRequest, LoginRequestStatus, PushFatigue

_SESSION_DEVICE = sql.select_model(Device, "d", 'FROM "devices" d WHERE d."session_id" = {0}')

_SESSION_WITH_DEVICE = sql.statement(
    lambda: session_with_user_sql(
        sql.select_list(Device, "d", "d_"), 'LEFT JOIN "devices" d ON d."session_id" = s."id"'
    )
)

# Users before requests, as `lock_user` and then a request lock elsewhere: PostgreSQL locks
# the rows of a joined FOR UPDATE in the order of the FROM list.
_LOCKED_REQUEST = sql.select_model(
    LoginRequest,
    "r",
    'FROM "users" u JOIN "login_requests" r ON r."user_id" = u."id"'
    ' WHERE r."id" = {0} AND r."user_id" = {1}',
)

# The decision only if the request is still pending (one decision wins) and the answering
# app session ($9) is still live and still the device's; the rest only if it won. The fatigue
# reset ($8) is for approvals: a denial counts instead. Read committed gives this statement a
# snapshot taken after the user's row lock was granted, so a logout or a device removal that
# held the lock first is seen here.
_DECIDE = """
WITH enrolled AS (
  SELECT 1 FROM "sessions" s
  WHERE s."id" = $9 AND s."device_id" = $4 AND s."revoked_at" IS NULL
), decided AS (
  UPDATE "login_requests" SET "status" = $2, "decided_at" = $3, "decided_by" = $4
  WHERE "id" = $1 AND "status" = 'PENDING' AND EXISTS (SELECT 1 FROM enrolled)
  RETURNING "id"
), seen AS (
  UPDATE "devices" SET "last_seen_at" = $3
  WHERE "id" = $4 AND EXISTS (SELECT 1 FROM decided)
), event AS (
  INSERT INTO "security_events" ("user_id", "kind", "ip_address", "created_at")
  SELECT $5::uuid, $6::text, $7::text, $3::timestamptz FROM decided
), calm AS (
  UPDATE "push_fatigue" SET "consecutive_rejections" = 0
  WHERE "user_id" = $5 AND "consecutive_rejections" > 0 AND $8::boolean
    AND EXISTS (SELECT 1 FROM decided)
)
SELECT (SELECT COUNT(*) FROM decided) AS won, EXISTS (SELECT 1 FROM enrolled) AS enrolled
"""


class DecisionResult(enum.Enum):
    WON = "won"
    NOT_PENDING = "not_pending"
    NOT_ENROLLED = "not_enrolled"


async def session_with_device(token_hash: str) -> tuple[Session, Device | None] | None:
    """The session with this token digest, its user and the device enrolled from it (none for
    a web session), in one round trip: every approval and denial starts here."""
    rows = await sql.fetch_rows(_SESSION_WITH_DEVICE(), [token_hash])
    if not rows:
        return None
    device = sql.to_model(Device, rows[0], "d_") if rows[0]["d_id"] is not None else None
    return session_from_row(rows[0]), device


async def device_of_session(session_id: UUID) -> Device | None:
    """Every answer from an app starts here (approve, deny, its subscription)."""
    return await sql.fetch_model(Device, _SESSION_DEVICE(), [session_id])


async def lock_request(request_id: UUID, user_id: UUID) -> LoginRequest | None:
    """The user's request as it is now, with the user's row and the request's locked for the
    rest of the transaction, in one round trip (SQLite serialises writers instead)."""
    connection = sql.default_connection()
    statement = _LOCKED_REQUEST() + (" FOR UPDATE" if sql.is_postgres(connection) else "")
    return await sql.fetch_model(LoginRequest, statement, [request_id, user_id])


async def still_enrolled(device_id: UUID, session_id: UUID) -> bool:
    """P7, A2: the answering app session is live and still the device's. Read after the user's
    row lock, so a logout or removal that held it first is seen."""
    return await Session.exists(id=session_id, device_id=device_id, revoked_at__isnull=True)


async def record_decision(
    request: LoginRequest,
    status: LoginRequestStatus,
    device: Device,
    session_id: UUID,
    now: datetime,
    event_kind: str,
) -> DecisionResult:
    """P6, P7: the conditional update of the request and, if it won, the device's last
    sighting, the security event and (for an approval) the end of a run of rejections."""
    approved = status is LoginRequestStatus.APPROVED
    connection = sql.default_connection()
    if sql.is_postgres(connection):
        rows = await connection.execute_query_dict(
            _DECIDE,
            [
                request.id,
                status.value,
                now,
                device.id,
                request.user_id,
                event_kind,
                request.ip_address,
                approved,
                session_id,
            ],
        )
        if not rows[0]["enrolled"]:
            return DecisionResult.NOT_ENROLLED
        return DecisionResult.WON if rows[0]["won"] else DecisionResult.NOT_PENDING
    if not await still_enrolled(device.id, session_id):
        return DecisionResult.NOT_ENROLLED
    changed = await LoginRequest.filter(id=request.id, status=LoginRequestStatus.PENDING).update(
        status=status, decided_at=now, decided_by=device.id
    )
    if changed != 1:
        return DecisionResult.NOT_PENDING
    await Device.filter(id=device.id).update(last_seen_at=now)
    await audit.SecurityEvent.create(
        user_id=request.user_id, kind=event_kind, ip_address=request.ip_address, created_at=now
    )
    if approved:
        await PushFatigue.filter(user_id=request.user_id, consecutive_rejections__gt=0).update(
            consecutive_rejections=0
        )
    return DecisionResult.WON
