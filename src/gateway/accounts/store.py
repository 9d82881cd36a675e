"""Account queries shared by the services that change a user's security state."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tortoise import connections
from tortoise.models import Model

from gateway.accounts.models import Session, User


async def lock_user(user_id: UUID) -> User:
    """Serialises every change to one user's factors: on PostgreSQL a row lock for the rest of
    the transaction (B6: concurrent uses of one code queue here); SQLite serialises writers."""
    return await User.select_for_update().get(id=user_id)


def _columns(model: type[Model]) -> list[str]:
    return list(model._meta.fields_db_projection.values())


_SESSION_COLUMNS = _columns(Session)
_USER_COLUMNS = _columns(User)
# Built once from the models' own column names; the token digest is a bound parameter.
_SESSION_WITH_USER = (
    "SELECT "  # noqa: S608
    + ", ".join(f's."{c}" AS "s_{c}"' for c in _SESSION_COLUMNS)
    + ", "
    + ", ".join(f'u."{c}" AS "u_{c}"' for c in _USER_COLUMNS)
    + ' FROM "sessions" s JOIN "users" u ON u."id" = s."user_id" WHERE s."token_hash" = {p}'
)


async def session_with_user(token_hash: str) -> Session | None:
    """The session with this token digest and its user, in one round trip. Every
    authenticated request starts here, so the SQL is written once instead of being built by
    the query builder on each call; the rows still become models the ORM's own way."""
    connection = connections.get("default")
    placeholder = "$1" if connection.capabilities.dialect == "postgres" else "?"
    rows = await connection.execute_query_dict(
        _SESSION_WITH_USER.format(p=placeholder), [token_hash]
    )
    if not rows:
        return None
    row: dict[str, Any] = rows[0]
    session = Session._init_from_db(**{c: row[f"s_{c}"] for c in _SESSION_COLUMNS})
    user = User._init_from_db(**{c: row[f"u_{c}"] for c in _USER_COLUMNS})
    object.__setattr__(session, "_user", user)
    return session
