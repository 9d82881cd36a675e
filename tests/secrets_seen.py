"""Every secret the suite sees (tokens, codes, passwords, numbers), for the logging policy
test to look for in the captured logs."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEYS = frozenset(
    {
        "token",
        "secret",
        "code",
        "password",
        "loginCodeSecret",
        "otpauthUri",
        "number",
        "pushToken",
        "signature",
    }
)
SEEN: set[str] = set()
MIN_LENGTH = 6
# `extensions.code` values such as NOT_FOUND are public error codes, not secrets.
ERROR_CODE = re.compile(r"[A-Z_]+")


def remember(value: Any, key: str | None = None) -> None:
    """Walks a JSON value and keeps the strings found under secret-bearing keys."""
    if isinstance(value, dict):
        for name, item in value.items():
            remember(item, name)
    elif isinstance(value, list):
        for item in value:
            remember(item, key)
    elif (
        isinstance(value, str)
        and key in SECRET_KEYS
        and len(value) >= MIN_LENGTH
        and not ERROR_CODE.fullmatch(value)
    ):
        SEEN.add(value)
        SEEN.add(value.replace("-", "").replace(" ", ""))
