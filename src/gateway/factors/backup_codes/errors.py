"""Backup code failures (API.md codes)."""

from __future__ import annotations

from gateway.core.errors import DomainError


class InvalidBackupCode(DomainError):
    code = "INVALID_BACKUP_CODE"
    default_message = "That backup code is not valid."


class BackupCodeOutOfOrder(DomainError):
    code = "BACKUP_CODE_OUT_OF_ORDER"
    default_message = (
        "Backup codes must be used in the order they were obtained. Every backup code you had "
        "is now invalid: log in another way and get a new one."
    )


class BackupCodeLimit(DomainError):
    code = "BACKUP_CODE_LIMIT"
    default_message = "You already hold 5 unused backup codes; use one before asking for more."


class BackupCodeNotAllowed(DomainError):
    code = "BACKUP_CODE_NOT_ALLOWED"
    default_message = (
        "Backup codes work only in the app's own clients. Third-party apps log in with a "
        "temporary password, created in your security settings."
    )
