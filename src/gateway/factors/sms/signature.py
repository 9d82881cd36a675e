"""Twilio's webhook signature, free of I/O (W1): base64 HMAC-SHA1, keyed with the auth token,
of the public URL followed by every POST parameter's name and value, sorted by name."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable


def expected_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    payload = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_signature(
    auth_tokens: Iterable[str], url: str, params: list[tuple[str, str]], signature: str | None
) -> bool:
    """W1: whether `signature` is what one of `auth_tokens` gives. Header values reach us as
    latin-1 text, and `hmac.compare_digest` raises on non-ASCII strings: a base64 signature is
    ASCII, so anything else is simply wrong."""
    if not signature or not signature.isascii():
        return False
    return any(
        hmac.compare_digest(expected_signature(token, url, params), signature)
        for token in auth_tokens
    )
