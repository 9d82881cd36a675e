"""Retention of temporary passwords (L6): a used or expired one can never log in again, and
nothing else reads it (gateway.core.retention)."""

from __future__ import annotations

from datetime import datetime

from tortoise.expressions import Q

from gateway.core.retention import ModelRule, Rule
from gateway.factors.temporary_passwords.models import TemporaryPassword

TABLE = TemporaryPassword._meta.db_table


def rule(now: datetime) -> Rule:
    """Used or expired passwords, at once. The table holds at most one row per account and,
    once purged, only the passwords of the last hour: it needs no index for this."""
    return ModelRule(TemporaryPassword, Q(used_at__isnull=False) | Q(expires_at__lt=now))
