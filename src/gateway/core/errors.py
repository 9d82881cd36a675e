"""Expected failures with the stable codes of API.md; the GraphQL edge maps them in one place."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """An expected failure a client can act on; `code` is part of the public contract."""

    code: ClassVar[str] = "INTERNAL"
    default_message: ClassVar[str] = "The request failed."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code}


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"
    default_message = "A valid session is required."


class Forbidden(DomainError):
    code = "FORBIDDEN"
    default_message = "This client may not do that."


class NotFound(DomainError):
    code = "NOT_FOUND"
    default_message = "Not found."


class BadUserInput(DomainError):
    code = "BAD_USER_INPUT"
    default_message = "The input is not valid."


class UsernameTaken(DomainError):
    code = "USERNAME_TAKEN"
    default_message = "That username is taken."


class InvalidCredentials(DomainError):
    code = "INVALID_CREDENTIALS"
    default_message = "The username or password is incorrect."


class InvalidCode(DomainError):
    code = "INVALID_CODE"
    default_message = "The code is not valid."


class ChallengeExpired(DomainError):
    code = "CHALLENGE_EXPIRED"
    default_message = "The login challenge has expired; log in again."


class ChallengeLocked(DomainError):
    code = "CHALLENGE_LOCKED"
    default_message = "Too many wrong codes; log in again."


class ChallengeClosed(DomainError):
    code = "CHALLENGE_CLOSED"
    default_message = "The login challenge is already closed."


class MethodNotAvailable(DomainError):
    code = "METHOD_NOT_AVAILABLE"
    default_message = "That verification method is not available."


class ReauthenticationRequired(DomainError):
    code = "REAUTHENTICATION_REQUIRED"
    default_message = "Confirm your password (reauthenticate) and try again."


class ServiceUnavailable(DomainError):
    code = "SERVICE_UNAVAILABLE"
    default_message = "The service is temporarily unavailable; try again shortly."


class QueryRejected(DomainError):
    code = "QUERY_REJECTED"
    default_message = "The request was rejected."


class RateLimited(DomainError):
    code = "RATE_LIMITED"
    default_message = "Too many attempts; wait before trying again."

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code, "retryAfter": self.retry_after}
