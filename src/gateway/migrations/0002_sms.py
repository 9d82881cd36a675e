from tortoise import migrations
from tortoise.migrations import operations as ops
from gateway.factors.sms.models import SmsCodePurpose, SmsStatus
from uuid import uuid4
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("kanmon", "0001_initial")]

    initial = False

    operations = [
        ops.CreateModel(
            name="Phone",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(unique=True)),
                ("number", fields.CharField(null=True, db_index=True, max_length=20)),
                ("carrier", fields.CharField(null=True, max_length=64)),
                (
                    "verified_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("sms_paused", fields.BooleanField(default=False)),
                ("pending_number", fields.CharField(null=True, db_index=True, max_length=20)),
                ("pending_carrier", fields.CharField(null=True, max_length=64)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "phones", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SmsAttempt",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("message_id", fields.UUIDField(db_index=True)),
                ("provider", fields.CharField(max_length=32)),
                ("outcome", fields.CharField(null=True, max_length=16)),
                ("http_status", fields.IntField(null=True)),
                ("error_code", fields.CharField(null=True, max_length=32)),
                ("started_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                (
                    "finished_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={"table": "sms_attempts", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SmsCode",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(db_index=True)),
                (
                    "purpose",
                    fields.CharEnumField(
                        description="LOGIN: LOGIN\nVERIFY_PHONE: VERIFY_PHONE",
                        enum_type=SmsCodePurpose,
                        max_length=16,
                    ),
                ),
                ("challenge_id", fields.UUIDField(null=True, db_index=True)),
                ("number", fields.CharField(max_length=20)),
                ("code_hash", fields.CharField(max_length=80)),
                ("code_sealed", fields.TextField(null=True, unique=False)),
                (
                    "expires_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
                ("used_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "sms_codes", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="SmsMessage",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("user_id", fields.UUIDField(null=True, db_index=True)),
                ("to_number", fields.CharField(max_length=20)),
                ("code_id", fields.UUIDField(null=True)),
                ("notice", fields.CharField(null=True, max_length=64)),
                ("body", fields.TextField(null=True, unique=False)),
                (
                    "status",
                    fields.CharEnumField(
                        default=SmsStatus.QUEUED,
                        description="QUEUED: QUEUED\nSENDING: SENDING\nSENT: SENT\nDELIVERED: DELIVERED\nFAILED: FAILED\nUNDELIVERED: UNDELIVERED",
                        enum_type=SmsStatus,
                        max_length=16,
                    ),
                ),
                ("provider", fields.CharField(null=True, max_length=32)),
                ("provider_sid", fields.CharField(null=True, unique=True, max_length=64)),
                ("attempts", fields.IntField(default=0)),
                ("duplicates", fields.IntField(default=0)),
                ("error_code", fields.CharField(null=True, max_length=32)),
                ("expires_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                (
                    "created_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True),
                ),
                ("sent_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                (
                    "delivered_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={"table": "sms_messages", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
    ]
