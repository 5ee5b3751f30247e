from django.core.management.base import BaseCommand
from django.db.models import F, OuterRef, Subquery

from sisy.conf import get_settings
from sisy.models import Run, Task
from sisy.sources import explain

COLUMNS = ("name", "schedule", "enabled", "next run", "last run")


def _when(value):
    return value.strftime("%Y-%m-%d %H:%M:%S %Z") if value else "-"


class Command(BaseCommand):
    help = "Print a table of tasks: name, schedule, enabled and why, next run, last result."

    def handle(self, *args, **options):
        conf = get_settings()
        latest = Run.objects.filter(task=OuterRef("pk")).order_by("-scheduled_for", "-id")
        rows = Task.objects.annotate(
            last_status=Subquery(latest.values("status")[:1]),
        ).order_by(F("name").asc(nulls_last=True), "label", "pk")  # same order on every DB
        table = [COLUMNS]
        for row in rows:
            info = explain(row, conf)
            table.append((
                str(row),
                f"{row.schedule} ({info.schedule_source})",
                f"{'yes' if info.switched_on else 'no'} ({info.why})",
                _when(row.next_run),
                f"{row.last_status} at {_when(row.last_run)}" if row.last_status else "never",
            ))
        widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
        for index, line in enumerate(table):
            cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            self.stdout.write("  ".join(cells).rstrip())
            if index == 0:
                self.stdout.write("  ".join("-" * w for w in widths))
        if len(table) == 1:
            self.stdout.write("No tasks yet: decorate a function with @sisy.periodic in tasks.py.")
