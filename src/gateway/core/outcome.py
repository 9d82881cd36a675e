"""Results that must commit even when they report a failure (a counted wrong code, an
invalidated backup code set): the service returns, the edge commits, then raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.core.errors import DomainError

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T | None = None
    error: DomainError | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value
