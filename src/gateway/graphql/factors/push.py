"""Devices and login requests over GraphQL (P1, P4, P7, P9)."""

from __future__ import annotations

import strawberry

from gateway.factors.push.models import Platform
from gateway.graphql.context import Info
from gateway.graphql.types import (
    Device,
    DeviceEnrollment,
    LoginRequest,
    SecuritySettings,
    SettingsChange,
)


@strawberry.type
class PushMutation:
    @strawberry.mutation
    async def enroll_device(
        self, info: Info, name: str, platform: Platform, push_token: str, public_key: str
    ) -> DeviceEnrollment:
        """P1: from an IOS or ANDROID session; the login-code secret is shown only here."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow():
            enrollment = await services.security.enroll_device(
                session, name, platform, push_token, public_key
            )
        return DeviceEnrollment(
            device=Device.of(enrollment.device), login_code_secret=enrollment.login_code_secret
        )

    @strawberry.mutation
    async def update_push_token(
        self, info: Info, device_id: strawberry.ID, push_token: str
    ) -> Device:
        """P9: from the device's own app session."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow():
            device = await services.push.update_push_token(session, str(device_id), push_token)
        return Device.of(device)

    @strawberry.mutation
    async def remove_device(self, info: Info, device_id: strawberry.ID) -> SettingsChange:
        """P7, A3."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            change = await services.security.remove_device(session, str(device_id), work)
        return SettingsChange(
            settings=SecuritySettings.of(change.settings),
            two_factor_disabled=change.two_factor_disabled,
        )

    @strawberry.mutation
    async def approve_login_request(
        self,
        info: Info,
        id: strawberry.ID,
        signature: str,
        match_number: int | None = None,
    ) -> LoginRequest:
        """P4: signed by the device's key over `{id}:{nonce}:APPROVE[:{matchNumber}]`."""
        return await _decide(info, str(id), signature, approve=True, match_number=match_number)

    @strawberry.mutation
    async def deny_login_request(
        self, info: Info, id: strawberry.ID, signature: str
    ) -> LoginRequest:
        """P4, P6: signed over `{id}:{nonce}:DENY`; ends the challenge."""
        return await _decide(info, str(id), signature, approve=False, match_number=None)


async def _decide(
    info: Info, request_id: str, signature: str, *, approve: bool, match_number: int | None
) -> LoginRequest:
    session, device = await info.context.app_session()
    services = info.context.services
    async with services.uow() as work:
        outcome = await services.approvals.decide(
            session,
            device,
            request_id,
            signature,
            approve=approve,
            match_number=match_number,
            work=work,
        )
    return LoginRequest.of(outcome.unwrap(), services.clock())
