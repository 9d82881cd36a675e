"""Text no column can hold: PostgreSQL's text types refuse U+0000, so a value carrying one
fails deep in a write, as the error that means "database unavailable", after earlier steps have
happened. No username, password, code, number, name or provider field contains one: the edges
(GraphQL arguments, webhook forms) refuse it as bad input before anything runs."""

from __future__ import annotations

NUL = "\x00"


def has_nul(value: object) -> bool:
    """Whether a decoded value holds a NUL anywhere (strings, list and tuple items, object
    keys and values)."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False
