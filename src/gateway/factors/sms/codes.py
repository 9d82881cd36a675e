"""SMS code text, free of I/O: 6 ASCII digits."""

from __future__ import annotations

import secrets

DIGITS = 6


def new_code() -> str:
    return f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"


def normalize(text: str) -> str | None:
    """ASCII digits only (fullwidth or other unicode digits are refused, not folded)."""
    compact = text.replace(" ", "").replace("-", "")
    if len(compact) != DIGITS or not compact.isascii() or not compact.isdigit():
        return None
    return compact


def login_body(code: str) -> str:
    return f"{code} is your Kanmon login code. Don't share it with anyone."


def verification_body(code: str) -> str:
    return f"{code} is your Kanmon code to confirm this phone number."
