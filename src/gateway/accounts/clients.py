"""The kinds of client a session belongs to (A2)."""

from __future__ import annotations

from enum import StrEnum


class ClientKind(StrEnum):
    WEB = "WEB"
    MOBILE_WEB = "MOBILE_WEB"
    IOS = "IOS"
    ANDROID = "ANDROID"
    THIRD_PARTY = "THIRD_PARTY"


APP_CLIENTS = frozenset({ClientKind.IOS, ClientKind.ANDROID})
