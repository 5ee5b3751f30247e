from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SisyConfig(AppConfig):
    name = "sisy"
    verbose_name = "Sisy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from sisy import (
            checks,  # noqa: F401  (registers the system checks)
            scheduler,  # noqa: F401  (schedules and wakes on Task saves)
        )
        from sisy.registry import autodiscover

        autodiscover()
        post_migrate.connect(_sync_after_migrate, sender=self)


def _sync_after_migrate(sender, using, plan=None, **kwargs):
    from django.db import connections
    from django.db.migrations.loader import MigrationLoader

    from sisy.sync import sync_tasks

    # After "migrate sisy zero" (or to an older migration) the table is gone or
    # lacks columns: sync only when every Sisy migration is applied.
    loader = MigrationLoader(connections[using], ignore_no_migrations=True)
    if not set(loader.graph.leaf_nodes(sender.label)) <= set(loader.applied_migrations):
        return
    sync_tasks(using=using)
