"""Reads behind the settings page that would otherwise cost a query each."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from tortoise import connections

_SUMMARY = """
SELECT
  (SELECT two_factor_enabled FROM users WHERE id = {u}),
  (SELECT COUNT(*) FROM totp_credentials WHERE user_id = {u} AND secret_encrypted IS NOT NULL),
  (SELECT COUNT(*) FROM phones WHERE user_id = {u} AND verified_at IS NOT NULL),
  (SELECT COUNT(*) FROM devices WHERE user_id = {u}),
  (SELECT COUNT(*) FROM backup_codes WHERE user_id = {u} AND status = 'ACTIVE')
"""


@dataclass(frozen=True)
class MethodSummary:
    two_factor_enabled: bool
    totp: bool
    phone_verified: bool
    devices: bool
    backup_codes_active: int


async def method_summary(user_id: UUID) -> MethodSummary:
    """F2: the state of every method in one round trip (the settings page's hot path)."""
    connection = connections.get("default")
    params: list[object]
    if connection.capabilities.dialect == "postgres":
        sql, params = _SUMMARY.format(u="$1"), [user_id]
    else:
        sql, params = _SUMMARY.format(u="?"), [str(user_id)] * 5
    _, rows = await connection.execute_query(sql, params)
    enabled, totp, phone, devices, backup = tuple(rows[0])
    return MethodSummary(bool(enabled), bool(totp), bool(phone), bool(devices), int(backup))
