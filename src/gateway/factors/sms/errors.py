"""SMS failures (API.md codes)."""

from __future__ import annotations

from gateway.core.errors import DomainError, InvalidCode, MethodNotAvailable
from gateway.factors.sms.phones import InvalidPhoneNumber

__all__ = ["InvalidPhoneNumber", "NoPendingPhone", "SmsNotAvailable", "WrongSmsCode"]


class WrongSmsCode(InvalidCode):
    default_message = "The SMS code is not valid."


class NoPendingPhone(DomainError):
    code = "METHOD_NOT_AVAILABLE"
    default_message = "Add a phone number first."


class SmsNotAvailable(MethodNotAvailable):
    default_message = "SMS is not available for this account: no verified, active phone."
