"""The scheduler with a frozen clock: firing, catch-up, DST, switches and recovery."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import OperationalError
from django.test import override_settings

from sisy import scheduler as scheduler_module
from sisy.models import Run, Task, Worker
from sisy.scheduler import CATCH_UP_LIMIT, REDELIVERY_BATCH, Scheduler

pytestmark = pytest.mark.django_db

NOW = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
MIN = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def empty_tables():
    """Start from no rows (migrate synced the test app's periodic tasks)."""
    Run.objects.all().delete()
    Task.objects.all().delete()


@pytest.fixture
def woken(monkeypatch):
    """The runs whose wake-up messages were sent, in order."""
    sent: list[Run] = []
    monkeypatch.setattr(scheduler_module, "wake_many", lambda runs: sent.extend(runs))
    return sent


def make_task(name="sched.t", schedule="* * * * *", next_run=NOW, **fields) -> Task:
    fields.setdefault("label", name or "")
    return Task.objects.create(name=name, schedule=schedule, next_run=next_run, **fields)


def slots_of(task: Task, **filters) -> list[datetime]:
    return list(task.runs.filter(**filters).order_by("scheduled_for")
                .values_list("scheduled_for", flat=True))


# -- Firing ---------------------------------------------------------------------------


def test_a_due_slot_becomes_one_queued_run_and_next_run_advances(woken):
    task = make_task(allow_overlap=False)

    sleep = Scheduler().tick(NOW)

    run = task.runs.get()
    assert (run.status, run.task_name, run.channel) == ("queued", "sched.t", "sisy.run_task")
    assert run.scheduled_for == run.not_before == run.sent_at == run.enqueued_at == NOW
    assert run.exclusive is True and run.attempt == 1
    task.refresh_from_db()
    assert (task.next_run, task.last_run) == (NOW + MIN, NOW)
    assert woken == [run]
    assert sleep == 5.0  # bounded by HEARTBEAT_FREQUENCY


def test_the_run_uses_the_task_channel_and_the_seed_label(woken):
    task = make_task(name=None, label="seed label", channel="reports", allow_overlap=True)

    Scheduler().tick(NOW)

    run = task.runs.get()
    assert (run.task_name, run.channel, run.exclusive) == ("seed label", "reports", False)


def test_tick_sleeps_until_the_earliest_slot_minus_the_fire_ahead_time():
    make_task(schedule="* * * * * *", next_run=NOW + timedelta(milliseconds=250))

    assert Scheduler().tick(NOW) == 0.15  # 250 ms - FIRE_AHEAD
    assert Scheduler(max_sleep=0.1).tick(NOW) == 0.1


def test_a_slot_due_within_the_fire_ahead_time_is_fired_ahead_and_says_when_to_start():
    from sisy.dispatch import run_message
    from sisy.scheduler import FIRE_AHEAD

    slot = NOW + FIRE_AHEAD / 2
    row = make_task(schedule="* * * * * *", next_run=slot)
    Scheduler().tick(NOW)
    run = Run.objects.get(task=row)
    assert (run.scheduled_for, run.not_before, run.enqueued_at) == (slot, slot, NOW)
    assert run_message(run, NOW) == {"type": "sisy.run", "run": run.pk, "name": run.task_name,
                                     "at": slot.timestamp()}
    assert "at" not in run_message(run, slot)


def test_tick_sleeps_until_a_deferred_run_comes_due():
    Run.objects.create(task_name="testapp.add", channel="sisy.run_task", scheduled_for=NOW + S,
                       not_before=NOW + 2 * S)

    assert Scheduler().tick(NOW) == 2.0


def test_two_schedulers_ticking_the_same_instant_fire_each_slot_once(woken):
    tasks = [make_task(name=f"sched.t{i}") for i in range(20)]
    first, second = Scheduler(), Scheduler()

    fired_first = first.fire_due(NOW)
    fired_second = second.fire_due(NOW)

    assert len(fired_first) == 20 and fired_second == []
    assert Run.objects.count() == 20
    assert all(slots_of(task) == [NOW] for task in tasks)


def test_a_slot_that_comes_round_again_is_refused_silently(woken):
    task = make_task()
    Scheduler().tick(NOW)
    Task.objects.filter(pk=task.pk).update(next_run=NOW)  # moved back by hand

    assert Scheduler().fire_due(NOW) == []
    assert slots_of(task) == [NOW]
    task.refresh_from_db()
    assert task.next_run == NOW + MIN


def test_thousands_of_due_rows_are_fired_in_batches(woken):
    Task.objects.bulk_create(
        Task(name=f"sched.bulk{i}", schedule="* * * * *", next_run=NOW) for i in range(1200)
    )

    fired = Scheduler().fire_due(NOW)

    assert len(fired) == 1200 == len(woken)
    assert not Task.objects.filter(next_run__lte=NOW).exists()


# -- The seed's schedule semantics -----------------------------------------------


def test_iterations_count_down_and_the_task_retires_with_its_history(woken):
    task = make_task(iterations=2)
    scheduler = Scheduler()

    scheduler.fire_due(NOW)
    task.refresh_from_db()
    assert (task.iterations, task.enabled, task.next_run) == (1, True, NOW + MIN)

    scheduler.fire_due(NOW + MIN)
    task.refresh_from_db()
    assert (task.iterations, task.enabled, task.next_run) == (0, False, None)

    assert scheduler.fire_due(NOW + 2 * MIN) == []
    assert slots_of(task) == [NOW, NOW + MIN]


def test_start_running_delays_the_first_slot_and_end_running_retires(woken):
    late = make_task(name="sched.late", start_running=NOW + 10 * MIN, next_run=None)
    assert late.next_run == NOW + 10 * MIN  # scheduled when saved
    ending = make_task(name="sched.ending", end_running=NOW + MIN + 30 * S)
    scheduler = Scheduler()

    scheduler.fire_due(NOW)
    scheduler.fire_due(NOW + MIN)

    assert slots_of(late) == []
    assert Task.objects.get(pk=late.pk).next_run == NOW + 10 * MIN
    assert slots_of(ending) == [NOW, NOW + MIN]
    ending.refresh_from_db()
    assert (ending.enabled, ending.next_run) == (False, None)


def test_wait_for_schedule_false_fires_at_once_then_follows_the_schedule(woken):
    task = make_task(schedule="0 7 * * *", wait_for_schedule=False, next_run=None)
    Task.objects.filter(pk=task.pk).update(next_run=task.first_slot(NOW))

    Scheduler().fire_due(NOW)

    assert slots_of(task) == [NOW]
    task.refresh_from_db()
    assert task.next_run == datetime(2030, 1, 8, 7, 0, tzinfo=UTC)


def test_a_saved_row_without_next_run_is_scheduled_and_a_paused_one_is_not():
    scheduled = make_task(name="sched.new", schedule="0 7 * * *", next_run=None)
    paused = make_task(name="sched.paused", next_run=None, paused=True)

    assert scheduled.next_run is not None and scheduled.next_run.hour == 7
    assert paused.next_run is None


def test_changing_the_schedule_on_save_reschedules_the_row():
    task = make_task(schedule="0 7 * * *", next_run=NOW + timedelta(days=300))

    task.schedule = "0 8 * * *"
    task.save()

    assert task.next_run.hour == 8 and task.next_run < NOW + timedelta(days=300)


# -- Switches --------------------------------------------------------------------------


def test_enabled_false_in_settings_fires_nothing_and_keeps_the_rows(woken):
    task = make_task()

    with override_settings(SISY={"ENABLED": False}):
        assert Scheduler().fire_due(NOW) == []
        assert Scheduler().tick(NOW) == 5.0

    assert slots_of(task) == []
    task.refresh_from_db()
    assert task.next_run == NOW


@pytest.mark.parametrize("settings_value, fields", [
    ({"TASKS": {"sched.*": {"enabled": False}}}, {}),
    ({}, {"paused": True}),
    ({}, {"enabled": False}),
    ({}, {"orphaned": True}),
])
def test_a_switched_off_task_fires_nothing_and_is_unscheduled(woken, settings_value, fields):
    task = make_task()
    Task.objects.filter(pk=task.pk).update(**fields)

    with override_settings(SISY=settings_value):
        Scheduler().tick(NOW)

    assert slots_of(task) == []
    task.refresh_from_db()
    assert task.next_run is None


def test_settings_switch_a_paused_task_on(woken):
    task = make_task()
    Task.objects.filter(pk=task.pk).update(paused=True)

    with override_settings(SISY={"TASKS": {"sched.t": {"enabled": True}}}):
        Scheduler().tick(NOW)

    assert slots_of(task) == [NOW]


# -- Overlap ---------------------------------------------------------------------------


def running_run(task, worker="w-1", started=NOW - S):
    return Run.objects.create(task=task, task_name=task.name, channel="sisy.run_task",
                              status="running", scheduled_for=started, not_before=started,
                              started_at=started, worker=worker, exclusive=True)


@pytest.mark.parametrize("allow_overlap, status", [(False, "skipped"), (True, "queued")])
def test_a_slot_due_while_a_run_is_running(woken, allow_overlap, status):
    task = make_task(allow_overlap=allow_overlap)
    running_run(task, started=NOW - 30 * S)

    Scheduler().fire_due(NOW)

    run = task.runs.get(scheduled_for=NOW)
    assert run.status == status
    if status == "skipped":
        assert run.error == ("Skipped: another run of this task was still running "
                             "(allow_overlap=False).")
        assert run.finished_at == NOW and woken == []


# -- Catch-up after downtime -----------------------------------------------------------


def test_catch_up_latest_fires_only_the_latest_missed_slot(woken, caplog):
    task = make_task(schedule="* * * * * *", next_run=NOW - timedelta(days=3))

    Scheduler().fire_due(NOW + timedelta(milliseconds=400))

    assert slots_of(task) == [NOW]
    task.refresh_from_db()
    assert task.next_run == NOW + S
    assert "1 tasks missed slots while no scheduler ran (sched.t)" in caplog.text


def test_catch_up_all_fires_every_missed_slot(woken):
    task = make_task(catch_up="all", next_run=NOW - 10 * MIN)

    Scheduler().fire_due(NOW)

    assert slots_of(task) == [NOW - i * MIN for i in range(10, -1, -1)]


def test_catch_up_all_is_bounded_to_the_latest_slots(woken):
    task = make_task(schedule="* * * * * *", catch_up="all", next_run=NOW - timedelta(days=1))

    Scheduler().fire_due(NOW)

    assert slots_of(task) == [NOW - i * S for i in range(CATCH_UP_LIMIT - 1, -1, -1)]


@pytest.mark.parametrize("late, fired", [(30 * MIN, False), (2 * S, True)])
def test_catch_up_skip_fires_only_a_slot_seen_on_time(woken, late, fired):
    task = make_task(catch_up="skip", schedule="0 * * * *", next_run=NOW - timedelta(days=2))

    Scheduler().fire_due(NOW + late)

    assert slots_of(task) == ([NOW] if fired else [])
    task.refresh_from_db()
    assert task.next_run == NOW + timedelta(hours=1)


def test_a_slot_older_than_the_start_deadline_is_skipped(woken):
    task = make_task(catch_up="all", next_run=NOW - 2 * MIN, start_deadline=timedelta(seconds=90))

    Scheduler().fire_due(NOW)

    assert slots_of(task, status="skipped") == [NOW - 2 * MIN]
    assert slots_of(task, status="queued") == [NOW - MIN, NOW]
    skipped = task.runs.get(status="skipped")
    assert skipped.error == (
        "Skipped: slot 2030-01-07T11:58:00+00:00 was 120 s late at fire time, "
        "past its start_deadline of 90 s."
    )


# -- Daylight saving time --------------------------------------------------------------


def fire_through(task: Task, until: datetime) -> list[str]:
    """Tick at every due instant until ``until``; return the fired slots in local time."""
    scheduler = Scheduler()
    while True:
        task.refresh_from_db()
        if task.next_run > until:
            break
        scheduler.fire_due(task.next_run)
    zone = ZoneInfo(task.timezone)
    return [slot.astimezone(zone).strftime("%d %H:%M%z") for slot in slots_of(task)]


def local(zone, *args):
    return datetime(*args, tzinfo=ZoneInfo(zone))


DST_CASES = {
    "berlin-spring-every-30-min": (
        "Europe/Berlin", "*/30 * * * *", (2026, 3, 29, 0, 45), (2026, 3, 29, 4, 0),
        ["29 01:00+0100", "29 01:30+0100", "29 03:00+0200", "29 03:30+0200", "29 04:00+0200"],
    ),
    "berlin-autumn-every-30-min": (
        "Europe/Berlin", "*/30 * * * *", (2026, 10, 25, 1, 45), (2026, 10, 25, 3, 30),
        ["25 02:00+0200", "25 02:30+0200", "25 03:00+0100", "25 03:30+0100"],
    ),
    "berlin-spring-daily-0230": (
        "Europe/Berlin", "30 2 * * *", (2026, 3, 28, 0, 0), (2026, 3, 30, 12, 0),
        ["28 02:30+0100", "29 03:00+0200", "30 02:30+0200"],
    ),
    "berlin-autumn-daily-0230": (
        "Europe/Berlin", "30 2 * * *", (2026, 10, 24, 0, 0), (2026, 10, 26, 12, 0),
        ["24 02:30+0200", "25 02:30+0200", "26 02:30+0100"],
    ),
    "new-york-spring-every-30-min": (
        "America/New_York", "*/30 * * * *", (2026, 3, 8, 0, 45), (2026, 3, 8, 4, 0),
        ["08 01:00-0500", "08 01:30-0500", "08 03:00-0400", "08 03:30-0400", "08 04:00-0400"],
    ),
    "new-york-autumn-every-30-min": (
        "America/New_York", "*/30 * * * *", (2026, 11, 1, 0, 45), (2026, 11, 1, 2, 30),
        ["01 01:00-0400", "01 01:30-0400", "01 02:00-0500", "01 02:30-0500"],
    ),
    "new-york-spring-daily-0230": (
        "America/New_York", "30 2 * * *", (2026, 3, 7, 0, 0), (2026, 3, 9, 12, 0),
        ["07 02:30-0500", "08 03:00-0400", "09 02:30-0400"],
    ),
    "new-york-autumn-daily-0130": (
        "America/New_York", "30 1 * * *", (2026, 10, 31, 0, 0), (2026, 11, 2, 12, 0),
        ["31 01:30-0400", "01 01:30-0400", "02 01:30-0500"],
    ),
    "new-york-autumn-daily-0230": (
        "America/New_York", "30 2 * * *", (2026, 10, 31, 0, 0), (2026, 11, 2, 12, 0),
        ["31 02:30-0400", "01 02:30-0500", "02 02:30-0500"],
    ),
}


@pytest.mark.parametrize("case", DST_CASES.values(), ids=DST_CASES.keys())
@pytest.mark.faults  # fault-injection scenario 10 (DST)
def test_daylight_saving_policy(woken, case):
    zone, schedule, start, until, expected = case
    task = make_task(schedule=schedule, timezone=zone, next_run=None)
    Task.objects.filter(pk=task.pk).update(next_run=task.next_slot(local(zone, *start)))

    assert fire_through(task, local(zone, *until)) == expected


# -- Bad rows ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("schedule", "61 * * * *", "Schedule '61 * * * *' of task 'sched.bad' is not valid cron"),
    ("timezone", "Mars/Olympus", "Timezone 'Mars/Olympus' is not a known IANA timezone name"),
])
def test_a_row_made_invalid_by_hand_is_switched_off_with_a_clear_error(
        woken, caplog, field, value, message):
    bad = make_task(name="sched.bad")
    good = make_task(name="sched.good")
    Task.objects.filter(pk=bad.pk).update(**{field: value})

    Scheduler().tick(NOW)

    bad.refresh_from_db()
    assert (bad.enabled, bad.next_run) == (False, None)
    failure = bad.runs.get()
    assert failure.status == "failed"
    assert failure.error.startswith(f"Task sched.bad was switched off by the scheduler: {message}")
    assert failure.error.endswith("Fix the row and switch it on again.")
    assert message in caplog.text
    assert slots_of(good) == [NOW]
    assert Scheduler().tick(NOW + MIN) > 0  # and nothing breaks afterwards


