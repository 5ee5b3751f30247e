"""The 2017 way: a data migration that creates a standing task (kept working in Sisy 2).

This is the pattern Sisy 1.0 documented for an instance method of a model:
create the object, then a ``Task`` row whose ``func_info`` names the method
by dotted path plus the object's primary key (``pk_override``), because the
historical models a migration sees have no methods. The worker re-fetches
the Fern by its pk and calls ``fern.water()`` every 20 seconds.

New code does not need this: a ``@sisy.periodic`` function in ``tasks.py``
is a standing task without any migration (see ``demoapp/tasks.py``).
"""

from django.db import migrations

from sisy.models import task_with_callable, taskinfo_with_label

TASK_LABEL = "Water the fern (created by migration demoapp 0002)"
METHOD_NAME = "demoapp.models.Plant.water"


def add_repeating(apps, schema_editor):
    Plant = apps.get_model("demoapp", "Plant")
    fern = Plant.objects.create(name="Fern")
    task = task_with_callable(
        METHOD_NAME,
        label=TASK_LABEL,
        schedule="* * * * * */20",  # every 20 seconds
        pk_override=fern.pk,
    )
    task.save()


def remove_repeating(apps, schema_editor):
    Task = apps.get_model("sisy", "Task")
    Plant = apps.get_model("demoapp", "Plant")
    fern_pk = taskinfo_with_label(TASK_LABEL)["model_pk"]
    Task.objects.filter(label=TASK_LABEL).delete()
    Plant.objects.filter(pk=fern_pk).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("demoapp", "0001_initial"),
        ("sisy", "0001_initial"),
    ]
    operations = [
        migrations.RunPython(add_repeating, reverse_code=remove_repeating),
    ]
