"""Account queries shared by the services that change a user's security state."""

from __future__ import annotations

from uuid import UUID

from gateway.accounts.models import User


async def lock_user(user_id: UUID) -> User:
    """Serialises every change to one user's factors: on PostgreSQL a row lock for the rest of
    the transaction (B6: concurrent uses of one code queue here); SQLite serialises writers."""
    return await User.select_for_update().get(id=user_id)
