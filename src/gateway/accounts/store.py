"""Account queries shared by the services that change a user's security state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from gateway.accounts.models import Session, User
from gateway.core import sql


async def lock_user(user_id: UUID) -> User:
    """Serialises every change to one user's factors: on PostgreSQL a row lock for the rest of
    the transaction (B6: concurrent uses of one code queue here); SQLite serialises writers."""
    return await User.select_for_update().get(id=user_id)


def session_with_user_sql(more_columns: str = "", more_joins: str = "") -> str:
    """`SELECT <session as s_*>, <user as u_*> [, more] FROM sessions s JOIN users u [more
    joins] WHERE s.token_hash = {0}`: the session is `s` and the user `u`, for what a higher
    layer reads with them (the settings, an app session's device)."""
    extra = f", {more_columns}" if more_columns else ""
    joins = f" {more_joins}" if more_joins else ""
    return (
        "SELECT "  # noqa: S608
        + sql.select_list(Session, "s", "s_")
        + ", "
        + sql.select_list(User, "u", "u_")
        + extra
        + ' FROM "sessions" s JOIN "users" u ON u."id" = s."user_id"'
        + joins
        + ' WHERE s."token_hash" = {0}'
    )


# Built once from the models' own column names; the token digest is a bound parameter.
_SESSION_WITH_USER = sql.statement(session_with_user_sql)


def session_from_row(row: Mapping[str, Any]) -> Session:
    session = sql.to_model(Session, row, "s_")
    user = sql.to_model(User, row, "u_")
    object.__setattr__(session, "_user", user)
    return session


async def session_with_user(token_hash: str) -> Session | None:
    """The session with this token digest and its user, in one round trip. Every
    authenticated request starts here, so the SQL is written once instead of being built by
    the query builder on each call; the rows still become models the ORM's own way."""
    rows = await sql.fetch_rows(_SESSION_WITH_USER(), [token_hash])
    return session_from_row(rows[0]) if rows else None
