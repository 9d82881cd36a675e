"""One settings class for every process; built once in an entry point and passed down."""

from __future__ import annotations

import base64
import secrets
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.core.db import with_pool_size
from gateway.core.redis_urls import unix_socket_settings

# What tortoise opens here: PostgreSQL through asyncpg, or SQLite.
DATABASE_SCHEMES = ("postgres://", "asyncpg://", "sqlite://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SmsProviderName(StrEnum):
    CONSOLE = "console"
    TWILIO = "twilio"


class Settings(BaseSettings):
    """Configuration read from `KANMON_*` variables (API.md lists them)."""

    model_config = SettingsConfigDict(env_prefix="KANMON_", extra="ignore")

    env: Environment = Environment.PRODUCTION
    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str | None = None
    database_pool_size: int = Field(default=10, ge=1)
    # Password hashes computed at once per process; `kanmon serve --workers N` sets
    # cores / N, so the gateway processes together never run more argon2 than there are cores.
    argon2_threads: int | None = Field(default=None, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    # G1: also accept the legacy graphql-ws websocket protocol (subscriptions-transport-ws
    # clients) beside graphql-transport-ws.
    graphql_ws_legacy: bool = False
    secret_key: SecretStr | None = None
    old_secret_keys: SecretStr = SecretStr("")

    challenge_ttl_seconds: int = Field(default=600, ge=5)
    reauth_window_seconds: int = Field(default=900, ge=30)
    session_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    temporary_password_ttl_seconds: int = Field(default=3600, ge=60)

    login_failures_per_account: int = Field(default=10, ge=1)
    login_failures_per_ip: int = Field(default=100, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)
    signups_per_ip_per_hour: int = Field(default=20, ge=1)
    websockets_per_ip: int = Field(default=100, ge=1)

    sms_resend_cooldown_seconds: int = Field(default=60, ge=0)
    sms_max_sends_per_challenge: int = Field(default=3, ge=1)
    sms_code_ttl_seconds: int = Field(default=600, ge=30)
    sms_per_number_per_hour: int = Field(default=10, ge=1)
    sms_per_account_per_hour: int = Field(default=10, ge=1)
    sms_per_ip_per_hour: int = Field(default=50, ge=1)
    sms_global_per_minute: int = Field(default=1000, ge=1)
    # Numbers that differ only in their last 3 digits form a block: the SMS-pumping sweep.
    sms_per_block_per_hour: int = Field(default=20, ge=1)
    sms_allowed_country_codes: str = ""
    sms_provider: SmsProviderName = SmsProviderName.CONSOLE
    sms_short_code: str = "40404"
    sms_retry_base_seconds: float = Field(default=1.0, gt=0)
    sms_primary_tries: int = Field(default=4, ge=1)
    sms_fallback_tries: int = Field(default=3, ge=1)
    # Below the sms job's 10 s timeout, or arq would kill the job instead of our retry logic.
    sms_send_timeout_seconds: float = Field(default=5.0, gt=0, le=8)
    twilio_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_fallback_base_url: str | None = None
    twilio_fallback_account_sid: str | None = None
    twilio_fallback_auth_token: SecretStr | None = None
    twilio_fallback_from: str | None = None

    fcm_credentials: Path | None = None
    fcm_project_id: str | None = None
    fcm_endpoint: str | None = None
    push_number_matching: bool = True
    push_max_pending: int = Field(default=3, ge=1)
    push_fatigue_threshold: int = Field(default=3, ge=1)
    push_pause_seconds: int = Field(default=3600, ge=1)

    # Days rows are kept after they end (gateway.login.retention); at least one.
    retention_challenge_days: int = Field(default=7, ge=1)
    retention_session_days: int = Field(default=30, ge=1)
    retention_sms_days: int = Field(default=30, ge=1)

    outbox_sweep_after_seconds: int = Field(default=5, ge=1)
    worker_poll_delay_seconds: float = Field(default=0.05, gt=0)
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "0.0.0.0"  # noqa: S104 - a scrape target inside the pod network
    # SMS and push are on a login's critical path: their workers poll far more often.
    fast_poll_delay_seconds: float = Field(default=0.005, gt=0)

    @field_validator(
        "worker_metrics_port",
        "fcm_credentials",
        "fcm_project_id",
        "fcm_endpoint",
        "secret_key",
        "old_secret_keys",
        "twilio_auth_token",
        "twilio_fallback_auth_token",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        if value and not value.startswith(DATABASE_SCHEMES):
            raise ValueError("a postgres:// or sqlite:// URL, e.g. postgres://user@host:5432/db")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(REDIS_SCHEMES):
            raise ValueError("a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        if value and value.startswith("unix://"):
            unix_socket_settings(value)
        return value

    @property
    def development(self) -> bool:
        return self.env is Environment.DEVELOPMENT

    def resolved_database_url(self) -> str:
        if self.database_url:
            return with_pool_size(self.database_url, self.database_pool_size)
        return f"sqlite://{(self.data_dir / 'kanmon.sqlite3').as_posix()}"

    def sms_country_allow_list(self) -> frozenset[int]:
        """S7: calling codes SMS may go to; empty means all."""
        parts = [p.strip() for p in self.sms_allowed_country_codes.split(",") if p.strip()]
        try:
            return frozenset(int(p.lstrip("+")) for p in parts)
        except ValueError as exc:
            raise ConfigurationError(
                "KANMON_SMS_ALLOWED_COUNTRY_CODES: numbers like 1,44,81"
            ) from exc

    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def secret_keys(self) -> list[bytes]:
        """The current key first, then the earlier ones still accepted for decryption (T3)."""
        current = self._current_key()
        old_text = self.old_secret_keys.get_secret_value() if self.old_secret_keys else ""
        old = [decode_key(part.strip()) for part in old_text.split(",") if part.strip()]
        return [current, *old]

    def _current_key(self) -> bytes:
        if self.secret_key is not None:
            return decode_key(self.secret_key.get_secret_value())
        if not self.development:
            raise ConfigurationError("KANMON_SECRET_KEY is required outside development")
        return _development_key(self.data_dir)


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed; the process cannot start."""


def decode_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise ConfigurationError("secret keys must be urlsafe base64") from exc
    if len(key) != 32:
        raise ConfigurationError("secret keys must decode to 32 bytes")
    return key


def new_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _development_key(data_dir: Path) -> bytes:
    """Development keeps a generated key beside its database so restarts can still decrypt."""
    path = data_dir / "secret.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(new_key_text())
        path.chmod(0o600)
    return decode_key(path.read_text().strip())
