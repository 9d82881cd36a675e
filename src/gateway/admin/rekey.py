"""T3: `kanmon admin rekey` finishes a key rotation.

Every sealed secret still under an earlier key is opened and sealed again under the current
key, in batches, each row with a conditional update on the ciphertext it read: a row that
changed meanwhile (a user re-enrolled, confirmed, verified a code) is left as it now is, so the
run is idempotent and safe beside live traffic. A secret that no accepted key opens is counted
and left alone; the login paths refuse it like a wrong code.

Keyed hashes (backup codes, temporary passwords, SMS codes) cannot be re-hashed without their
plaintext. Each stored hash names its key, so the report counts those that still need an old
key and, for the kinds that expire, until when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from tortoise.expressions import Q
from tortoise.models import Model

from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.factors.backup_codes.models import BackupCode, BackupCodeStatus
from gateway.factors.push.models import Device
from gateway.factors.sms.models import SmsCode
from gateway.factors.temporary_passwords.models import TemporaryPassword
from gateway.factors.totp.models import TotpCredential

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500
# How many ids of unreadable rows the report lists per kind (the count is always whole).
MAX_LISTED = 20

NOTES = (
    "Keyed hashes cannot be re-hashed without their plaintext: backup codes, temporary "
    "passwords and SMS codes made before the rotation verify only while their key stays in "
    "KANMON_OLD_SECRET_KEYS. Temporary passwords and SMS codes expire (old_key_needed_until); "
    "backup codes do not, and stay under the old key until used or invalidated.",
    "Run rekey after every gateway and worker has the new KANMON_SECRET_KEY: a process still "
    "on the old key seals new secrets under it.",
)


def _sealed_prefix(key_id: str) -> str:
    """How a value sealed under `key_id` starts (SecretBox.encrypt: `v1.<key id>.<body>`)."""
    return f"v1.{key_id}."


def _hash_prefix(key_id: str) -> str:
    """How a keyed hash made under `key_id` starts (SecretBox.keyed_hash: `<key id>$<hex>`)."""
    return f"{key_id}$"


@dataclass(frozen=True)
class KeyIds:
    current: str
    old: tuple[str, ...]


def key_ids(box: SecretBox) -> KeyIds:
    return KeyIds(box.current_key_id, box.old_key_ids)


# Sealed secrets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedColumn:
    """A column of sealed values and the context each value was sealed with."""

    kind: str
    model: type[Model]
    column: str
    context: Callable[[Any, Any], str]  # (row id, user id) -> the SecretBox context


# Pending before active: a confirmation moves the pending ciphertext to the active column, so
# one made during the run carries an already re-sealed value. The contexts are the ones the
# sealing services use; the tests open what the services sealed, so a mismatch would fail them.
SEALED = (
    SealedColumn(
        "totp_pending_secret",
        TotpCredential,
        "pending_secret_encrypted",
        lambda _, user: f"totp:{user}",
    ),
    SealedColumn("totp_secret", TotpCredential, "secret_encrypted", lambda _, user: f"totp:{user}"),
    SealedColumn(
        "device_login_code_secret",
        Device,
        "login_code_secret_sealed",
        lambda row, _: f"device:{row}",
    ),
    SealedColumn("sms_code", SmsCode, "code_sealed", lambda row, _: f"sms:{row}"),
)


@dataclass
class SealedTally:
    resealed: int = 0
    # No accepted key opens it (its key was dropped, or the value is damaged); left as it is.
    unreadable: int = 0
    # The row changed between read and update; what it holds now was written by the service.
    changed_meanwhile: int = 0
    # After the run: values still sealed under an accepted old key (unreadable ones included).
    remaining_under_old_keys: int = 0
    unreadable_ids: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "resealed": self.resealed,
            "unreadable": self.unreadable,
            "changed_meanwhile": self.changed_meanwhile,
            "remaining_under_old_keys": self.remaining_under_old_keys,
            "unreadable_ids": self.unreadable_ids,
        }


def _open(box: SecretBox, sealed: str, context: str) -> str | None:
    try:
        return box.decrypt(sealed, context=context)
    except (ValueError, InvalidTag):
        return None


async def reseal_row(
    box: SecretBox, spec: SealedColumn, row: dict[str, Any], tally: SealedTally
) -> None:
    """Re-seals one row as read (`row` holds id, user_id and the column) if it still holds
    what was read: a conditional update, so a row the services rewrote meanwhile is kept."""
    old: str = row[spec.column]
    context = spec.context(row["id"], row["user_id"])
    plain = _open(box, old, context)
    if plain is None:
        tally.unreadable += 1
        if len(tally.unreadable_ids) < MAX_LISTED:
            tally.unreadable_ids.append(str(row["id"]))
        return
    new = box.encrypt(plain, context=context)
    updated = await spec.model.filter(id=row["id"], **{spec.column: old}).update(
        **{spec.column: new}
    )
    if updated == 1:
        tally.resealed += 1
    else:
        tally.changed_meanwhile += 1


async def _reseal(box: SecretBox, keys: KeyIds, spec: SealedColumn, batch: int) -> SealedTally:
    """Walks the rows not sealed under the current key, in id order, one batch at a time."""
    tally = SealedTally()
    after: Any = None
    while True:
        query = spec.model.filter(**{f"{spec.column}__isnull": False}).exclude(
            **{f"{spec.column}__startswith": _sealed_prefix(keys.current)}
        )
        if after is not None:
            query = query.filter(id__gt=after)
        rows = await query.order_by("id").limit(batch).values("id", "user_id", spec.column)
        for row in rows:
            await reseal_row(box, spec, row, tally)
        if len(rows) < batch:
            break
        after = rows[-1]["id"]
    tally.remaining_under_old_keys = await _count_prefixed(
        spec.model.all(), spec.column, [_sealed_prefix(k) for k in keys.old]
    )
    if tally.unreadable:
        log.warning(
            "rekey: secrets no accepted key opens",
            extra={"kind": spec.kind, "count": tally.unreadable},
        )
    return tally


async def _count_prefixed(query: Any, column: str, prefixes: list[str]) -> int:
    if not prefixes:
        return 0
    return int(await query.filter(_any_prefix(column, prefixes)).count())


def _any_prefix(column: str, prefixes: list[str]) -> Q:
    return Q(*(Q(**{f"{column}__startswith": p}) for p in prefixes), join_type="OR")


# Keyed hashes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashTally:
    # Still usable and verifiable only under an accepted old key.
    under_old_keys: int
    # Still usable but under a key that is no longer accepted: they can no longer verify.
    under_unknown_keys: int
    # The last expiry among those under old keys; None when there are none, or (backup codes)
    # when they never expire.
    old_key_needed_until: datetime | None

    def as_json(self) -> dict[str, object]:
        until = self.old_key_needed_until
        return {
            "under_old_keys": self.under_old_keys,
            "under_unknown_keys": self.under_unknown_keys,
            "old_key_needed_until": until.isoformat() if until else None,
        }


async def _hash_tally(query: Any, column: str, keys: KeyIds, expires: bool) -> HashTally:
    """Counts the live rows of `query` by the key their hash names."""
    live = int(await query.count())
    current = await _count_prefixed(query, column, [_hash_prefix(keys.current)])
    old_prefixes = [_hash_prefix(k) for k in keys.old]
    old = await _count_prefixed(query, column, old_prefixes)
    until = None
    if expires and old:
        last = await query.filter(_any_prefix(column, old_prefixes)).order_by("-expires_at").first()
        until = last.expires_at if last is not None else None
    return HashTally(old, live - current - old, until)


async def _keyed_hashes(keys: KeyIds, now: datetime) -> dict[str, HashTally]:
    return {
        "backup_code": await _hash_tally(
            BackupCode.filter(status=BackupCodeStatus.ACTIVE), "code_hash", keys, expires=False
        ),
        "temporary_password": await _hash_tally(
            TemporaryPassword.filter(used_at__isnull=True, expires_at__gt=now),
            "password_hash",
            keys,
            expires=True,
        ),
        "sms_code": await _hash_tally(
            SmsCode.filter(used_at__isnull=True, expires_at__gt=now), "code_hash", keys, True
        ),
    }


# The run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RekeyReport:
    keys: KeyIds
    sealed: dict[str, SealedTally]
    keyed_hashes: dict[str, HashTally]

    @property
    def old_keys_needed(self) -> bool:
        """Whether dropping KANMON_OLD_SECRET_KEYS now would leave something unverifiable."""
        return any(t.remaining_under_old_keys for t in self.sealed.values()) or any(
            t.under_old_keys for t in self.keyed_hashes.values()
        )

    def as_json(self) -> dict[str, object]:
        return {
            "current_key_id": self.keys.current,
            "old_key_ids": list(self.keys.old),
            "sealed": {kind: tally.as_json() for kind, tally in self.sealed.items()},
            "keyed_hashes": {kind: tally.as_json() for kind, tally in self.keyed_hashes.items()},
            "old_keys_still_needed": self.old_keys_needed,
            "notes": list(NOTES),
        }


async def rekey(box: SecretBox, batch: int = DEFAULT_BATCH, clock: Clock = utc_now) -> RekeyReport:
    """T3: re-seals every sealed secret not under the current key and counts the keyed hashes
    that still need an old one. Never raises for a secret it cannot open: it counts it."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    keys = key_ids(box)
    sealed = {spec.kind: await _reseal(box, keys, spec, batch) for spec in SEALED}
    report = RekeyReport(keys, sealed, await _keyed_hashes(keys, clock()))
    log.info(
        "rekey done",
        extra={
            "resealed": sum(t.resealed for t in sealed.values()),
            "unreadable": sum(t.unreadable for t in sealed.values()),
            "old_keys_still_needed": report.old_keys_needed,
        },
    )
    return report
