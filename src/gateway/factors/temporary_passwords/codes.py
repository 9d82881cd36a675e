"""Temporary password text, free of I/O: 16 lowercase letters (75 bits), shown in groups of 4."""

from __future__ import annotations

import secrets
import string

LENGTH = 16


def new_password() -> str:
    letters = "".join(secrets.choice(string.ascii_lowercase) for _ in range(LENGTH))
    return " ".join(letters[i : i + 4] for i in range(0, LENGTH, 4))


def normalize(text: str) -> str | None:
    compact = text.replace(" ", "").replace("-", "").lower()
    if len(compact) != LENGTH or not compact.isascii() or not compact.isalpha():
        return None
    return compact
