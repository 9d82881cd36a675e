"""TOTP failures."""

from __future__ import annotations

from gateway.core.errors import DomainError, InvalidCode


class TotpNotPending(DomainError):
    code = "METHOD_NOT_AVAILABLE"
    default_message = "Start an authenticator enrollment first."


class WrongTotpCode(InvalidCode):
    default_message = "The authenticator code is not valid."
