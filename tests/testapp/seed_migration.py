"""A data migration written the way Sisy 1.0's docs taught (kept out of the migration chain).

tests/test_legacy.py applies and unapplies it through Django's migration
machinery, as ``manage.py migrate`` would: ``apps`` holds historical models
without methods, so the instance method is named by its dotted path and the
object by ``pk_override``, and the reverse finds the object again with
``taskinfo_with_label``. It is not in ``tests/testapp/migrations`` so that the
rows it creates do not appear in every other test's database.
"""

from django.db import migrations

from sisy.models import task_with_callable, taskinfo_with_label
from tests.testapp.tasks import seed_counter

PLAIN_LABEL = "MIGRATION-testapp-0004-plain-function"
METHOD_LABEL = "MIGRATION-testapp-0004-instance-method"
METHOD_NAME = "tests.testapp.models.Gadget.bump"


def add_repeating(apps, schema_editor):
    task = task_with_callable(
        seed_counter,
        label=PLAIN_LABEL,
        schedule="30 0 * * *",  # every day at 00:30
        userdata={"count": 0},
    )
    task.save()

    Gadget = apps.get_model("testapp", "Gadget")
    gadget = Gadget(name="from a migration")
    gadget.save()
    task = task_with_callable(
        METHOD_NAME,
        label=METHOD_LABEL,
        schedule="* * * * *",
        pk_override=gadget.pk,
    )
    task.save()


def remove_repeating(apps, schema_editor):
    Task = apps.get_model("sisy", "Task")
    Gadget = apps.get_model("testapp", "Gadget")

    task = Task.objects.get(label=METHOD_LABEL)
    task.enabled = False
    task.save()
    gadget_pk = taskinfo_with_label(METHOD_LABEL)["model_pk"]
    Gadget.objects.get(pk=gadget_pk).delete()
    task.delete()
    Task.objects.get(label=PLAIN_LABEL).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("testapp", "0003_seed_gadgets"),
        ("sisy", "0001_initial"),
    ]
    operations = [
        migrations.RunPython(add_repeating, reverse_code=remove_repeating),
    ]
