"""Encryption at rest and keyed hashes, with key rotation (T3, F4).

Each configured key yields two sub-keys through HKDF, so the encryption key and the hashing
key never coincide. Stored values carry the id of the key that made them, so old keys keep
working after a rotation while new values always use the current key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"kanmon-key-id" + key).hexdigest()[:8]


class SecretBox:
    """AES-256-GCM for secrets we must read back (TOTP secrets), HMAC-SHA256 for codes we
    only compare (backup codes, temporary passwords)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._enc = {_key_id(k): AESGCM(_derive(k, b"kanmon/encrypt/v1")) for k in keys}
        self._mac = {_key_id(k): _derive(k, b"kanmon/hash/v1") for k in keys}
        self._current = _key_id(keys[0])

    @property
    def current_key_id(self) -> str:
        """The id every new sealed value and keyed hash names (`v1.<id>.`, `<id>$`)."""
        return self._current

    @property
    def old_key_ids(self) -> tuple[str, ...]:
        """The earlier keys' ids, still accepted to open and to match (T3)."""
        return tuple(key_id for key_id in self._enc if key_id != self._current)

    def encrypt(self, plaintext: str, *, context: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._enc[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"v1.{self._current}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, *, context: str) -> str:
        version, key_id, body = token.split(".", 2)
        if version != "v1" or key_id not in self._enc:
            raise ValueError("unknown key or format")
        raw = base64.urlsafe_b64decode(body)
        return self._enc[key_id].decrypt(raw[:12], raw[12:], context.encode()).decode()

    def needs_rotation(self, token: str) -> bool:
        return token.split(".", 2)[1] != self._current

    def keyed_hash(self, value: str) -> str:
        """A keyed hash under the current key: what new rows store."""
        return self._keyed_hash(self._current, value)

    def keyed_hash_candidates(self, value: str) -> list[str]:
        """The value's keyed hash under every accepted key, for lookups across a rotation."""
        return [self._keyed_hash(key_id, value) for key_id in self._mac]

    def matches(self, value: str, stored: str) -> bool:
        key_id, _, _ = stored.partition("$")
        if key_id not in self._mac:
            return False
        return hmac.compare_digest(self._keyed_hash(key_id, value), stored)

    def _keyed_hash(self, key_id: str, value: str) -> str:
        digest = hmac.new(self._mac[key_id], value.encode(), hashlib.sha256).hexdigest()
        return f"{key_id}${digest}"


def token_digest(token: str) -> str:
    """Session and challenge tokens carry 256 random bits, so a plain SHA-256 is a safe,
    key-independent lookup hash that survives key rotation."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
