"""Sisy's tables: ``Task`` (a standing schedule), ``Run`` (one execution) and ``Worker``."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone

from sisy.exceptions import RunCancelled, RunFailed, RunTimeout
from sisy.legacy import task_with_callable, taskinfo_with_label
from sisy.schedules import get_timezone, next_fire

__all__ = ["Task", "Run", "Worker", "task_with_callable", "taskinfo_with_label"]


class Task(models.Model):
    """A standing schedule: fired by the scheduler on its cron ``schedule``.

    Rows come from code (``@sisy.periodic``, written by sync) or from the
    database (the seed's ``task_with_callable``, the admin, data migrations).
    ``last_run`` and ``next_run`` are ``NULL`` for "never run" and "not
    scheduled"; there are no sentinel dates.
    """

    class Source(models.TextChoices):
        CODE = "code", "code"
        DATABASE = "database", "database"

    class CatchUp(models.TextChoices):
        LATEST = "latest", "fire the latest missed slot once"
        ALL = "all", "fire every missed slot (bounded)"
        SKIP = "skip", "skip to the next future slot"

    name = models.CharField(
        max_length=200, unique=True, null=True, blank=True,
        help_text="The registered name of the task function (NULL for rows made at runtime).",
    )
    label = models.CharField(max_length=255, blank=True, help_text="A human-readable label.")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.DATABASE)
    schedule = models.CharField(max_length=100, default="* * * * *", help_text="Cron schedule.")
    timezone = models.CharField(
        max_length=64, blank=True, help_text="IANA timezone of the schedule; blank: TIME_ZONE."
    )
    enabled = models.BooleanField(default=True, help_text="Switched on by code or by its creator.")
    paused = models.BooleanField(default=False, help_text="Paused by an operator; sync keeps it.")
    orphaned = models.BooleanField(
        default=False, help_text="Its code definition has disappeared; it no longer fires."
    )
    iterations = models.PositiveIntegerField(
        default=0, help_text="Runs left before the task retires; 0 means no limit."
    )
    start_running = models.DateTimeField(
        null=True, blank=True, help_text="Fire no slot before this."
    )
    end_running = models.DateTimeField(null=True, blank=True, help_text="Fire no slot after this.")
    wait_for_schedule = models.BooleanField(
        default=True, help_text="False: the first run starts at once instead of at the first slot."
    )
    allow_overlap = models.BooleanField(default=True)
    catch_up = models.CharField(max_length=8, choices=CatchUp.choices, default=CatchUp.LATEST)
    start_deadline = models.DurationField(
        null=True, blank=True, help_text="A run not started this long after its slot is skipped."
    )
    retries = models.PositiveIntegerField(default=0)
    retry_backoff = models.FloatField(default=1.0, help_text="Seconds before the first retry.")
    channel = models.CharField(max_length=100, blank=True, help_text="Blank: RUN_TASK_CHANNEL.")
    running = models.BooleanField(default=False, help_text="A run of this task is running now.")
    last_run = models.DateTimeField(null=True, blank=True, help_text="NULL: never run.")
    next_run = models.DateTimeField(null=True, blank=True, help_text="NULL: not scheduled.")
    userdata = models.JSONField(default=dict, blank=True)
    func_info = models.JSONField(
        default=dict, blank=True, help_text="How to find the callable of a database row (seed API)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    modified_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "pk"]
        indexes = [
            # The scheduler's only regular query: the earliest scheduled slot.
            models.Index(fields=["next_run"], name="sisy_task_due",
                         condition=Q(next_run__isnull=False)),
        ]

    def __str__(self):
        return self.name or self.label or f"Task {self.pk}"

    @classmethod
    def run_iterations(cls, the_callable, iterations=1, label=None, schedule="* * * * * *",
                       userdata=None, run_immediately=False, delay_until=None) -> Task:
        """The seed's API: save and return a task that runs ``iterations`` times, then retires.

        See :func:`sisy.legacy.run_iterations`.
        """
        from sisy.legacy import run_iterations

        return run_iterations(the_callable, iterations=iterations, label=label,
                              schedule=schedule, userdata=userdata,
                              run_immediately=run_immediately, delay_until=delay_until)

    @classmethod
    def run_once(cls, the_callable, userdata=None, delay_until=None) -> Task:
        """The seed's API: save and return a task that runs once, now or at ``delay_until``.

        See :func:`sisy.legacy.run_once`.
        """
        from sisy.legacy import run_once

        return run_once(the_callable, userdata=userdata, delay_until=delay_until)

    def get_timezone(self):
        from django.conf import settings

        return get_timezone(self.timezone or settings.TIME_ZONE)

    def is_switched_on(self, overrides: dict | None = None) -> bool:
        """Whether this row may fire, by the precedence settings > database > code.

        ``overrides`` are the matching ``SISY["TASKS"]`` values; an orphaned row
        never fires.
        """
        if self.orphaned:
            return False
        if overrides and "enabled" in overrides:
            return overrides["enabled"]
        return self.enabled and not self.paused

    def next_slot(self, after: datetime) -> datetime | None:
        """The first cron slot strictly after ``after`` inside start/end, or ``None``."""
        if self.start_running and after < self.start_running:
            after = self.start_running - timedelta(microseconds=1)
        slot = next_fire(self.schedule, after, self.get_timezone())
        if self.end_running and slot > self.end_running:
            return None
        return slot

    def first_slot(self, now: datetime) -> datetime | None:
        """When a newly scheduled row fires first (``wait_for_schedule=False``: now)."""
        if not self.wait_for_schedule and self.last_run is None:
            start = max(now, self.start_running) if self.start_running else now
            if self.end_running and start > self.end_running:
                return None
            return start
        return self.next_slot(now)


class Run(models.Model):
    """One execution of a task: the durable ledger entry, and the queue itself."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"
        CANCELLED = "cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.CANCELLED)

    id = models.BigAutoField(primary_key=True)
    # The foreign keys get no index of their own: "sisy_run_by_task" and
    # "sisy_run_retries" (below) cover them, for the rows that have one.
    task = models.ForeignKey(
        Task, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs",
        help_text="The standing task fired; empty for a one-shot .delay().", db_index=False,
    )
    task_name = models.CharField(max_length=200)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    channel = models.CharField(max_length=100)
    scheduled_for = models.DateTimeField(help_text="The cron slot, or when a one-shot may start.")
    not_before = models.DateTimeField(help_text="Earliest start (later than the slot for retries).")
    enqueued_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="Last wake-up message.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retried_by",
        db_index=False,
    )
    exclusive = models.BooleanField(
        default=False, help_text="At most one exclusive run of a task may be running."
    )
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Exception message and traceback.")
    error_type = models.CharField(max_length=255, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    progress_note = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "scheduled_for"],
                condition=Q(attempt=1, task__isnull=False),
                name="sisy_run_one_per_slot",
            ),
            models.UniqueConstraint(
                fields=["task"],
                condition=Q(status="running", exclusive=True),
                name="sisy_run_no_overlap",
            ),
            # The same for the runs that .delay() queues (no Task row): by task name.
            models.UniqueConstraint(
                fields=["task_name"],
                condition=Q(status="running", exclusive=True, task__isnull=True),
                name="sisy_run_no_overlap_one_shot",
            ),
        ]
        # The table is a queue: every write of a row that is not HOT adds an entry to
        # each index whose condition the row meets. Indexes that only some rows need
        # are partial, so a one-shot run touches three (id, task_name and the one of
        # its status) at its insert, claim and outcome, not all of them.
        indexes = [
            models.Index(fields=["not_before", "id"], name="sisy_run_queued",
                         condition=Q(status="queued")),
            models.Index(fields=["not_before", "id"], name="sisy_run_queued_exclusive",
                         condition=Q(status="queued", exclusive=True)),
            models.Index(fields=["worker"], name="sisy_run_running",
                         condition=Q(status="running")),
            models.Index(fields=["task", "-scheduled_for"], name="sisy_run_by_task",
                         condition=Q(task__isnull=False)),
            models.Index(fields=["finished_at"], name="sisy_run_finished",
                         condition=Q(finished_at__isnull=False)),
            models.Index(fields=["retry_of"], name="sisy_run_retries",
                         condition=Q(retry_of__isnull=False)),
            models.Index(fields=["task_name"], name="sisy_run_task_name"),
        ]

    def __str__(self):
        return f"Run {self.pk} of {self.task_name} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    def wait(self, timeout: float | None = None, *, poll: float = 0.05):
        """Wait for the run to finish and return its result.

        Raises :class:`~sisy.exceptions.RunFailed` (with the remote error and
        traceback) if it failed, :class:`~sisy.exceptions.RunCancelled` if it was
        cancelled or skipped, and :class:`~sisy.exceptions.RunTimeout` (a
        ``TimeoutError``) if it has not finished after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.refresh_from_db()
            if self.status == self.Status.SUCCEEDED:
                return self.result
            if self.status == self.Status.FAILED:
                message, _, trace = self.error.partition("\n\n")
                raise RunFailed(
                    f"Run {self.pk} of task '{self.task_name}' failed: {message}",
                    run=self, error_type=self.error_type, remote_traceback=trace,
                )
            if self.status in (self.Status.CANCELLED, self.Status.SKIPPED):
                raise RunCancelled(
                    f"Run {self.pk} of task '{self.task_name}' was {self.status}: {self.error}"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(
                    f"Run {self.pk} of task '{self.task_name}' is still {self.status} "
                    f"after {timeout} s; call wait() again or raise the timeout."
                )
            time.sleep(poll)


class Worker(models.Model):
    """A live (or recently seen) worker process; its heartbeat finds lost runs."""

    name = models.CharField(max_length=255, unique=True)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    channel = models.CharField(max_length=100)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self):
        return self.name
