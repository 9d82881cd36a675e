"""Accounts and sessions over GraphQL: signUp, login, logout, reauthenticate, viewer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast
from uuid import UUID

import strawberry
from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionNode

from gateway.accounts.service import Client
from gateway.core import audit
from gateway.core.errors import BadUserInput
from gateway.factors.push.models import LoginRequestStatus
from gateway.graphql.context import Info
from gateway.graphql.types import (
    ClientInput,
    LoginChallenge,
    LoginRequest,
    LoginRequestConnection,
    LoginRequestEdge,
    LoginResult,
    PageInfo,
    SecurityEvent,
    SecurityEventConnection,
    SecurityEventEdge,
    SecuritySettings,
    Session,
    decode_cursor,
    encode_cursor,
)
from gateway.login.service import ChallengeView
from gateway.security.service import SettingsView

MAX_PAGE = 100
MAX_EVENT_ID = 2**63 - 1


def client_of(info: Info, client: ClientInput) -> Client:
    if client.name is not None and len(client.name) > 128:
        raise BadUserInput("Client names have at most 128 characters.")
    return Client(kind=client.kind, name=client.name, ip_address=info.context.ip_address)


@strawberry.type
class Viewer:
    id: strawberry.ID
    username: str
    # Read with the session when the query asks for securitySettings (one round trip).
    settings: strawberry.Private[SettingsView | None] = None

    @strawberry.field
    async def security_settings(self, info: Info) -> SecuritySettings:
        view = self.settings or await info.context.services.security.settings(_user_id(self))
        return SecuritySettings.of(view)

    @strawberry.field
    async def login_requests(
        self,
        info: Info,
        status: LoginRequestStatus | None = LoginRequestStatus.PENDING,
        first: int | None = 20,
        after: str | None = None,
    ) -> LoginRequestConnection:
        """H6, P3: pending requests for pull-to-refresh (or any status), newest first."""
        first = 20 if first is None else first
        if not 1 <= first <= MAX_PAGE:
            raise BadUserInput(f"first must be between 1 and {MAX_PAGE}.")
        position = _request_cursor(after) if after else None
        push = info.context.services.push
        rows, more = await push.list_requests(_user_id(self), status, first, position)
        now = info.context.services.clock()
        edges = [
            LoginRequestEdge(
                node=LoginRequest.of(r, now),
                cursor=encode_cursor("request", f"{r.created_at.isoformat()}|{r.id}"),
            )
            for r in rows
        ]
        end = edges[-1].cursor if edges else None
        return LoginRequestConnection(
            edges=edges, page_info=PageInfo(has_next_page=more, end_cursor=end)
        )

    @strawberry.field
    async def security_events(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> SecurityEventConnection:
        """F3: newest first, Relay-style pages."""
        first = 20 if first is None else first
        if not 1 <= first <= MAX_PAGE:
            raise BadUserInput(f"first must be between 1 and {MAX_PAGE}.")
        before = _event_cursor(after) if after else None
        rows, more = await audit.page(_user_id(self), first=first, before_id=before)
        edges = [
            SecurityEventEdge(node=SecurityEvent.of(r), cursor=encode_cursor("event", str(r.id)))
            for r in rows
        ]
        end = edges[-1].cursor if edges else None
        return SecurityEventConnection(
            edges=edges, page_info=PageInfo(has_next_page=more, end_cursor=end)
        )


def _request_cursor(cursor: str) -> tuple[datetime, UUID]:
    created, _, request_id = decode_cursor("request", cursor).partition("|")
    try:
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            raise ValueError("a cursor's time has its offset")
        return when.astimezone(UTC), UUID(request_id)
    except (ValueError, OverflowError) as exc:
        raise BadUserInput("Malformed cursor.") from exc


def _event_cursor(cursor: str) -> int:
    """Event ids are 64-bit: a longer number is no cursor of ours, and the database would
    refuse it as a parameter."""
    raw = decode_cursor("event", cursor)
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_EVENT_ID:
        raise BadUserInput("Malformed cursor.")
    return int(raw)


def _asks_for(info: Info, name: str) -> bool:
    """Whether the field being resolved selects `name` directly (fragments included). Read
    from graphql-core's syntax tree: strawberry's `selected_fields` rebuilds the whole
    selection on each call, which costs more than the round trip this saves."""
    raw = info._raw_info
    pending: list[SelectionNode] = [
        s for node in raw.field_nodes if node.selection_set for s in node.selection_set.selections
    ]
    while pending:
        selection = pending.pop()
        if isinstance(selection, FieldNode):
            if selection.name.value == name:
                return True
            continue
        if isinstance(selection, FragmentSpreadNode):
            fragment = raw.fragments.get(selection.name.value)
            selection_set = fragment.selection_set if fragment else None
        else:
            selection_set = cast(InlineFragmentNode, selection).selection_set
        if selection_set is not None:
            pending.extend(selection_set.selections)
    return False


def _user_id(viewer: Viewer) -> UUID:
    return UUID(str(viewer.id))


@strawberry.type
class AccountQuery:
    @strawberry.field
    async def viewer(self, info: Info) -> Viewer | None:
        """Null without a valid session (missing, unknown, revoked or expired token)."""
        context = info.context
        session = await context.session(with_settings=_asks_for(info, "securitySettings"))
        if session is None:
            return None
        return Viewer(
            id=strawberry.ID(str(session.user.id)),
            username=session.user.username,
            settings=context.settings,
        )


@strawberry.type
class AccountMutation:
    @strawberry.mutation
    async def sign_up(
        self, info: Info, username: str, password: str, client: ClientInput
    ) -> Session:
        """A1: a new account and its first session."""
        services = info.context.services
        caller = client_of(info, client)
        account = await services.accounts.prepare_sign_up(
            username, password, ip_address=caller.ip_address
        )
        async with services.uow():
            user = await services.accounts.create_account(account)
            issued = await services.accounts.issue_session(user.id, caller, password_proved=True)
        return Session.of(issued)

    @strawberry.mutation
    async def login(
        self, info: Info, username: str, password: str, client: ClientInput
    ) -> LoginResult:
        """L1, L2, L3, L6."""
        services = info.context.services
        caller = client_of(info, client)
        checked = await services.login.check_password(username, password, caller)
        released = services.accounts.guard.released_on_error(checked.attempt)
        async with released, services.uow() as work:
            outcome = await services.login.finish_login(checked, caller, work)
        result = outcome.unwrap()
        if isinstance(result, ChallengeView):
            return LoginChallenge.of(result)
        return Session.of(result)

    @strawberry.mutation
    async def logout(self, info: Info) -> bool:
        """A2, P7: revokes the caller's session (and its device's enrollment); false without
        one."""
        session = await info.context.session()
        if session is None:
            return False
        services = info.context.services
        async with services.uow() as work:
            return await services.security.logout(session, work)

    @strawberry.mutation
    async def reauthenticate(self, info: Info, password: str) -> bool:
        """A3: opens the recent-authentication window."""
        session = await info.context.require_session()
        await info.context.services.accounts.reauthenticate(
            session, password, info.context.ip_address
        )
        return True
