"""GraphQL object types of API.md; mapping from domain views happens here, nowhere else."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

import strawberry

from gateway.accounts.clients import ClientKind as DomainClientKind
from gateway.accounts.service import IssuedSession
from gateway.core.audit import SecurityEvent as SecurityEventRow
from gateway.core.errors import BadUserInput
from gateway.factors.base import TwoFactorMethod as DomainMethod
from gateway.factors.push.models import Device as DeviceRow
from gateway.factors.push.models import LoginRequest as LoginRequestRow
from gateway.factors.push.models import LoginRequestStatus as DomainRequestStatus
from gateway.factors.push.models import Platform as DomainPlatform
from gateway.factors.sms.service import PhoneView
from gateway.login.models import ChallengeStatus as DomainChallengeStatus
from gateway.login.service import ChallengeView
from gateway.security.service import SettingsView

ClientKind = strawberry.enum(DomainClientKind, name="ClientKind")
TwoFactorMethod = strawberry.enum(DomainMethod, name="TwoFactorMethod")
ChallengeStatus = strawberry.enum(DomainChallengeStatus, name="ChallengeStatus")


Platform = strawberry.enum(DomainPlatform, name="Platform")
LoginRequestStatus = strawberry.enum(DomainRequestStatus, name="LoginRequestStatus")


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
    platform: DomainPlatform
    push_enabled: bool
    last_seen_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: DeviceRow) -> Device:
        return cls(
            id=strawberry.ID(str(row.id)),
            name=row.name,
            platform=row.platform,
            push_enabled=row.push_enabled,
            last_seen_at=row.last_seen_at,
            created_at=row.created_at,
        )


@strawberry.type
class LoginRequest:
    id: strawberry.ID
    status: DomainRequestStatus
    nonce: str
    created_at: datetime
    expires_at: datetime
    browser: str | None
    ip_address: str | None
    location: str | None
    match_number_required: bool

    @classmethod
    def of(cls, row: LoginRequestRow, now: datetime) -> LoginRequest:
        status = row.status
        if status is DomainRequestStatus.PENDING and row.expires_at <= now:
            status = DomainRequestStatus.EXPIRED
        return cls(
            id=strawberry.ID(str(row.id)),
            status=status,
            nonce=row.nonce,
            created_at=row.created_at,
            expires_at=row.expires_at,
            browser=row.browser,
            ip_address=row.ip_address,
            location=row.location,
            match_number_required=row.match_number is not None,
        )


@strawberry.type
class LoginRequestEdge:
    node: LoginRequest
    cursor: str


@strawberry.type
class LoginRequestConnection:
    edges: list[LoginRequestEdge]
    page_info: PageInfo


@strawberry.type
class DeviceEnrollment:
    device: Device
    login_code_secret: str


@strawberry.type
class SecuritySettings:
    view: strawberry.Private[SettingsView]

    @strawberry.field
    def two_factor_enabled(self) -> bool:
        return self.view.two_factor_enabled

    @strawberry.field
    def methods(self) -> list[DomainMethod]:
        return self.view.methods

    @strawberry.field
    async def phone(self) -> Phone | None:
        phone = await self.view.phone()
        return None if phone is None else Phone.of(phone)

    @strawberry.field
    def totp_enabled(self) -> bool:
        return self.view.totp_enabled

    @strawberry.field
    async def devices(self) -> list[Device]:
        return [Device.of(d) for d in await self.view.devices()]

    @strawberry.field
    def backup_codes_active(self) -> int:
        return self.view.backup_codes_active

    @strawberry.field
    async def temporary_password_expires_at(self) -> datetime | None:
        return await self.view.temporary_password_expires_at()

    @classmethod
    def of(cls, view: SettingsView) -> SecuritySettings:
        return cls(view=view)


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


def encode_cursor(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def decode_cursor(kind: str, cursor: str) -> str:
    """The cursor's value; BAD_USER_INPUT when it is not a cursor of this kind."""
    try:
        found, _, raw = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUserInput("Malformed cursor.") from exc
    if found != kind or not raw:
        raise BadUserInput("Malformed cursor.")
    return raw