# -- Recovery ---------------------------------------------------------------------------


def queued_run(not_before=NOW - S, sent_at=None, **fields):
    return Run.objects.create(task_name="testapp.add", channel="sisy.run_task",
                              scheduled_for=not_before, not_before=not_before,
                              sent_at=sent_at, **fields)


def test_redelivery_sends_lost_and_stale_wake_ups_again(woken):
    never_sent = queued_run()
    stale = queued_run(sent_at=NOW - 31 * S)
    fresh = queued_run(sent_at=NOW - 10 * S)
    deferred = queued_run(not_before=NOW + MIN)
    finished = queued_run(status="succeeded")

    assert Scheduler().redeliver(NOW) == [never_sent.pk, stale.pk]

    assert [run.pk for run in woken] == [never_sent.pk, stale.pk]
    for run, sent_at in [(never_sent, NOW), (stale, NOW), (fresh, NOW - 10 * S),
                         (deferred, None), (finished, None)]:
        run.refresh_from_db()
        assert run.sent_at == sent_at


def test_redelivery_skips_queued_runs_past_their_start_deadline(woken):
    task = make_task(start_deadline=timedelta(seconds=60), next_run=None, enabled=False)
    late = queued_run(not_before=NOW - 2 * MIN, task=task)
    in_time = queued_run(not_before=NOW - 30 * S, task=task)

    assert Scheduler().redeliver(NOW) == [in_time.pk]

    late.refresh_from_db()
    assert (late.status, late.finished_at) == ("skipped", NOW)
    assert late.error == "Skipped: still queued after its task's start_deadline had passed."


