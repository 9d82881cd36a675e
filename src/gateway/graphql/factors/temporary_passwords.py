"""Temporary passwords over GraphQL (L6)."""

from __future__ import annotations

import strawberry

from gateway.graphql.context import Info
from gateway.graphql.types import TemporaryPassword


@strawberry.type
class TemporaryPasswordMutation:
    @strawberry.mutation
    async def create_temporary_password(self, info: Info) -> TemporaryPassword:
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow():
            issued = await services.security.create_temporary_password(session)
        return TemporaryPassword(password=issued.password, expires_at=issued.expires_at)
