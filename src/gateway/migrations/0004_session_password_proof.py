from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("kanmon", "0003_code_throttle")]

    initial = False

    operations = [
        ops.AlterField(
            model_name="Session",
            name="password_verified_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]
