from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SisyConfig(AppConfig):
    name = "sisy"
    verbose_name = "Sisy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from sisy import checks  # noqa: F401  (registers the system checks)
        from sisy.registry import autodiscover

        autodiscover()
        post_migrate.connect(_sync_after_migrate, sender=self)


def _sync_after_migrate(sender, using, plan=None, **kwargs):
    from sisy.sync import sync_tasks

    sync_tasks(using=using)
