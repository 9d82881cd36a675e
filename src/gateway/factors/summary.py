"""What a user has enrolled, in one round trip: the settings page and every login read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from gateway.core import sql

# Each line is a scalar subquery on one user id, `{u}`: a placeholder or a column reference.
_COLUMNS = """
  (SELECT COUNT(*) FROM totp_credentials WHERE user_id = {u} AND secret_encrypted IS NOT NULL)
    AS m_totp,
  (SELECT COUNT(*) FROM phones WHERE user_id = {u} AND verified_at IS NOT NULL) AS m_phone,
  (SELECT COUNT(*) FROM phones WHERE user_id = {u} AND verified_at IS NOT NULL
     AND NOT sms_paused) AS m_sms_ready,
  (SELECT COUNT(*) FROM devices WHERE user_id = {u}) AS m_devices,
  (SELECT COUNT(*) FROM backup_codes WHERE user_id = {u} AND status = 'ACTIVE') AS m_backup
"""
SUBQUERIES = 5


@dataclass(frozen=True)
class MethodSummary:
    two_factor_enabled: bool
    totp: bool
    phone_verified: bool
    # A verified phone that SMS may be sent to (not paused by a STOP, S5).
    sms_ready: bool
    devices: bool
    backup_codes_active: int


def summary_columns(user_id_sql: str) -> str:
    """The summary's select list, for a statement that names the user's id as `user_id_sql`."""
    return _COLUMNS.format(u=user_id_sql)


def summary_from_row(two_factor_enabled: Any, row: dict[str, Any]) -> MethodSummary:
    return MethodSummary(
        two_factor_enabled=bool(two_factor_enabled),
        totp=bool(row["m_totp"]),
        phone_verified=bool(row["m_phone"]),
        sms_ready=bool(row["m_sms_ready"]),
        devices=bool(row["m_devices"]),
        backup_codes_active=int(row["m_backup"]),
    )


def _summary_statement(user_id_sql: str) -> str:
    """`user_id_sql` is a placeholder, never a value."""
    enabled = f"(SELECT two_factor_enabled FROM users WHERE id = {user_id_sql})"  # noqa: S608
    return "SELECT " + enabled + " AS enabled, " + summary_columns(user_id_sql)


async def method_summary(user_id: UUID) -> MethodSummary:
    """F2: the state of every method in one round trip (the settings page's hot path)."""
    connection = sql.default_connection()
    params: Sequence[Any]
    if sql.is_postgres(connection):
        statement, params = _summary_statement("$1"), [user_id]
    else:
        # `?` placeholders are positional: one per use of the id.
        statement, params = _summary_statement("?"), [user_id] * (SUBQUERIES + 1)
    rows = await connection.execute_query_dict(statement, sql.bind(connection, params))
    return summary_from_row(rows[0]["enabled"], rows[0])
