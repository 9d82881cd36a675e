from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from gateway.accounts.clients import ClientKind
from gateway.factors.backup_codes.models import BackupCodeStatus
from gateway.login.models import ChallengeStatus
from json import dumps, loads
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="BackupCode",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(db_index=True)),
                ("sequence", fields.IntField()),
                ("code_hash", fields.CharField(db_index=True, max_length=80)),
                (
                    "status",
                    fields.CharEnumField(
                        default=BackupCodeStatus.ACTIVE,
                        description="ACTIVE: ACTIVE\nUSED: USED\nINVALIDATED: INVALIDATED",
                        enum_type=BackupCodeStatus,
                        max_length=16,
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("used_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                (
                    "invalidated_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={
                "table": "backup_codes",
                "app": "kanmon",
                "unique_together": (("user_id", "sequence"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="FactorThrottle",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField()),
                ("method", fields.CharField(max_length=16)),
                ("consecutive_failures", fields.IntField(default=0)),
                (
                    "blocked_until",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={
                "table": "factor_throttles",
                "app": "kanmon",
                "unique_together": (("user_id", "method"),),
                "pk_attr": "id",
                "table_description": "F5: consecutive failures per account and method, in the database so a Redis restart",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="LoginChallenge",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(db_index=True)),
                ("token_hash", fields.CharField(max_length=64)),
                (
                    "client_kind",
                    fields.CharEnumField(
                        description="WEB: WEB\nMOBILE_WEB: MOBILE_WEB\nIOS: IOS\nANDROID: ANDROID\nTHIRD_PARTY: THIRD_PARTY",
                        enum_type=ClientKind,
                        max_length=16,
                    ),
                ),
                ("client_name", fields.CharField(null=True, max_length=128)),
                ("ip_address", fields.CharField(null=True, max_length=64)),
                (
                    "status",
                    fields.CharEnumField(
                        default=ChallengeStatus.PENDING,
                        description="PENDING: PENDING\nAPPROVED: APPROVED\nDENIED: DENIED\nEXPIRED: EXPIRED\nLOCKED: LOCKED\nCOMPLETED: COMPLETED",
                        enum_type=ChallengeStatus,
                        max_length=16,
                    ),
                ),
                (
                    "methods",
                    fields.JSONField(
                        encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("wrong_attempts", fields.IntField(default=0)),
                (
                    "expires_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
                (
                    "completed_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "login_challenges", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="OutboxMessage",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("queue", fields.CharField(max_length=32)),
                ("job_name", fields.CharField(max_length=64)),
                (
                    "payload",
                    fields.JSONField(
                        encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                (
                    "created_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True),
                ),
                (
                    "dispatched_at",
                    fields.DatetimeField(
                        null=True, db_index=True, auto_now=False, auto_now_add=False
                    ),
                ),
                ("dispatch_attempts", fields.IntField(default=0)),
            ],
            options={"table": "outbox_messages", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SecurityEvent",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("user_id", fields.UUIDField(db_index=True)),
                ("kind", fields.CharField(max_length=64)),
                ("detail", fields.CharField(null=True, max_length=255)),
                ("ip_address", fields.CharField(null=True, max_length=64)),
                ("dedupe_key", fields.CharField(null=True, unique=True, max_length=64)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "security_events", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="TemporaryPassword",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(unique=True)),
                ("password_hash", fields.CharField(max_length=80)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("used_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "temporary_passwords", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="TotpCredential",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(unique=True)),
                ("secret_encrypted", fields.TextField(null=True, unique=False)),
                ("pending_secret_encrypted", fields.TextField(null=True, unique=False)),
                ("last_step", fields.BigIntField(default=-1)),
                (
                    "confirmed_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "totp_credentials", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="User",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("username", fields.CharField(max_length=64)),
                ("username_key", fields.CharField(unique=True, max_length=64)),
                ("password_hash", fields.CharField(max_length=255)),
                ("two_factor_enabled", fields.BooleanField(default=False)),
                ("backup_code_sequence", fields.IntField(default=0)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "users", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Session",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "user",
                    fields.ForeignKeyField(
                        "kanmon.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="sessions",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("token_hash", fields.CharField(unique=True, max_length=64)),
                (
                    "client_kind",
                    fields.CharEnumField(
                        description="WEB: WEB\nMOBILE_WEB: MOBILE_WEB\nIOS: IOS\nANDROID: ANDROID\nTHIRD_PARTY: THIRD_PARTY",
                        enum_type=ClientKind,
                        max_length=16,
                    ),
                ),
                ("client_name", fields.CharField(null=True, max_length=128)),
                ("device_id", fields.UUIDField(null=True)),
                ("password_verified_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("revoked_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={"table": "sessions", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
    ]
