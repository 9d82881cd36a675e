"""G2: size limits on what a caller types, refused as BAD_USER_INPUT before anything runs.

An oversize password or code is not a wrong guess: it is refused for its shape, the same way
wherever it is sent, and so never reaches argon2, a keyed hash, or a throttle's count."""

from __future__ import annotations

from gateway.core.errors import BadUserInput

# Far above any code Kanmon issues (6 digits, 12-character backup codes), so a code pasted
# with spaces or dashes still fits.
MAX_CODE_LENGTH = 64
# The most a sign-up accepts: a longer one cannot be anyone's password.
MAX_PASSWORD_LENGTH = 256


def require_code_size(code: str) -> None:
    """Raises BAD_USER_INPUT for a code longer than any that is issued."""
    if len(code) > MAX_CODE_LENGTH:
        raise BadUserInput("The code is too long.")


def require_password_size(password: str) -> None:
    """Raises BAD_USER_INPUT for a password longer than a sign-up accepts."""
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadUserInput("The password is too long.")
