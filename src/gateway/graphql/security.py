"""Two-factor state over GraphQL: enable, disable."""

from __future__ import annotations

import strawberry

from gateway.graphql.context import Info
from gateway.graphql.types import BackupCode, SecuritySettings, TwoFactorEnabled


@strawberry.type
class SecurityMutation:
    @strawberry.mutation
    async def enable_two_factor(self, info: Info) -> TwoFactorEnabled:
        """F1, B1."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            view, code = await services.security.enable(session, work)
        return TwoFactorEnabled(
            settings=SecuritySettings.of(view),
            backup_code=BackupCode(
                code=code.code, sequence=code.sequence, active_count=code.active_count
            ),
        )

    @strawberry.mutation
    async def disable_two_factor(self, info: Info) -> SecuritySettings:
        """F1, A3."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            view = await services.security.disable(session, work)
        return SecuritySettings.of(view)