def test_redelivery_is_bounded_and_oldest_first(woken):
    Run.objects.bulk_create(
        Run(task_name="testapp.add", channel="sisy.run_task", scheduled_for=NOW - i * S,
            not_before=NOW - i * S) for i in range(250)
    )
    scheduler = Scheduler()

    first = scheduler.redeliver(NOW)
    second = scheduler.redeliver(NOW)
    third = scheduler.redeliver(NOW)

    assert (len(first), len(second), len(third)) == (REDELIVERY_BATCH, REDELIVERY_BATCH, 50)
    assert scheduler.redeliver(NOW) == []
    nb = dict(Run.objects.values_list("pk", "not_before"))
    assert [nb[pk] for pk in first] == sorted(nb[pk] for pk in first)
    assert max(nb[pk] for pk in first) < min(nb[pk] for pk in second)


def test_a_deferred_run_is_delivered_when_it_comes_due(woken):
    run = queued_run(not_before=NOW + 2 * S)
    scheduler = Scheduler()

    assert scheduler.tick(NOW) == 2.0
    assert woken == []
    scheduler.tick(NOW + 2 * S)
    assert woken == [run]
    run.refresh_from_db()
    assert run.sent_at == NOW + 2 * S


def worker(name, last_seen):
    return Worker.objects.create(name=name, hostname="h", pid=1, channel="sisy.run_task",
                                 last_seen=last_seen)


