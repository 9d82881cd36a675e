"""Push failures (API.md codes)."""

from __future__ import annotations

from gateway.core.errors import DomainError, InvalidCode


class InvalidSignature(DomainError):
    code = "INVALID_SIGNATURE"
    default_message = "The signature does not match this device and request."


class MatchNumberMismatch(DomainError):
    code = "MATCH_NUMBER_MISMATCH"
    default_message = "That is not the number shown on the login page."


class RequestNotPending(DomainError):
    code = "REQUEST_NOT_PENDING"
    default_message = "This login request was already answered or has expired."


class WrongAppCode(InvalidCode):
    default_message = "The login code is not valid."
