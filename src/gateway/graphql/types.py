"""GraphQL object types of API.md; mapping from domain views happens here, nowhere else."""

from __future__ import annotations

import base64
from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry

from gateway.accounts.clients import ClientKind as DomainClientKind
from gateway.accounts.service import IssuedSession
from gateway.core.audit import SecurityEvent as SecurityEventRow
from gateway.core.errors import BadUserInput
from gateway.factors.base import TwoFactorMethod as DomainMethod
from gateway.factors.sms.service import PhoneView
from gateway.login.models import ChallengeStatus as DomainChallengeStatus
from gateway.login.service import ChallengeView
from gateway.security.service import SettingsView

ClientKind = strawberry.enum(DomainClientKind, name="ClientKind")
TwoFactorMethod = strawberry.enum(DomainMethod, name="TwoFactorMethod")
ChallengeStatus = strawberry.enum(DomainChallengeStatus, name="ChallengeStatus")


@strawberry.enum
class Platform(Enum):
    IOS = "IOS"
    ANDROID = "ANDROID"


@strawberry.input
class ClientInput:
    kind: DomainClientKind
    name: str | None = None


@strawberry.type
class Session:
    token: str
    expires_at: datetime
    client_kind: DomainClientKind

    @classmethod
    def of(cls, issued: IssuedSession) -> Session:
        return cls(token=issued.token, expires_at=issued.expires_at, client_kind=issued.client_kind)


@strawberry.type
class LoginChallenge:
    id: strawberry.ID
    token: str
    status: DomainChallengeStatus
    methods: list[DomainMethod]
    expires_at: datetime
    match_number: int | None = None
    sms_retry_after_seconds: int | None = None

    @classmethod
    def of(cls, view: ChallengeView) -> LoginChallenge:
        return cls(
            id=strawberry.ID(str(view.id)),
            token=view.token,
            status=view.status,
            methods=list(view.methods),
            expires_at=view.expires_at,
            match_number=view.match_number,
            sms_retry_after_seconds=view.sms_retry_after,
        )


LoginResult = Annotated[Session | LoginChallenge, strawberry.union("LoginResult")]


@strawberry.type
class Phone:
    masked_number: str
    verified: bool
    carrier: str | None
    sms_paused: bool

    @classmethod
    def of(cls, view: PhoneView) -> Phone:
        return cls(
            masked_number=view.masked_number,
            verified=view.verified,
            carrier=view.carrier,
            sms_paused=view.sms_paused,
        )


@strawberry.type
class Device:
    id: strawberry.ID
    name: str
    platform: Platform
    push_enabled: bool
    last_seen_at: datetime | None
    created_at: datetime


@strawberry.type
class SecuritySettings:
    two_factor_enabled: bool
    methods: list[DomainMethod]
    phone: Phone | None
    totp_enabled: bool
    devices: list[Device]
    backup_codes_active: int
    temporary_password_expires_at: datetime | None

    @classmethod
    def of(cls, view: SettingsView) -> SecuritySettings:
        return cls(
            two_factor_enabled=view.two_factor_enabled,
            methods=list(view.methods),
            phone=None if view.phone is None else Phone.of(view.phone),
            totp_enabled=view.totp_enabled,
            devices=[],
            backup_codes_active=view.backup_codes_active,
            temporary_password_expires_at=view.temporary_password_expires_at,
        )


@strawberry.type
class SecurityEvent:
    id: strawberry.ID
    kind: str
    created_at: datetime
    detail: str | None

    @classmethod
    def of(cls, row: SecurityEventRow) -> SecurityEvent:
        return cls(
            id=strawberry.ID(str(row.id)),
            kind=row.kind,
            created_at=row.created_at,
            detail=row.detail,
        )


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class SecurityEventEdge:
    node: SecurityEvent
    cursor: str


@strawberry.type
class SecurityEventConnection:
    edges: list[SecurityEventEdge]
    page_info: PageInfo


@strawberry.type
class TotpEnrollment:
    secret: str
    otpauth_uri: str
    qr_svg: str


@strawberry.type
class BackupCode:
    code: str
    sequence: int
    active_count: int


@strawberry.type
class TemporaryPassword:
    password: str
    expires_at: datetime


@strawberry.type
class TwoFactorEnabled:
    settings: SecuritySettings
    backup_code: BackupCode


@strawberry.type
class SettingsChange:
    settings: SecuritySettings
    two_factor_disabled: bool


def encode_cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"event:{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        kind, _, raw = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind != "event":
            raise ValueError(kind)
        return int(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUserInput("Malformed cursor.") from exc
