"""The authenticator app factor (T1, T2, T3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag

from gateway.accounts.clients import ClientKind
from gateway.core import otp, sql
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.core.errors import DomainError
from gateway.factors.base import ACCEPTED, Attempt, TwoFactorMethod, Verdict
from gateway.factors.summary import MethodSummary
from gateway.factors.totp.errors import TotpNotPending, WrongTotpCode
from gateway.factors.totp.models import TotpCredential

log = logging.getLogger(__name__)

ISSUER = "Kanmon"

# T2's hot path, on every TOTP login: written once (see gateway.core.sql).
_ACTIVE_CREDENTIAL = sql.select_model(
    TotpCredential,
    "t",
    'FROM "totp_credentials" t WHERE t."user_id" = {0} AND t."secret_encrypted" IS NOT NULL',
)
_CLAIM_STEP = (
    'UPDATE "totp_credentials" SET "last_step" = {0} WHERE "id" = {1} AND "last_step" < {2}'
)


def _context(user_id: UUID) -> str:
    return f"totp:{user_id}"


@dataclass(frozen=True)
class TotpEnrollment:
    secret: str
    otpauth_uri: str
    qr_svg: str


class TotpService:
    method = TwoFactorMethod.TOTP

    def __init__(self, box: SecretBox, clock: Clock = utc_now) -> None:
        self._box = box
        self._clock = clock

    async def begin(self, user_id: UUID, username: str) -> TotpEnrollment:
        """T1: a new secret, shown once; TOTP stays off until `confirm`."""
        secret = otp.new_secret()
        sealed = self._box.encrypt(secret, context=_context(user_id))
        credential, created = await TotpCredential.get_or_create(
            user_id=user_id, defaults={"pending_secret_encrypted": sealed}
        )
        if not created:
            credential.pending_secret_encrypted = sealed
            await credential.save(update_fields=["pending_secret_encrypted"])
        uri = otp.provisioning_uri(secret, username, ISSUER)
        return TotpEnrollment(secret=secret, otpauth_uri=uri, qr_svg=otp.qr_svg(uri))

    async def confirm(self, user_id: UUID, code: str) -> None:
        """T1: a valid code from the pending secret turns TOTP on. Raises INVALID_CODE."""
        credential = await TotpCredential.get_or_none(user_id=user_id)
        if credential is None or credential.pending_secret_encrypted is None:
            raise TotpNotPending()
        secret = self._open(credential.pending_secret_encrypted, credential, "pending")
        if secret is None:
            # T3: sealed under a key no longer accepted; a new enrollment is the way out.
            raise TotpNotPending()
        step = otp.matching_step(secret, code, self._clock(), after_step=-1)
        if step is None:
            raise WrongTotpCode()
        credential.secret_encrypted = credential.pending_secret_encrypted
        credential.pending_secret_encrypted = None
        credential.last_step = step
        credential.confirmed_at = self._clock()
        await credential.save()

    async def remove(self, user_id: UUID) -> bool:
        return await TotpCredential.filter(user_id=user_id).delete() > 0

    def offered(self, summary: MethodSummary, client: ClientKind) -> bool:
        return summary.totp

    def client_refusal(self, client: ClientKind) -> DomainError | None:
        return None

    async def verify(self, attempt: Attempt) -> Verdict:
        """T2: accepts a code within one step of drift, once per time step (no replay)."""
        return await self.verify_code(attempt.user_id, attempt.code)

    async def verify_code(self, user_id: UUID, code: str) -> Verdict:
        credential = await sql.fetch_model(TotpCredential, _ACTIVE_CREDENTIAL(), [user_id])
        if credential is None or credential.secret_encrypted is None:
            return Verdict(accepted=False, error=WrongTotpCode())
        secret = self._open(credential.secret_encrypted, credential, "active")
        if secret is None:
            return Verdict(accepted=False, error=WrongTotpCode())
        step = otp.matching_step(secret, code, self._clock(), after_step=credential.last_step)
        if step is None:
            return Verdict(accepted=False, error=WrongTotpCode())
        claimed = await sql.execute(_CLAIM_STEP, [step, credential.id, step])
        if claimed != 1:
            return Verdict(accepted=False, error=WrongTotpCode())
        if self._box.needs_rotation(credential.secret_encrypted):
            await TotpCredential.filter(id=credential.id).update(
                secret_encrypted=self._box.encrypt(secret, context=_context(user_id))
            )
        return ACCEPTED

    def _open(self, sealed: str, credential: TotpCredential, which: str) -> str | None:
        """T3: the secret, or None (logged, without the secret) when no accepted key opens it,
        e.g. after an old key was dropped before `kanmon admin rekey` re-sealed it."""
        try:
            return self._box.decrypt(sealed, context=_context(credential.user_id))
        except (ValueError, InvalidTag):
            log.error(
                "totp secret cannot be opened with any accepted key",
                extra={"credential_id": str(credential.id), "column": which},
            )
            return None
