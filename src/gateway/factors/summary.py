"""What a user has enrolled, in one round trip: the settings page and every login read it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from gateway.core import sql

# Each line is a scalar subquery on the user id `{u}`, a column of the outer statement.
_COLUMNS = """
  (SELECT COUNT(*) FROM totp_credentials WHERE user_id = {u} AND secret_encrypted IS NOT NULL)
    AS m_totp,
  (SELECT COUNT(*) FROM phones WHERE user_id = {u} AND verified_at IS NOT NULL) AS m_phone,
  (SELECT COUNT(*) FROM phones WHERE user_id = {u} AND verified_at IS NOT NULL
     AND NOT sms_paused) AS m_sms_ready,
  (SELECT COUNT(*) FROM devices WHERE user_id = {u}) AS m_devices,
  (SELECT COUNT(*) FROM devices WHERE user_id = {u} AND push_enabled) AS m_pushable,
  (SELECT COUNT(*) FROM backup_codes WHERE user_id = {u} AND status = 'ACTIVE') AS m_backup
"""


@dataclass(frozen=True)
class MethodSummary:
    two_factor_enabled: bool
    totp: bool
    phone_verified: bool
    # A verified phone that SMS may be sent to (not paused by a STOP, S5).
    sms_ready: bool
    devices: bool
    # An enrolled device that FCM has not refused (P9): what PUSH means in the settings.
    pushable: bool
    backup_codes_active: int


NOTHING_ENROLLED = MethodSummary(False, False, False, False, False, False, 0)


def summary_columns(user_id_column: str) -> str:
    """The summary's select list, for a statement whose row names the user's id as
    `user_id_column`."""
    return _COLUMNS.format(u=user_id_column)


def summary_from_row(two_factor_enabled: Any, row: Mapping[str, Any]) -> MethodSummary:
    return MethodSummary(
        two_factor_enabled=bool(two_factor_enabled),
        totp=bool(row["m_totp"]),
        phone_verified=bool(row["m_phone"]),
        sms_ready=bool(row["m_sms_ready"]),
        devices=bool(row["m_devices"]),
        pushable=bool(row["m_pushable"]),
        backup_codes_active=int(row["m_backup"]),
    )


_SUMMARY = sql.statement(
    lambda: (
        "SELECT u.two_factor_enabled AS enabled, "  # noqa: S608
        + summary_columns('u."id"')
        + ' FROM "users" u WHERE u."id" = {0}'
    )
)


async def method_summary(user_id: UUID) -> MethodSummary:
    """F2: the state of every method in one round trip (the settings page's hot path)."""
    rows = await sql.fetch_rows(_SUMMARY(), [user_id])
    if not rows:
        return NOTHING_ENROLLED
    return summary_from_row(rows[0]["enabled"], rows[0])
