"""The scheduler: fires due standing tasks and recovers what the channel layer lost.

One :class:`Scheduler` runs in each ``manage.py sisy_heartbeat`` process (and
in a thread of ``manage.py sisy_run``). Any number of them may run at once
against one database; each cron slot is fired exactly once:

* due rows are read ``FOR UPDATE SKIP LOCKED`` (schedulers share the work
  instead of waiting on each other), each row's ``next_run`` is advanced by a
  conditional ``UPDATE ... WHERE next_run = <the value read>``, and only the
  scheduler whose update won creates the slot's ``Run``;
* the partial unique constraint ``sisy_run_one_per_slot`` on
  ``(task, scheduled_for)`` backs this up: a slot that somehow comes round
  again (a ``next_run`` moved back by hand) is refused by the database, and
  the refusal is silent.

Everything that decides takes ``now`` as an argument; only :meth:`Scheduler.run`
reads the clock. See ``docs/topics/reliability.rst`` for the guarantees.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models import DateTimeField, ExpressionWrapper, F, Q
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from sisy.conf import SisySettings, get_settings
from sisy.dispatch import wake_many
from sisy.execution import finish, retry_policy, schedule_retry
from sisy.models import Run, Task, Worker
from sisy.schedules import validate_schedule

__all__ = ["Scheduler", "Plan", "plan_slots", "CATCH_UP_LIMIT"]

logger = logging.getLogger(__name__)

Status = Run.Status

#: ``catch_up="all"`` fires at most this many missed slots (the most recent ones).
CATCH_UP_LIMIT = 100
#: Due rows handled in one transaction.
FIRE_BATCH = 500
#: At most this many batches per tick (100,000 due rows), so a tick always ends.
MAX_FIRE_BATCHES = 200
#: Queued runs sent again per recovery pass (channels-redis holds 100 per channel).
REDELIVERY_BATCH = 100
#: Finished runs deleted per statement, and statements per pruning pass.
PRUNE_BATCH = 1000
PRUNE_BATCHES = 10
#: Seconds between two pruning passes.
PRUNE_INTERVAL = 300.0
#: While sleeping, look at the earliest ``next_run`` this often (seconds), so a
#: row created or changed in another process is seen within this time (an index
#: lookup; more often would cost more idle CPU than it is worth).
PEEK_INTERVAL = 2.0
#: Housekeeping due this close to a tick is done in that tick.
TIMER_SLACK = timedelta(milliseconds=20)
#: A slot is fired this long before it is due: its run is written and its wake-up sent
#: ahead, and the worker waits for ``not_before`` (the message's ``at``) to start it,
#: so the start lag is the worker's timer, not a database write plus a round trip.
FIRE_AHEAD = timedelta(milliseconds=100)
#: Longest back-off (seconds) after a database or channel-layer error.
MAX_BACKOFF = 10.0

_CONNECTION_ERRORS = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


# -- Pure planning -----------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """What firing one due row does: its runs, and the row's new state."""

    queue: list[datetime] = dataclasses.field(default_factory=list)
    skip: list[tuple[datetime, str]] = dataclasses.field(default_factory=list)
    next_run: datetime | None = None
    iterations: int = 0
    retire: bool = False
    dropped: int | None = 0  # missed slots not fired; None: more than we counted


def _recent_slots(first: datetime, now: datetime, limit: int, next_slot):
    """The last ``limit`` slots in ``[first, now]``, oldest first, and what follows them.

    Returns ``(slots, dropped, following)``: ``dropped`` counts the earlier
    slots left out (``None`` when it was not worth counting) and ``following``
    is the first slot after ``now`` (``None``: no slot left). ``first`` (the
    row's ``next_run``) counts as a slot. The search widens a window back
    from ``now`` instead of walking from ``first``, so a weekend of missed
    every-second slots costs a few dozen cron steps, not 170,000.
    """
    width = timedelta(seconds=2)
    while True:
        from_first = now - first <= width
        found: deque[datetime] = deque(maxlen=limit)
        count = 0
        slot = first if from_first else next_slot(now - width)
        while slot is not None and slot <= now:
            found.append(slot)
            count += 1
            slot = next_slot(slot)
        if from_first:
            return list(found), count - len(found), slot
        if count >= limit:
            return list(found), None, slot
        width *= 8


