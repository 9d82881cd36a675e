"""Phones over GraphQL (S1, S6)."""

from __future__ import annotations

import strawberry

from gateway.graphql.context import Info
from gateway.graphql.types import Phone, SecuritySettings, SettingsChange


@strawberry.type
class SmsMutation:
    @strawberry.mutation
    async def add_phone(self, info: Info, number: str, carrier: str | None = None) -> Phone:
        """S1: sends a verification code; the number is used only once verified."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            view = await services.security.add_phone(
                session, number, carrier, info.context.ip_address, work
            )
        return Phone.of(view)

    @strawberry.mutation
    async def verify_phone(self, info: Info, code: str) -> Phone:
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            outcome = await services.security.verify_phone(session, code, work)
        return Phone.of(outcome.unwrap())

    @strawberry.mutation
    async def remove_phone(self, info: Info) -> SettingsChange:
        """S6, H1: when SMS was the only method, 2FA turns off and the answer says so."""
        session = await info.context.require_session()
        services = info.context.services
        async with services.uow() as work:
            change = await services.security.remove_phone(session, work)
        return SettingsChange(
            settings=SecuritySettings.of(change.settings),
            two_factor_disabled=change.two_factor_disabled,
        )