def test_a_run_of_a_lost_worker_fails_and_is_retried(woken):
    task = make_task(retries=1, retry_backoff=2.0, next_run=None, enabled=False)
    worker("w-stale", NOW - 25 * S)
    run = running_run(task, worker="w-stale", started=NOW - MIN)

    settled = Scheduler().recover_lost(NOW)

    assert settled == [run]
    run.refresh_from_db()
    assert run.status == "failed" and run.finished_at == NOW
    assert run.error.startswith(
        "Worker lost: w-stale stopped heart-beating at 2030-01-07T11:59:35+00:00; "
    )
    retry = run.retried_by.get()
    assert (retry.status, retry.attempt, retry.scheduled_for) == ("queued", 2, run.scheduled_for)
    assert NOW + 1.5 * S <= retry.not_before <= NOW + 2.5 * S


def test_a_run_of_a_worker_without_a_row_fails_without_retries(woken):
    run = queued_run(status="running", worker="w-gone", started_at=NOW - MIN)

    Scheduler().recover_lost(NOW)

    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error.startswith("Worker lost: w-gone has no heartbeat row; ")
    assert not run.retried_by.exists()


def test_a_long_run_of_a_healthy_worker_and_a_just_started_run_are_never_touched(woken):
    worker("w-busy", NOW - 5 * S)
    long_run = queued_run(status="running", worker="w-busy", started_at=NOW - timedelta(hours=6))
    just_started = queued_run(status="running", worker="w-new", started_at=NOW - S)

    assert Scheduler().recover_lost(NOW) == []

    for run in (long_run, just_started):
        run.refresh_from_db()
        assert run.status == "running"