def plan_slots(row: Task, now: datetime, *, running: bool, grace: timedelta,
               next_slot: Callable[[datetime], datetime | None] | None = None) -> Plan:
    """Decide what to do with a row whose ``next_run`` is due at ``now``.

    ``running`` says whether a run of the task is running now (for
    ``allow_overlap=False``); ``grace`` is how late a slot may be seen before
    it counts as missed (``catch_up="skip"``); ``next_slot`` replaces
    ``row.next_slot`` (the scheduler passes a memoised one). Raises
    :class:`~sisy.exceptions.InvalidSchedule` for a schedule or timezone that
    is not valid.
    """
    validate_schedule(row.schedule, task_name=str(row))
    row.get_timezone()
    next_slot = next_slot or row.next_slot
    limit = CATCH_UP_LIMIT if row.catch_up == Task.CatchUp.ALL else 1
    slots, dropped, following = _recent_slots(row.next_run, now, limit, next_slot)
    if row.catch_up == Task.CatchUp.SKIP and slots and now - slots[-1] > grace:
        slots, dropped = [], None
    plan = Plan(next_run=following, iterations=row.iterations, dropped=dropped)
    for slot in slots:
        if row.start_deadline is not None and now - slot > row.start_deadline:
            plan.skip.append((slot, (
                f"Skipped: slot {slot.isoformat()} was {_seconds(now - slot)} late at fire "
                f"time, past its start_deadline of {_seconds(row.start_deadline)}."
            )))
        elif running and not row.allow_overlap:
            plan.skip.append((slot, (
                "Skipped: another run of this task was still running (allow_overlap=False)."
            )))
        else:
            plan.queue.append(slot)
    if row.iterations:
        if len(plan.queue) >= row.iterations:
            plan.queue = plan.queue[-row.iterations:]
            plan.retire = True
        plan.iterations = row.iterations - len(plan.queue)
    if plan.next_run is None:
        plan.retire = True
    if plan.retire:
        plan.next_run = None
    return plan


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():g} s"


# -- Waking schedulers in this process --------------------------------------------

_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def _notify_schedulers() -> None:
    for scheduler in list(_live):
        scheduler.wakeup.set()


@receiver(post_save, sender=Task, dispatch_uid="sisy.scheduler.task_saved")
@receiver(post_delete, sender=Task, dispatch_uid="sisy.scheduler.task_deleted")
def _task_changed(sender, instance, using=DEFAULT_DB_ALIAS, **kwargs):
    """Wake this process's schedulers once the change is committed."""
    if _live:
        transaction.on_commit(_notify_schedulers, using=using)


_SCHEDULE_FIELDS = ("schedule", "timezone", "start_running", "end_running")


@receiver(pre_save, sender=Task, dispatch_uid="sisy.scheduler.schedule_row")
def _schedule_row(sender, instance: Task, raw=False, using=DEFAULT_DB_ALIAS, **kwargs):
    """Give a saved row that may fire its next slot.

    A row saved switched on without a ``next_run`` (a new row, a row switched
    back on) gets its first slot, and so does a row whose schedule, timezone or
    start/end changed. An invalid schedule is left for the scheduler, which
    switches the row off with the error.
    """
    if raw or instance.orphaned or not instance.enabled or instance.paused:
        return
    changed = instance.next_run is None
    if not changed and instance.pk is not None:
        old = Task.objects.using(using).filter(pk=instance.pk).values(*_SCHEDULE_FIELDS).first()
        changed = old is not None and any(
            old[field] != getattr(instance, field) for field in _SCHEDULE_FIELDS
        )
    if not changed:
        return
    try:
        validate_schedule(instance.schedule, task_name=str(instance))
        instance.next_run = instance.first_slot(timezone.now())
    except Exception as exc:  # reported by the scheduler when it fires
        logger.warning("Task %s cannot be scheduled: %s", instance, exc)


# -- The scheduler -------------------------------------------------------------------


