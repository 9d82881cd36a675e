from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [("kanmon", "0006_sms_early_receipts")]

    initial = False

    operations = [
        ops.AddIndex(
            model_name="FactorThrottle",
            index=Index(fields=["blocked_until", "consecutive_failures"]),
        ),
        ops.AddIndex(
            model_name="Session",
            index=Index(fields=["device_id", "expires_at"]),
        ),
        ops.AddIndex(
            model_name="Session",
            index=Index(fields=["revoked_at"]),
        ),
    ]
