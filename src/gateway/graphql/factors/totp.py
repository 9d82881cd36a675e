"""The authenticator app over GraphQL (T1)."""

from __future__ import annotations

import strawberry

from gateway.graphql.context import Info
from gateway.graphql.types import SecuritySettings, SettingsChange, TotpEnrollment


@strawberry.type
class TotpMutation:
    @strawberry.mutation
    async def begin_totp_enrollment(self, info: Info) -> TotpEnrollment:
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow():
            enrollment = await services.security.begin_totp(session)
        return TotpEnrollment(
            secret=enrollment.secret, otpauth_uri=enrollment.otpauth_uri, qr_svg=enrollment.qr_svg
        )

    @strawberry.mutation
    async def confirm_totp_enrollment(self, info: Info, code: str) -> SecuritySettings:
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow():
            view = await services.security.confirm_totp(session, code)
        return SecuritySettings.of(view)

    @strawberry.mutation
    async def remove_totp(self, info: Info) -> SettingsChange:
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            change = await services.security.remove_totp(session, work)
        return SettingsChange(
            settings=SecuritySettings.of(change.settings),
            two_factor_disabled=change.two_factor_disabled,
        )
