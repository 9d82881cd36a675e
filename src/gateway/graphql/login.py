"""Login challenges over GraphQL: inspect and verify."""

from __future__ import annotations

import strawberry

from gateway.factors.base import TwoFactorMethod
from gateway.graphql.context import Info
from gateway.graphql.types import LoginChallenge, Session


@strawberry.type
class LoginQuery:
    @strawberry.field
    async def login_challenge(self, info: Info, id: strawberry.ID, token: str) -> LoginChallenge:
        """The waiting client's view; the challenge token is the credential."""
        view = await info.context.services.login.view(str(id), token)
        return LoginChallenge.of(view)


@strawberry.type
class LoginMutation:
    @strawberry.mutation
    async def complete_login_challenge(self, info: Info, id: strawberry.ID, token: str) -> Session:
        """P5, L5: after a push approval, the waiting client's session, once."""
        services = info.context.services
        async with services.uow() as work:
            issued = await services.approvals.complete(
                str(id), token, info.context.ip_address, work
            )
        return Session.of(issued)

    @strawberry.mutation
    async def request_sms_code(self, info: Info, id: strawberry.ID, token: str) -> LoginChallenge:
        """S2, H6: sends another code after the cooldown; the answer says when the next may go."""
        services = info.context.services
        async with services.uow() as work:
            view = await services.login.request_sms_code(
                str(id), token, info.context.ip_address, work
            )
        return LoginChallenge.of(view)

    @strawberry.mutation
    async def verify_login_challenge(
        self, info: Info, id: strawberry.ID, token: str, method: TwoFactorMethod, code: str
    ) -> Session:
        """L5: completes a challenge with one code; exactly one session, once."""
        services = info.context.services
        async with services.uow() as work:
            outcome = await services.login.verify(
                str(id), token, method, code, info.context.ip_address, work
            )
        return Session.of(outcome.unwrap())
