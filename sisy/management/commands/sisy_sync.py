from django.core.management.base import BaseCommand

from sisy.sync import sync_tasks


class Command(BaseCommand):
    help = "Write the registered @sisy.periodic tasks to Task rows now, and print a summary."

    def handle(self, *args, **options):
        report = sync_tasks(using=options.get("database") or "default")
        for label, names in (("created", report.created), ("updated", report.updated),
                             ("orphaned", report.orphaned)):
            for name in names:
                self.stdout.write(f"  {label}: {name}")
        self.stdout.write(self.style.SUCCESS(f"Sync done: {report}."))

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default", help="Database alias to sync.")
