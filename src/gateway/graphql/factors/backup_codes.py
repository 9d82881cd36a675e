"""Backup codes over GraphQL (B2)."""

from __future__ import annotations

import strawberry

from gateway.graphql.context import Info
from gateway.graphql.types import BackupCode


@strawberry.type
class BackupCodeMutation:
    @strawberry.mutation
    async def new_backup_code(self, info: Info) -> BackupCode:
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow():
            issued = await services.security.new_backup_code(session)
        return BackupCode(
            code=issued.code, sequence=issued.sequence, active_count=issued.active_count
        )
