"""Device signatures (P4), free of I/O: Ed25519 over the exact messages of API.md."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

KEY_BYTES = 32
SIGNATURE_BYTES = 64


def decode_public_key(text: str) -> bytes | None:
    """Standard base64 of the raw 32-byte key, or None when it is not one."""
    raw = _b64(text, limit=64)
    if raw is None or len(raw) != KEY_BYTES:
        return None
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None
    return raw


def approve_message(request_id: str, nonce: str, match_number: int | None) -> bytes:
    if match_number is None:
        return f"{request_id}:{nonce}:APPROVE".encode()
    return f"{request_id}:{nonce}:APPROVE:{match_number}".encode()


def deny_message(request_id: str, nonce: str) -> bytes:
    return f"{request_id}:{nonce}:DENY".encode()


def valid_signature(public_key: bytes, message: bytes, signature_text: str) -> bool:
    signature = _b64(signature_text, limit=128)
    if signature is None or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _b64(text: str, *, limit: int) -> bytes | None:
    if len(text) > limit:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
