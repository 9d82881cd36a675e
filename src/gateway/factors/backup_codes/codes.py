"""Backup code text, free of I/O: 12 characters of Crockford base32 (no I, L, O or U), shown in
groups of four; input is accepted in any case, with or without spaces or dashes."""

from __future__ import annotations

import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 12
ENTROPY_BITS = 60  # 12 characters x 5 bits: the most API.md's 12-character format can carry.
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def display(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, LENGTH, 4))


def normalize(text: str) -> str | None:
    """The canonical form of typed input, or None when it cannot be a backup code."""
    if len(text) > 64:
        return None
    compact = text.replace(" ", "").replace("-", "").upper().translate(_READ_AS)
    if len(compact) != LENGTH or any(ch not in ALPHABET for ch in compact):
        return None
    return compact
