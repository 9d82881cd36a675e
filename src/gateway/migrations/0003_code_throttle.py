from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [("kanmon", "0002_sms")]

    initial = False

    operations = [
        ops.AlterModelOptions(
            name="FactorThrottle",
            options={
                "table": "factor_throttles",
                "app": "kanmon",
                "unique_together": (("user_id", "method"),),
                "pk_attr": "id",
            },
        ),
    ]
