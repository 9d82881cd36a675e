"""Live updates over graphql-transport-ws (P3, P5).

Each subscription registers with the process's EventHub first, then sends the current state,
then re-reads and sends whatever changed each time it is woken, so nothing decided while a
socket was away is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from uuid import UUID

import strawberry

from gateway.accounts.models import Session
from gateway.core.events import challenge_channel, user_channel
from gateway.core.metrics import OPEN_SUBSCRIPTIONS
from gateway.factors.push.models import Device, LoginRequestStatus
from gateway.graphql.context import Info
from gateway.graphql.types import LoginChallenge, LoginRequest
from gateway.login.models import ChallengeStatus

# Terminal states: the waiting client has nothing more to wait for.
FINISHED = frozenset(
    {
        ChallengeStatus.COMPLETED,
        ChallengeStatus.DENIED,
        ChallengeStatus.EXPIRED,
        ChallengeStatus.LOCKED,
    }
)
# How often an app subscription re-checks that its session and device still stand.
SESSION_RECHECK_SECONDS = 30.0
RECENT = timedelta(hours=1)


@contextlib.asynccontextmanager
async def _counted(kind: str) -> AsyncIterator[None]:
    OPEN_SUBSCRIPTIONS.labels(kind).inc()
    try:
        yield
    finally:
        OPEN_SUBSCRIPTIONS.labels(kind).dec()


async def _wait(wake: asyncio.Event, seconds: float | None) -> None:
    """Until a signal arrives or `seconds` pass (a deadline such as an expiry)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    wake.clear()


@strawberry.type
class Subscription:
    """Each field checks its credentials before the stream exists, so a refusal is an `error`
    message (API.md), not a `next` carrying errors."""

    @strawberry.subscription
    async def login_challenge(
        self, info: Info, id: strawberry.ID, token: str
    ) -> AsyncIterator[LoginChallenge]:
        """P5: the waiting web client's challenge, each status change until it is over."""
        await info.context.services.login.view(str(id), token)  # NOT_FOUND: an `error`
        return _challenge_stream(info, str(id), token)

    @strawberry.subscription
    async def login_requests(self, info: Info) -> AsyncIterator[LoginRequest]:
        """P3: the app session's device: pending requests first, then new ones and changes."""
        session = await info.context.require_session()
        device = await info.context.services.push.app_device(session)
        return _request_stream(info, session, device)


async def _challenge_stream(
    info: Info, challenge_id: str, token: str
) -> AsyncGenerator[LoginChallenge, None]:
    services = info.context.services
    login = services.login
    view = await login.view(challenge_id, token)
    async with (
        info.context.events.subscribe(challenge_channel(view.id)) as wake,
        _counted("login_challenge"),
    ):
        view = await login.view(challenge_id, token)
        yield LoginChallenge.of(view)
        last = view
        while last.status not in FINISHED:
            left = (last.expires_at - services.clock()).total_seconds()
            timeout = max(left, 0.0) + 0.05 if last.status is ChallengeStatus.PENDING else None
            await _wait(wake, timeout)
            view = await login.view(challenge_id, token)
            if (view.status, view.methods, view.sms_retry_after) != (
                last.status,
                last.methods,
                last.sms_retry_after,
            ):
                yield LoginChallenge.of(view)
            last = view


async def _request_stream(
    info: Info, session: Session, device: Device
) -> AsyncGenerator[LoginRequest, None]:
    services = info.context.services
    sent: dict[UUID, LoginRequestStatus] = {}
    async with (
        info.context.events.subscribe(user_channel(device.user_id)) as wake,
        _counted("login_requests"),
    ):
        first = True
        while True:
            now = services.clock()
            rows = await services.push.recent_requests(device.user_id, now - RECENT)
            for row in rows:
                node = LoginRequest.of(row, now)
                if first and node.status is not LoginRequestStatus.PENDING:
                    sent[row.id] = node.status
                    continue
                if sent.get(row.id) != node.status:
                    sent[row.id] = node.status
                    yield node
            first = False
            # Nothing re-checks a websocket's token on its own: the session and the device
            # are re-read on every wake-up and at least every 30 s.
            await _wait(wake, SESSION_RECHECK_SECONDS)
            if not await services.accounts.still_valid(session.id):
                return
            if await services.push.device_of_session(session) is None:
                return
