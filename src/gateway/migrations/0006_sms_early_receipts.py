from tortoise import migrations
from tortoise.migrations import operations as ops
from gateway.factors.sms.models import SmsStatus
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("kanmon", "0005_push")]

    initial = False

    operations = [
        ops.CreateModel(
            name="SmsEarlyReceipt",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("provider_sid", fields.CharField(db_index=True, max_length=64)),
                (
                    "status",
                    fields.CharEnumField(
                        description="QUEUED: QUEUED\nSENDING: SENDING\nSENT: SENT\nDELIVERED: DELIVERED\nFAILED: FAILED\nUNDELIVERED: UNDELIVERED",
                        enum_type=SmsStatus,
                        max_length=16,
                    ),
                ),
                ("error_code", fields.CharField(null=True, max_length=32)),
                (
                    "received_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={"table": "sms_early_receipts", "app": "kanmon", "pk_attr": "id"},
            bases=["Model"],
        ),
    ]