def test_finished_runs_older_than_the_retention_are_pruned(woken):
    old = queued_run(status="succeeded", finished_at=NOW - timedelta(days=31))
    recent = queued_run(status="failed", finished_at=NOW - timedelta(days=29))
    old_queued = queued_run(not_before=NOW - timedelta(days=60))
    retry = queued_run(retry_of=old, attempt=2)

    assert Scheduler().prune(NOW) == 1

    assert set(Run.objects.values_list("pk", flat=True)) == {recent.pk, old_queued.pk, retry.pk}
    retry.refresh_from_db()
    assert retry.retry_of is None
    with override_settings(SISY={"RETENTION": None}):
        assert Scheduler().prune(NOW + timedelta(days=300)) == 0


def test_pruning_runs_on_the_first_tick_and_then_every_few_minutes(woken, monkeypatch):
    calls = []
    monkeypatch.setattr(Scheduler, "prune", lambda self, now, conf=None: calls.append(now))
    scheduler = Scheduler()

    for seconds in (0, 60, 299, 300, 301):
        scheduler.tick(NOW + seconds * S)

    assert calls == [NOW, NOW + 300 * S]


# -- The loop ---------------------------------------------------------------------------


def test_a_task_saved_in_this_process_wakes_the_scheduler(django_capture_on_commit_callbacks):
    scheduler = Scheduler()
    with django_capture_on_commit_callbacks(execute=True):
        make_task(name="sched.new")
    assert scheduler.wakeup.is_set()


def test_run_survives_database_errors_and_stops_on_the_event(monkeypatch, caplog):
    stop = threading.Event()
    ticks = []

    def tick(self, now):
        ticks.append(now)
        if len(ticks) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        stop.set()
        return 60.0

    monkeypatch.setattr(Scheduler, "tick", tick)
    # Keep the test's transaction: closing connections is what run() does in production.
    monkeypatch.setattr(Scheduler, "_close_connection", lambda self: None)
    caplog.set_level(logging.INFO, logger="sisy.scheduler")

    Scheduler(clock=lambda: NOW).run(stop)

    assert ticks == [NOW, NOW]
    assert ("lost its database or channel layer (OperationalError: server closed the "
            "connection unexpectedly); retrying in 0.5 s") in caplog.text
    assert "Sisy scheduler stopped." in caplog.text


def test_stop_ends_a_long_sleep_at_once():
    scheduler, stop = Scheduler(), threading.Event()
    timer = threading.Timer(0.1, scheduler.stop, args=(stop,))
    timer.start()
    begin = time.monotonic()
    scheduler._sleep(30, stop)
    assert time.monotonic() - begin < 1.0
