"""The composition root: `build_services` is called by the ASGI lifespan, arq's `on_startup`,
the CLI and the tests, each with its own settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name as arq_default_queue_name
from arq.constants import expires_extra_ms as arq_expires_extra_ms

from gateway.accounts.service import AccountService, PasswordGuard, SignUpWindow
from gateway.core.clock import Clock, utc_now
from gateway.core.crypto import SecretBox
from gateway.core.jobs import deserialize, serialize
from gateway.core.notices import Notifier
from gateway.core.outbox import OutboxRelay
from gateway.core.passwords import Passwords
from gateway.core.redis_urls import unix_socket_settings
from gateway.core.retention import RetentionPolicy
from gateway.core.throttle import WindowCounter
from gateway.core.uow import UnitOfWorkFactory
from gateway.factors.backup_codes.service import BackupCodeService
from gateway.factors.push.service import AppCodeFactor, PushPolicy, PushService
from gateway.factors.sms.limits import SendGuard, SendLimits
from gateway.factors.sms.notices import SmsNoticeChannel
from gateway.factors.sms.service import SmsService
from gateway.factors.temporary_passwords.service import TemporaryPasswordService
from gateway.factors.totp.service import TotpService
from gateway.login.approvals import PushApprovals
from gateway.login.retention import Retention
from gateway.login.service import LoginService
from gateway.login.sms_keywords import SmsKeywords
from gateway.security.service import SecurityService
from gateway.settings import Settings


@dataclass
class Services:
    settings: Settings
    redis: ArqRedis
    box: SecretBox
    relay: OutboxRelay
    uow: UnitOfWorkFactory
    accounts: AccountService
    totp: TotpService
    backup_codes: BackupCodeService
    temporary_passwords: TemporaryPasswordService
    sms: SmsService
    notifier: Notifier
    push: PushService
    login: LoginService
    approvals: PushApprovals
    security: SecurityService
    sms_keywords: SmsKeywords
    retention: Retention
    clock: Clock

    async def close(self) -> None:
        await self.redis.aclose()


def redis_settings(url: str) -> RedisSettings:
    if url.startswith("unix://"):
        settings = unix_socket_settings(url)
    else:
        settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    return settings


# A Redis that accepts connections but stops answering (frozen, partitioned after the
# handshake) must not hold every login, a worker's poll or a process's startup until TCP gives
# up: each command gives up after this, and the API answers SERVICE_UNAVAILABLE. Commands take
# well under a millisecond; the event hub's pub/sub reads wait with their own timeout
# (core.events).
REDIS_COMMAND_TIMEOUT_SECONDS = 5.0


def redis_client(url: str) -> ArqRedis:
    """One client for arq enqueues, throttles and pub/sub: redis-py 5 asyncio, every command
    bounded (`bounded_pool`). It connects on its first command: a process does not wait for
    Redis to build it, and each caller decides what an unanswering Redis means at startup."""
    return bounded_pool(redis_settings(url))


def bounded_pool(
    settings: RedisSettings,
    *,
    default_queue_name: str = arq_default_queue_name,
    expires_extra_ms: int = arq_expires_extra_ms,
) -> ArqRedis:
    """What arq's `create_pool` builds from `settings`, without its ping and with
    REDIS_COMMAND_TIMEOUT_SECONDS on every connection, the handshake's replies included:
    `create_pool` sets a connect timeout only and pings with no bound, so a frozen Redis
    held a process at startup for good. arq's Worker builds its own pool with `create_pool`;
    KanmonWorker builds it here instead, so a frozen Redis cannot hold its poll either."""
    return ArqRedis(
        host=settings.host,
        port=settings.port,
        unix_socket_path=settings.unix_socket_path,
        db=settings.database,
        username=settings.username,
        password=settings.password,
        socket_connect_timeout=settings.conn_timeout,
        socket_timeout=REDIS_COMMAND_TIMEOUT_SECONDS,
        ssl=settings.ssl,
        ssl_keyfile=settings.ssl_keyfile,
        ssl_certfile=settings.ssl_certfile,
        ssl_cert_reqs=settings.ssl_cert_reqs,
        ssl_ca_certs=settings.ssl_ca_certs,
        ssl_ca_data=settings.ssl_ca_data,
        ssl_check_hostname=settings.ssl_check_hostname,
        retry=settings.retry,
        retry_on_timeout=settings.retry_on_timeout,
        retry_on_error=settings.retry_on_error,
        max_connections=settings.max_connections,
        encoding="utf8",
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=default_queue_name,
        expires_extra_ms=expires_extra_ms,
    )


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        challenges=timedelta(days=settings.retention_challenge_days),
        sessions=timedelta(days=settings.retention_session_days),
        sms=timedelta(days=settings.retention_sms_days),
    )


def build_services(
    settings: Settings,
    redis: ArqRedis,
    *,
    clock: Clock = utc_now,
    passwords: Passwords | None = None,
) -> Services:
    box = SecretBox(settings.secret_keys())
    relay = OutboxRelay(redis)
    counter = WindowCounter(redis)
    guard = PasswordGuard(
        counter,
        per_account=settings.login_failures_per_account,
        per_ip=settings.login_failures_per_ip,
        window=settings.login_failure_window_seconds,
    )
    accounts = AccountService(
        passwords or Passwords(threads=settings.argon2_threads),
        guard,
        SignUpWindow(counter, per_ip_per_hour=settings.signups_per_ip_per_hour),
        session_ttl=timedelta(seconds=settings.session_ttl_seconds),
        reauth_window=timedelta(seconds=settings.reauth_window_seconds),
        clock=clock,
    )
    sms = SmsService(
        box,
        SendGuard(
            counter,
            SendLimits(
                per_number_per_hour=settings.sms_per_number_per_hour,
                per_block_per_hour=settings.sms_per_block_per_hour,
                per_account_per_hour=settings.sms_per_account_per_hour,
                per_ip_per_hour=settings.sms_per_ip_per_hour,
                global_per_minute=settings.sms_global_per_minute,
                allowed_country_codes=settings.sms_country_allow_list(),
            ),
        ),
        code_ttl=timedelta(seconds=settings.sms_code_ttl_seconds),
        resend_cooldown=timedelta(seconds=settings.sms_resend_cooldown_seconds),
        max_sends_per_challenge=settings.sms_max_sends_per_challenge,
        clock=clock,
    )
    totp = TotpService(box, clock)
    push = PushService(
        box,
        PushPolicy(
            number_matching=settings.push_number_matching,
            max_pending=settings.push_max_pending,
            fatigue_threshold=settings.push_fatigue_threshold,
            pause=timedelta(seconds=settings.push_pause_seconds),
        ),
        clock,
    )
    backup_codes = BackupCodeService(box, clock)
    temporary = TemporaryPasswordService(
        box, timedelta(seconds=settings.temporary_password_ttl_seconds), clock
    )
    login = LoginService(
        accounts,
        temporary,
        [sms, totp, AppCodeFactor(push), backup_codes],
        sms,
        push,
        challenge_ttl=timedelta(seconds=settings.challenge_ttl_seconds),
        clock=clock,
    )
    security = SecurityService(accounts, totp, backup_codes, temporary, sms, push, clock)
    return Services(
        settings=settings,
        redis=redis,
        box=box,
        relay=relay,
        uow=UnitOfWorkFactory(relay, redis),
        accounts=accounts,
        totp=totp,
        backup_codes=backup_codes,
        temporary_passwords=temporary,
        sms=sms,
        notifier=Notifier([SmsNoticeChannel(sms)]),
        push=push,
        login=login,
        approvals=PushApprovals(login, push, accounts, clock),
        security=security,
        sms_keywords=SmsKeywords(sms, clock),
        retention=Retention(retention_policy(settings), clock),
        clock=clock,
    )
