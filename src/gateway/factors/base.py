"""What every factor shares: the method and client enums, and the verification protocol."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from gateway.accounts.clients import ClientKind
from gateway.core.errors import DomainError
from gateway.core.uow import UnitOfWork
from gateway.factors.summary import MethodSummary


class TwoFactorMethod(StrEnum):
    PUSH = "PUSH"
    SMS = "SMS"
    TOTP = "TOTP"
    APP_CODE = "APP_CODE"
    BACKUP_CODE = "BACKUP_CODE"


# API.md: LoginChallenge.methods are listed in this order.
METHOD_ORDER = list(TwoFactorMethod)


def with_method(methods: list[str], method: TwoFactorMethod) -> list[str]:
    """A challenge's method list with `method` added, still in API order."""
    return [m.value for m in METHOD_ORDER if m.value in methods or m is method]


PRIMARY_METHODS = frozenset({TwoFactorMethod.PUSH, TwoFactorMethod.SMS, TwoFactorMethod.TOTP})


@dataclass(frozen=True)
class Attempt:
    """One code typed against one challenge, checked inside the caller's transaction with the
    user's row locked."""

    user_id: UUID
    challenge_id: UUID
    code: str
    client: ClientKind
    work: UnitOfWork


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one code. A rejection may already have changed state (B4's
    invalidation), which must commit even though the caller reports an error."""

    accepted: bool
    error: DomainError | None = None


ACCEPTED = Verdict(accepted=True)


class CodeFactor(Protocol):
    """A factor whose proof is a code typed by the user; the login service drives it."""

    method: TwoFactorMethod

    def offered(self, summary: MethodSummary, client: ClientKind) -> bool:
        """Whether a challenge for this client can be completed with this factor now (decided
        from the summary every login reads anyway, so offering costs no query)."""
        ...

    def client_refusal(self, client: ClientKind) -> DomainError | None:
        """An error for clients that may never use this factor (L7), else None."""
        ...

    async def verify(self, attempt: Attempt) -> Verdict:
        """Checks a code inside the caller's transaction, with the user's row locked."""
        ...
