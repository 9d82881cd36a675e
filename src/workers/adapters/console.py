"""The development provider: prints each message, so `kanmon dev` shows codes in its output."""

from __future__ import annotations

import sys
from uuid import uuid4

from gateway.factors.sms.delivery import ProviderOutcome, ProviderResult
from gateway.factors.sms.phones import mask


class ConsoleProvider:
    name = "console"

    async def send(self, to: str, body: str) -> ProviderResult:
        print(f"[sms to {mask(to)}] {body}", file=sys.stdout, flush=True)
        return ProviderResult(ProviderOutcome.SENT, sid=f"console-{uuid4().hex}")
