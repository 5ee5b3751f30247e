"""Registry → ``Task`` rows: standing tasks without data migrations.

``sync_tasks()`` creates a row for each ``@sisy.periodic`` function, writes
the fields code owns (with ``SISY["TASKS"]`` overrides on top), keeps what an
operator set (a pause), and switches off rows whose code has disappeared
(``orphaned``; their history stays). Rows made at runtime by the seed's API
have no registered name and are left alone. It is idempotent and safe to run
from many processes at once: rows are unique by name and created with
``INSERT ... ON CONFLICT DO NOTHING``.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils import timezone

from sisy.base import TaskDefinition
from sisy.conf import get_settings
from sisy.models import Task
from sisy.registry import registry

__all__ = ["SyncReport", "sync_tasks", "code_fields", "CODE_FIELDS"]

logger = logging.getLogger(__name__)

#: Task fields that code (then settings) own; sync re-applies them every time.
CODE_FIELDS = (
    "schedule", "timezone", "enabled", "allow_overlap", "catch_up", "start_deadline",
    "retries", "retry_backoff", "channel",
)
_OVERRIDABLE = {"schedule", "timezone", "enabled", "allow_overlap", "catch_up", "retries",
                "retry_backoff", "channel"}


@dataclasses.dataclass
class SyncReport:
    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    orphaned: list[str] = dataclasses.field(default_factory=list)
    unchanged: int = 0

    def __str__(self):
        return (
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.orphaned)} orphaned, {self.unchanged} unchanged"
        )


def code_fields(definition: TaskDefinition, overrides: dict) -> dict:
    """The values code gives a row, with the settings overrides applied on top.

    ``enabled`` here is the code value; a settings ``enabled`` is applied at
    fire time through :meth:`Task.is_switched_on` so that it also beats an
    operator's pause.
    """
    values = {
        "schedule": definition.schedule,
        "timezone": definition.timezone or "",
        "enabled": definition.enabled,
        "allow_overlap": definition.allow_overlap,
        "catch_up": definition.catch_up,
        "start_deadline": definition.start_deadline,
        "retries": definition.retries,
        "retry_backoff": float(definition.retry_backoff),
        "channel": definition.channel or "",
    }
    for key, value in overrides.items():
        if key in _OVERRIDABLE and key != "enabled":
            values[key] = value if key != "timezone" else value or ""
    return values


def _plan_next_run(row: Task, overrides: dict, now: datetime, schedule_changed: bool):
    """The ``next_run`` a row should have after sync (keeps a still-valid slot)."""
    if not row.is_switched_on(overrides):
        return None
    if row.next_run is not None and not schedule_changed:
        return row.next_run
    return row.first_slot(now)


def sync_tasks(*, now: datetime | None = None, using: str = DEFAULT_DB_ALIAS) -> SyncReport:
    """Bring the ``Task`` table in line with the registry and settings; return a report."""
    now = now or timezone.now()
    conf = get_settings()
    report = SyncReport()
    definitions = {d.name: d for d in registry.periodic()}
    manager = Task.objects.db_manager(using)
    existing = {t.name: t for t in manager.filter(name__in=list(definitions))}

    new_rows = []
    for name, definition in definitions.items():
        if name in existing:
            continue
        overrides = conf.overrides_for(name)
        row = Task(name=name, label=name, source=Task.Source.CODE,
                   **code_fields(definition, overrides))
        row.next_run = _plan_next_run(row, overrides, now, schedule_changed=True)
        new_rows.append(row)
        report.created.append(name)
    if new_rows:
        manager.bulk_create(new_rows, ignore_conflicts=True, batch_size=500)

    changed = []
    for name, row in existing.items():
        definition = definitions[name]
        overrides = conf.overrides_for(name)
        wanted = code_fields(definition, overrides)
        diff = {k: v for k, v in wanted.items() if getattr(row, k) != v}
        was_orphaned = row.orphaned or row.source != Task.Source.CODE
        if not diff and not was_orphaned:
            next_run = _plan_next_run(row, overrides, now, schedule_changed=False)
            if next_run == row.next_run:
                report.unchanged += 1
                continue
        for key, value in wanted.items():
            setattr(row, key, value)
        row.orphaned = False
        row.source = Task.Source.CODE
        row.modified_at = now  # bulk_update() does not apply auto_now
        row.next_run = _plan_next_run(
            row, overrides, now,
            schedule_changed=bool({"schedule", "timezone"} & diff.keys()) or was_orphaned,
        )
        changed.append(row)
        report.updated.append(name)
    if changed:
        manager.bulk_update(
            changed, [*CODE_FIELDS, "orphaned", "source", "next_run", "modified_at"],
            batch_size=500,
        )

    with transaction.atomic(using=using):
        gone = manager.filter(source=Task.Source.CODE, orphaned=False).exclude(
            name__in=list(definitions)
        )
        report.orphaned = sorted(gone.values_list("name", flat=True))
        if report.orphaned:
            manager.filter(name__in=report.orphaned).update(
                orphaned=True, next_run=None, modified_at=now
            )
    if report.orphaned:
        shown = ", ".join(report.orphaned[:10])
        more = len(report.orphaned) - 10
        logger.warning(
            "%d task(s) have no @sisy.periodic definition any more; they are switched off "
            "(orphaned) and their runs are kept: %s%s", len(report.orphaned), shown,
            f" and {more} more" if more > 0 else "",
        )
    return report
