"""Push jobs: fan a login request out to the user's devices (P2); expire what is due (P5)."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from arq import Retry

from gateway.container import Services
from gateway.factors.push.fanout import PushFanOut

log = logging.getLogger(__name__)


async def push_fan_out(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
    fan_out: PushFanOut = ctx["push_fan_out"]
    try:
        delay = await fan_out.run(UUID(payload["request_id"]), ctx["job_try"])
    except Exception as exc:
        log.warning("push.fan_out failed; retrying", extra={"error": type(exc).__name__})
        raise Retry(defer=min(2 ** ctx["job_try"], 30)) from exc
    if delay is not None:
        raise Retry(defer=delay)


async def login_expire_due(ctx: dict[str, Any]) -> int:
    """Runs every second: requests and challenges past their time become EXPIRED and their
    subscribers are told (P5, P10)."""
    services: Services = ctx["services"]
    async with services.uow() as work:
        return await services.approvals.expire_due(work)