class Scheduler:
    """Fires due ``Task`` slots and recovers lost runs; see the module docstring.

    ``clock`` returns the current aware time (tests pass a frozen one),
    ``max_sleep`` bounds one sleep (default ``SISY["HEARTBEAT_FREQUENCY"]``),
    and ``using`` is the database alias.
    """

    def __init__(self, *, clock: Callable[[], datetime] = timezone.now,
                 max_sleep: float | None = None, using: str = DEFAULT_DB_ALIAS):
        self.clock = clock
        self.max_sleep = max_sleep
        self.using = using
        #: Set to end the current sleep early (a Task changed, a stop was asked for).
        self.wakeup = threading.Event()
        self._next_redelivery: datetime | None = None
        self._next_lost_check: datetime | None = None
        self._deferred_at: datetime | None = None
        self._earliest_sql: tuple | None = None
        self._next_prune: datetime | None = None
        self._due_at: datetime | None = None
        _live.add(self)

    # The loop ---------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        """Tick until ``stop_event`` is set; survive database and channel-layer outages."""
        logger.info("Sisy scheduler started (database %r).", self.using)
        backoff = 0.0
        synced = False
        while not stop_event.is_set():
            try:
                if not synced:
                    from sisy.sync import sync_tasks

                    logger.info("Task rows synced: %s.", sync_tasks(using=self.using))
                    synced = True
                started = self.clock()
                sleep = self.tick(started)
                # The sleep counts from the start of the tick: take off the tick's own time.
                sleep -= (self.clock() - started).total_seconds()
                backoff = 0.0
            except _CONNECTION_ERRORS as exc:
                backoff = min(MAX_BACKOFF, backoff * 2 or 0.5)
                logger.warning(
                    "Sisy scheduler lost its database or channel layer (%s: %s); "
                    "retrying in %g s.", type(exc).__name__, exc, backoff,
                )
                self._close_connection()
                sleep = backoff
            except Exception:
                backoff = min(MAX_BACKOFF, backoff * 2 or 0.5)
                logger.exception("Sisy scheduler tick failed; retrying in %g s.", backoff)
                self._close_connection()
                sleep = backoff
            self._sleep(sleep, stop_event)
        self._close_connection()
        logger.info("Sisy scheduler stopped.")

    def stop(self, stop_event: threading.Event | None = None) -> None:
        """Ask :meth:`run` to return (safe from a signal handler)."""
        if stop_event is not None:
            stop_event.set()
        self.wakeup.set()

    def _close_connection(self) -> None:
        try:
            connections[self.using].close()
        except Exception:  # a dead connection may refuse to close
            pass

    def _sleep(self, seconds: float, stop_event: threading.Event) -> None:
        """Sleep ``seconds``; return early on stop, a local change, or an earlier slot."""
        deadline = time.monotonic() + seconds
        next_peek = time.monotonic() + PEEK_INTERVAL
        while not stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.wakeup.wait(min(remaining, 0.5)):
                self.wakeup.clear()
                return
            if time.monotonic() >= next_peek and deadline - time.monotonic() > 0.05:
                next_peek = time.monotonic() + PEEK_INTERVAL
                if self._earlier_slot_appeared():
                    return

    def _earlier_slot_appeared(self) -> bool:
        try:
            due = self._earliest_next_run()
        except Exception:  # the next tick reports database errors
            return False
        return due is not None and (self._due_at is None or due < self._due_at)

    # One tick ---------------------------------------------------------------------

    def tick(self, now: datetime) -> float:
        """Do everything due at ``now``; return how many seconds to sleep."""
        conf = get_settings()
        limit = self.max_sleep if self.max_sleep is not None else conf.HEARTBEAT_FREQUENCY
        # Firing first: housekeeping must not delay a slot.
        self._due_at = self._earliest_next_run() if conf.ENABLED else None
        horizon = now + FIRE_AHEAD
        if self._due_at is not None and self._due_at <= horizon:
            self.fire_due(now, conf, horizon=horizon)
            self._due_at = self._earliest_next_run()
        redeliver_every, lost_every = self.recovery_intervals(conf)
        soon = now + TIMER_SLACK  # a sleep that ends a hair early must not cost a tick
        if self._next_redelivery is None or soon >= self._next_redelivery:
            self.redeliver(now, conf)
            self._next_redelivery = now + timedelta(seconds=redeliver_every)
        elif self._deferred_at is not None and now >= self._deferred_at:
            self.redeliver(now, conf)
        if self._next_lost_check is None or soon >= self._next_lost_check:
            self.recover_lost(now, conf)
            self._next_lost_check = now + timedelta(seconds=lost_every)
        if conf.RETENTION is not None and (self._next_prune is None or soon >= self._next_prune):
            self.prune(now, conf)
            self._next_prune = now + timedelta(seconds=PRUNE_INTERVAL)
        wake_at = [now + timedelta(seconds=limit), self._next_redelivery, self._next_lost_check]
        if self._due_at is not None:
            wake_at.append(self._due_at - FIRE_AHEAD)
        if self._deferred_at is not None:
            wake_at.append(self._deferred_at)
        return max(0.0, (min(wake_at) - now).total_seconds())

    @staticmethod
    def recovery_intervals(conf: SisySettings) -> tuple[float, float]:
        """Seconds between two redelivery passes, and between two lost-worker checks.

        A third of ``REDELIVERY_INTERVAL`` (a lost wake-up is sent again 30 to
        40 s after the last one by default) and half of ``WORKER_HEARTBEAT``.
        """
        return max(0.5, conf.REDELIVERY_INTERVAL / 3), max(0.5, conf.WORKER_HEARTBEAT / 2)

    def _earliest_next_run(self) -> datetime | None:
        """The earliest ``next_run`` of any row: an index lookup on ``sisy_task_due``.

        Run every tick and every peek, so its SQL is compiled once.
        """
        if self._earliest_sql is None:
            query = (Task.objects.using(self.using).filter(next_run__isnull=False)
                     .order_by("next_run").values_list("next_run", flat=True)[:1]).query
            self._earliest_sql = query.get_compiler(using=self.using).as_sql()
        with connections[self.using].cursor() as cursor:
            cursor.execute(*self._earliest_sql)
            row = cursor.fetchone()
        value = row[0] if row else None
        if isinstance(value, str):  # SQLite
            value = parse_datetime(value)
        if value is not None and timezone.is_naive(value):
            value = timezone.make_aware(value, UTC)
        return value

    # Firing -----------------------------------------------------------------------

    def fire_due(self, now: datetime, conf: SisySettings | None = None, *,
                 horizon: datetime | None = None) -> list[Run]:
        """Fire every slot due by ``horizon`` (default ``now``); return the runs created.

        ``now`` is when it happens (``enqueued_at``); slots after it and up to
        ``horizon`` are fired ahead, and their runs wait for ``not_before``.
        """
        conf = conf or get_settings()
        fired: list[Run] = []
        if not conf.ENABLED:
            return fired
        horizon = max(now, horizon or now)
        for _ in range(MAX_FIRE_BATCHES):
            created, seen = self._fire_batch(now, conf, horizon)
            wake_many([run for run in created if run.status == Status.QUEUED])
            fired.extend(created)
            if seen < FIRE_BATCH:
                break
        return fired

    def _fire_batch(self, now: datetime, conf: SisySettings,
                    horizon: datetime) -> tuple[list[Run], int]:
        """Fire up to :data:`FIRE_BATCH` due rows in one transaction.

        The rows are locked ``FOR UPDATE SKIP LOCKED``, so other schedulers
        take other rows meanwhile. Rows are advanced with conditional updates
        (``WHERE next_run = <value read>``), one statement per group of rows
        that read and get the same values (a burst of identical schedules is
        a handful of statements), and only won rows get runs.
        """
        tasks = Task.objects.using(self.using)
        with transaction.atomic(using=self.using):
            rows = list(
                tasks.select_for_update(skip_locked=True)
                .filter(next_run__lte=horizon)
                .order_by("next_run", "pk")[:FIRE_BATCH]
            )
            if not rows:
                return [], 0
            exclusive = [row.pk for row in rows if not row.allow_overlap]
            running = set(
                Run.objects.using(self.using)
                .filter(task_id__in=exclusive, status=Status.RUNNING)
                .values_list("task_id", flat=True)
            ) if exclusive else set()
            grace = timedelta(seconds=conf.HEARTBEAT_FREQUENCY)
            memo: dict = {}
            late: list[str] = []
            groups: dict[tuple, list[tuple[Task, list[Run]]]] = defaultdict(list)
            for row in rows:
                values, runs = self._fire_row(row, now, conf, grace, row.pk in running, memo,
                                              late, horizon)
                key = (row.next_run, tuple(sorted(values.items())))
                groups[key].append((row, runs))
            if late:
                logger.warning(
                    "%d tasks missed slots while no scheduler ran (%s%s); each task's catch_up "
                    "policy decided which to fire.", len(late), ", ".join(late[:5]),
                    ", ..." if len(late) > 5 else "",
                )
            runs: list[Run] = []
            for (old, values), members in groups.items():
                runs.extend(self._advance(old, dict(values), members))
            return self._insert(runs), len(rows)

    def _advance(self, old: datetime, values: dict, members) -> list[Run]:
        """Apply ``values`` to rows still at ``next_run=old``; return the runs of those won."""
        tasks = Task.objects.using(self.using)
        ids = [row.pk for row, _ in members]
        won = tasks.filter(pk__in=ids, next_run=old).update(**values)
        if won == len(ids):
            return [run for _, runs in members for run in runs]
        # Only possible without row locks: keep the rows that now hold our values;
        # the uniqueness of (task, scheduled_for) refuses any slot fired twice.
        mine = set(tasks.filter(pk__in=ids, next_run=values["next_run"])
                   .values_list("pk", flat=True))
        return [run for row, runs in members if row.pk in mine for run in runs]

    def _fire_row(self, row: Task, now: datetime, conf: SisySettings, grace: timedelta,
                  running: bool, memo: dict, late: list[str],
                  horizon: datetime | None = None) -> tuple[dict, list[Run]]:
        """Plan one due row: the row's new values and its unsaved runs."""
        overrides = conf.overrides_for(row.name) if row.name else {}
        if not row.is_switched_on(overrides):
            logger.info("Task %s is switched off; it is no longer scheduled.", row)
            return {"next_run": None}, []

        def next_slot(after):
            key = (row.schedule, row.timezone, row.start_running, row.end_running, after)
            if key not in memo:
                memo[key] = row.next_slot(after)
            return memo[key]

        try:
            plan = plan_slots(row, horizon or now, running=running, grace=grace,
                              next_slot=next_slot)
        except Exception as exc:  # one bad row must not stop the others
            return self._switch_off(row, now, exc)
        values = {"next_run": plan.next_run, "iterations": plan.iterations}
        fired = plan.queue + [slot for slot, _ in plan.skip]
        if fired:
            values["last_run"] = max(fired)
        if plan.retire:
            values["enabled"] = False
        if plan.dropped != 0:
            late.append(str(row))
            logger.info(
                "Task %s missed slots since %s (catch_up=%s); %s not fired.",
                row, row.next_run.isoformat(), row.catch_up,
                "some" if plan.dropped is None else plan.dropped,
            )
        if plan.retire:
            logger.info("Task %s retires: no slot left (iterations or end_running).", row)
        base = {
            "task": row,
            "task_name": row.name or row.label or str(row),
            "channel": overrides.get("channel") or row.channel or conf.RUN_TASK_CHANNEL,
            "exclusive": not row.allow_overlap,
            "enqueued_at": now,
        }
        runs = [Run(**base, scheduled_for=slot, not_before=slot, sent_at=now)
                for slot in plan.queue]
        runs += [
            Run(**base, scheduled_for=slot, not_before=slot, status=Status.SKIPPED,
                error=reason, finished_at=now)
            for slot, reason in plan.skip
        ]
        return values, runs

    def _switch_off(self, row: Task, now: datetime, exc: Exception) -> tuple[dict, list[Run]]:
        error = (
            f"Task {row} was switched off by the scheduler: {exc} "
            "Fix the row and switch it on again."
        )
        logger.error("%s", error)
        return {"enabled": False, "next_run": None}, [Run(
            task=row, task_name=row.name or row.label or str(row),
            channel=row.channel or get_settings().RUN_TASK_CHANNEL,
            scheduled_for=row.next_run, not_before=row.next_run, enqueued_at=now,
            status=Status.FAILED, finished_at=now, error=error,
            error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        )]

    def _insert(self, runs: list[Run]) -> list[Run]:
        """Insert the runs; a slot that already has a run is skipped silently."""
        if not runs:
            return []
        try:
            with transaction.atomic(using=self.using):
                return Run.objects.using(self.using).bulk_create(runs)
        except IntegrityError:
            pass
        created = []
        for run in runs:
            try:
                with transaction.atomic(using=self.using):
                    run.save(using=self.using, force_insert=True)
            except IntegrityError:
                logger.debug("Slot %s of %s already has a run.", run.scheduled_for, run.task_name)
                run.pk = None
            else:
                created.append(run)
        return created

    # Recovery ---------------------------------------------------------------------

    def redeliver(self, now: datetime, conf: SisySettings | None = None) -> list[int]:
        """Send again the wake-ups of due queued runs never sent or sent too long ago.

        At most :data:`REDELIVERY_BATCH` runs per call, oldest first; returns
        their ids. Also notes when the next deferred run (``run_after``, a
        retry) comes due, so that :meth:`tick` wakes up for it.
        """
        conf = conf or get_settings()
        stale = now - timedelta(seconds=conf.REDELIVERY_INTERVAL)
        runs = Run.objects.using(self.using)
        unsent = runs.filter(status=Status.QUEUED).filter(
            Q(sent_at__isnull=True) | Q(sent_at__lt=stale))
        self._deferred_at = first = (
            unsent.order_by("not_before").values_list("not_before", flat=True).first())
        if first is None or first > now:
            return []
        self._skip_past_deadline(now)
        with transaction.atomic(using=self.using):
            batch = list(
                unsent.filter(not_before__lte=now)
                .select_for_update(skip_locked=True)
                .order_by("not_before", "id")
                .only("id", "task_name", "channel")[:REDELIVERY_BATCH]
            )
            ids = [run.pk for run in batch]
            if ids:
                runs.filter(pk__in=ids, status=Status.QUEUED).update(sent_at=now)
        self._deferred_at = None  # found again by the next pass
        if batch:
            logger.info("Sent the wake-ups of %d queued runs again.", len(batch))
            wake_many(batch)
        return ids

    def _skip_past_deadline(self, now: datetime) -> int:
        """Record queued runs whose slot is older than their task's start_deadline as skipped."""
        late = (
            Run.objects.using(self.using)
            .filter(status=Status.QUEUED, task__start_deadline__isnull=False)
            .alias(deadline=ExpressionWrapper(F("scheduled_for") + F("task__start_deadline"),
                                              output_field=DateTimeField()))
            .filter(deadline__lt=now)
        )
        skipped = late.update(
            status=Status.SKIPPED, finished_at=now,
            error="Skipped: still queued after its task's start_deadline had passed.",
        )
        if skipped:
            logger.warning("%d queued runs were past their start_deadline and are skipped.",
                           skipped)
        return skipped

    def recover_lost(self, now: datetime, conf: SisySettings | None = None) -> list[Run]:
        """Settle running runs whose worker stopped heart-beating; return them.

        A worker is lost when its ``Worker`` row's ``last_seen`` is older than
        twice ``WORKER_HEARTBEAT`` (or it has no row). Its runs become
        ``failed`` with a "Worker lost" error, and are retried if the task allows.
        Runs started less than that long ago are left alone.
        """
        conf = conf or get_settings()
        limit = now - timedelta(seconds=2 * conf.WORKER_HEARTBEAT)
        runs = Run.objects.using(self.using).filter(status=Status.RUNNING)
        names = set(runs.values_list("worker", flat=True).distinct())
        if not names:
            return []
        seen = dict(
            Worker.objects.using(self.using).filter(name__in=names).values_list("name", "last_seen")
        )
        lost = {name for name in names if seen.get(name) is None or seen[name] < limit}
        settled = []
        for run in runs.filter(worker__in=lost, started_at__lt=limit).select_related("task"):
            last_seen = seen.get(run.worker)
            when = (f"stopped heart-beating at {last_seen.isoformat()}" if last_seen
                    else "has no heartbeat row")
            error = (f"Worker lost: {run.worker or '(unnamed)'} {when}; "
                     f"run {run.pk} was running since {run.started_at.isoformat()}.")
            if not finish(run, Status.FAILED, error=error, error_type="sisy.WorkerLost", now=now):
                continue
            logger.warning("%s", error)
            retries, backoff = retry_policy(run, conf=conf)
            retry = schedule_retry(run, now, retries, backoff)
            if retry is not None:
                logger.info("Run %s will be retried as run %s.", run.pk, retry.pk)
            settled.append(run)
        return settled

    def prune(self, now: datetime, conf: SisySettings | None = None) -> int:
        """Delete finished runs older than ``RETENTION`` in small batches; return how many."""
        conf = conf or get_settings()
        if conf.RETENTION is None:
            return 0
        cutoff = now - conf.RETENTION
        runs = Run.objects.using(self.using)
        deleted = 0
        for _ in range(PRUNE_BATCHES):
            ids = list(
                runs.filter(finished_at__lt=cutoff, status__in=Run.FINISHED)
                .order_by("finished_at")
                .values_list("pk", flat=True)[:PRUNE_BATCH]
            )
            if not ids:
                break
            deleted += runs.filter(pk__in=ids).delete()[1].get(Run._meta.label, 0)
            if len(ids) < PRUNE_BATCH:
                break
        if deleted:
            logger.info("Deleted %d runs finished before %s (RETENTION).", deleted, cutoff)
        return deleted
