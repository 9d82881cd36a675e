from tortoise import migrations
from tortoise.migrations import operations as ops
from gateway.factors.push.models import LoginRequestStatus, Platform
from uuid import uuid4
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("kanmon", "0004_session_password_proof")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Device",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(db_index=True)),
                ("session_id", fields.UUIDField(unique=True)),
                ("name", fields.CharField(max_length=64)),
                (
                    "platform",
                    fields.CharEnumField(
                        description="IOS: IOS\nANDROID: ANDROID", enum_type=Platform, max_length=8
                    ),
                ),
                ("push_token", fields.CharField(max_length=4096)),
                ("push_enabled", fields.BooleanField(default=True)),
                ("push_disabled_reason", fields.CharField(null=True, max_length=32)),
                ("public_key", fields.CharField(max_length=64)),
                ("login_code_secret_sealed", fields.TextField(unique=False)),
                ("last_code_step", fields.BigIntField(default=-1)),
                (
                    "last_seen_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "devices", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="LoginRequest",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(db_index=True)),
                ("challenge_id", fields.UUIDField(unique=True)),
                ("nonce", fields.CharField(max_length=64)),
                (
                    "status",
                    fields.CharEnumField(
                        default=LoginRequestStatus.PENDING,
                        description="PENDING: PENDING\nAPPROVED: APPROVED\nDENIED: DENIED\nEXPIRED: EXPIRED",
                        enum_type=LoginRequestStatus,
                        max_length=16,
                    ),
                ),
                ("match_number", fields.IntField(null=True)),
                ("wrong_matches", fields.IntField(default=0)),
                ("browser", fields.CharField(null=True, max_length=128)),
                ("ip_address", fields.CharField(null=True, max_length=64)),
                ("location", fields.CharField(null=True, max_length=128)),
                (
                    "expires_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
                ("decided_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("decided_by", fields.UUIDField(null=True)),
                (
                    "created_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={"table": "login_requests", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PushFatigue",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(unique=True)),
                ("consecutive_rejections", fields.IntField(default=0)),
                (
                    "paused_until",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={
                "table": "push_fatigue",
                "app": "kanmon",
                "pk_attr": "id",
                "table_description": "P10: consecutive denials or expiries per account, and the pause they cause.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="PushSend",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("request_id", fields.UUIDField(db_index=True)),
                ("device_id", fields.UUIDField()),
                ("outcome", fields.CharField(null=True, max_length=32)),
                ("attempts", fields.IntField(default=0)),
                ("sent_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "push_sends",
                "app": "kanmon",
                "unique_together": (("request_id", "device_id"),),
                "pk_attr": "id",
                "table_description": "One FCM message per device per request: the retry sends only what failed (P2).",
            },
            bases=["Model"],
        ),
    ]
