"""RFC 6238 maths, free of I/O: SHA-1, 6 digits, 30 s steps, one step of drift either side."""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp
import segno

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1


def new_secret() -> str:
    """160 bits in base32 (32 characters), as authenticator apps take it."""
    return pyotp.random_base32()


def time_step(moment: datetime) -> int:
    return int(moment.timestamp()) // STEP_SECONDS


def normalize_code(code: str) -> str | None:
    """ASCII digits only: fullwidth and other unicode digits are refused rather than folded."""
    stripped = code.replace(" ", "")
    if len(stripped) != DIGITS or not stripped.isascii() or not stripped.isdigit():
        return None
    return stripped


def matching_step(secret: str, code: str, moment: datetime, after_step: int) -> int | None:
    """T2: the step within the drift window whose code matches and that is later than the last
    accepted one; None otherwise. Every candidate is compared, so timing does not tell which."""
    normalized = normalize_code(code)
    if normalized is None:
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = time_step(moment)
    found: int | None = None
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), normalized) and step > after_step:
            found = step if found is None else found
    return found


def provisioning_uri(secret: str, account_name: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=issuer)


def qr_svg(uri: str) -> str:
    return str(segno.make(uri, error="m").svg_inline(scale=4))
