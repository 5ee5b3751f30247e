"""Registry -> Task rows: create, update, keep operator state, orphan, and race safely."""

import time
from datetime import UTC, datetime, timedelta

import pytest

import sisy
from sisy.models import Run, Task
from sisy.registry import registry
from sisy.sources import explain
from sisy.sync import sync_tasks

pytestmark = pytest.mark.django_db

NOW = datetime(2024, 5, 6, 10, 7, 30, tzinfo=UTC)  # a Monday


@pytest.fixture(autouse=True)
def empty_task_table():
    """Start without the rows that post_migrate synced from tests.testapp.tasks."""
    Task.objects.all().delete()


def job():
    return "job"


def other_job():
    return "other"


def one_shot():
    return "one-shot"


def register(schedule="*/15 * * * *", name="sync.job", func=job, **options):
    return sisy.periodic(schedule, name=name, **options)(func)


def row(name="sync.job"):
    return Task.objects.get(name=name)


def snapshot():
    return list(Task.objects.order_by("pk").values())


# -- creating and re-syncing ----------------------------------------------------------------

def test_sync_creates_a_row_per_periodic_task(isolated_registry):
    register()
    register("0 3 * * *", name="sync.other", func=other_job, retries=2, allow_overlap=True,
             timezone="Europe/Berlin", catch_up="skip", start_deadline=timedelta(minutes=5),
             channel="sisy.slow")
    sisy.task(one_shot)  # a one-shot task has no row

    report = sync_tasks(now=NOW)

    assert report.created == ["sync.job", "sync.other"]
    assert (report.updated, report.orphaned, report.unchanged) == ([], [], 0)
    assert str(report) == "2 created, 0 updated, 0 orphaned, 0 unchanged"
    job_row, other = row(), row("sync.other")
    assert (job_row.label, job_row.source, job_row.schedule) == ("sync.job", "code", "*/15 * * * *")
    assert (job_row.enabled, job_row.paused, job_row.orphaned) == (True, False, False)
    assert job_row.allow_overlap is False and job_row.timezone == ""
    assert job_row.next_run == datetime(2024, 5, 6, 10, 15, tzinfo=UTC)
    assert job_row.last_run is None
    assert (other.retries, other.allow_overlap, other.timezone) == (2, True, "Europe/Berlin")
    assert (other.catch_up, other.start_deadline) == ("skip", timedelta(minutes=5))
    assert other.channel == "sisy.slow"
    assert other.next_run == datetime(2024, 5, 7, 1, 0, tzinfo=UTC)  # 03:00 in Berlin (CEST)


def test_a_second_sync_changes_nothing(isolated_registry):
    register()
    register("0 3 * * *", name="sync.other", func=other_job)
    sync_tasks(now=NOW)
    before = snapshot()

    report = sync_tasks(now=NOW + timedelta(minutes=30))

    assert (report.created, report.updated, report.orphaned) == ([], [], [])
    assert report.unchanged == 2
    assert snapshot() == before


def test_a_code_change_updates_the_code_owned_fields(isolated_registry):
    register("*/15 * * * *")
    sync_tasks(now=NOW)
    register("0 * * * *", retries=3, allow_overlap=True)  # the same function, edited

    report = sync_tasks(now=NOW)

    assert report.updated == ["sync.job"]
    updated = row()
    assert (updated.schedule, updated.retries, updated.allow_overlap) == ("0 * * * *", 3, True)
    assert updated.next_run == datetime(2024, 5, 6, 11, 0, tzinfo=UTC)  # the new schedule's slot
    assert updated.modified_at >= NOW


def test_a_change_that_keeps_the_schedule_keeps_the_next_slot(isolated_registry):
    register()
    sync_tasks(now=NOW)
    register(retries=1)
    sync_tasks(now=NOW + timedelta(hours=1))
    assert row().next_run == datetime(2024, 5, 6, 10, 15, tzinfo=UTC)


def test_a_settings_schedule_beats_the_code_schedule(isolated_registry, sisy_settings):
    register("*/15 * * * *")
    sync_tasks(now=NOW)
    sisy_settings(TASKS={"sync.*": {"schedule": "0 12 * * *", "retries": 4}})

    assert sync_tasks(now=NOW).updated == ["sync.job"]
    assert (row().schedule, row().retries) == ("0 12 * * *", 4)
    assert row().next_run == datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    assert explain(row()).schedule_source == "settings"

    sisy_settings(TASKS={})  # the override is removed: the code schedule comes back
    assert sync_tasks(now=NOW).updated == ["sync.job"]
    assert (row().schedule, row().retries) == ("*/15 * * * *", 0)
    assert explain(row()).schedule_source == "code"


def test_switched_off_in_settings(isolated_registry, sisy_settings):
    register()
    sisy_settings(TASKS={"sync.job": {"enabled": False}})
    sync_tasks(now=NOW)

    off = row()
    assert off.next_run is None
    assert off.enabled is True  # the code value; settings decide at fire time
    info = explain(off)
    assert (info.switched_on, info.why) == (False, "off in settings")

    sisy_settings(TASKS={})
    sync_tasks(now=NOW)
    assert row().next_run == datetime(2024, 5, 6, 10, 15, tzinfo=UTC)
    assert explain(row()).why == "on"


def test_settings_switch_on_beats_an_operator_pause(isolated_registry, sisy_settings):
    register()
    sync_tasks(now=NOW)
    Task.objects.filter(name="sync.job").update(paused=True)
    sisy_settings(TASKS={"sync.job": {"enabled": True}})
    sync_tasks(now=NOW)
    assert explain(row()).why == "on in settings"
    assert row().paused is True and row().next_run is not None


def test_switched_off_in_code(isolated_registry):
    register(enabled=False)
    sync_tasks(now=NOW)
    assert row().next_run is None
    assert explain(row()).why == "off in code"
    register(enabled=True)
    assert sync_tasks(now=NOW).updated == ["sync.job"]
    assert row().next_run == datetime(2024, 5, 6, 10, 15, tzinfo=UTC)


def test_an_operator_pause_survives_sync(isolated_registry):
    register()
    sync_tasks(now=NOW)
    Task.objects.filter(name="sync.job").update(paused=True)

    sync_tasks(now=NOW)
    register("0 * * * *")  # even a code change keeps the pause
    sync_tasks(now=NOW)

    paused = row()
    assert paused.paused is True
    assert paused.schedule == "0 * * * *"
    assert paused.next_run is None
    assert explain(paused).why == "paused by an operator"


def test_sisy_disabled_is_shown(isolated_registry, sisy_settings):
    register()
    sisy_settings(ENABLED=False)
    sync_tasks(now=NOW)
    assert explain(row()).why == "on; SISY['ENABLED'] is False, nothing fires"


def test_wait_for_schedule_false_starts_now(isolated_registry):
    register()
    sync_tasks(now=NOW)
    Task.objects.filter(name="sync.job").update(paused=True, wait_for_schedule=False)
    sync_tasks(now=NOW)
    Task.objects.filter(name="sync.job").update(paused=False)

    later = NOW + timedelta(minutes=1)
    assert sync_tasks(now=later).updated == ["sync.job"]
    assert row().next_run == later  # not the next */15 slot


def test_first_slot_respects_start_and_end():
    task = Task(schedule="0 * * * *", wait_for_schedule=False)
    assert task.first_slot(NOW) == NOW
    task.start_running = NOW + timedelta(days=1)
    assert task.first_slot(NOW) == NOW + timedelta(days=1)
    task.wait_for_schedule = True
    assert task.first_slot(NOW) == datetime(2024, 5, 7, 11, 0, tzinfo=UTC)
    task.end_running = NOW
    assert task.first_slot(NOW) is None


# -- orphans and runtime rows ---------------------------------------------------------------

def test_a_vanished_definition_orphans_its_row_and_keeps_its_runs(isolated_registry):
    register()
    register(name="sync.other", func=other_job)
    sync_tasks(now=NOW)
    task = row()
    Run.objects.create(task=task, task_name="sync.job", channel="sisy.run_task",
                       scheduled_for=NOW, not_before=NOW, status=Run.Status.SUCCEEDED)

    with registry.isolated():
        register(name="sync.other", func=other_job)
        report = sync_tasks(now=NOW)
        assert report.orphaned == ["sync.job"]
        assert sync_tasks(now=NOW).orphaned == []  # reported once

    orphan = row()
    assert (orphan.orphaned, orphan.next_run, orphan.source) == (True, None, "code")
    assert orphan.runs.count() == 1
    assert explain(orphan) == explain(orphan).__class__(
        False, "orphaned: its code definition is gone", "code",
    )


def test_a_definition_that_comes_back_is_adopted_again(isolated_registry):
    register()
    sync_tasks(now=NOW)
    with registry.isolated():
        sync_tasks(now=NOW)
    assert row().orphaned is True

    report = sync_tasks(now=NOW + timedelta(hours=1))

    assert report.updated == ["sync.job"]
    back = row()
    assert back.orphaned is False
    assert back.next_run == datetime(2024, 5, 6, 11, 15, tzinfo=UTC)  # a fresh slot


def test_runtime_rows_are_left_alone(isolated_registry):
    runtime = Task.objects.create(
        label="seed task", schedule="*/2 * * * *", source=Task.Source.DATABASE,
        next_run=NOW, enabled=False, func_info={"path": "tests.testapp.tasks.echo"},
    )
    before = snapshot()
    register()

    report = sync_tasks(now=NOW)

    assert report.created == ["sync.job"] and report.orphaned == []
    runtime.refresh_from_db()
    assert [r for r in snapshot() if r["id"] == runtime.pk] == before


def test_a_database_row_with_a_registered_name_is_adopted(isolated_registry):
    Task.objects.create(name="sync.job", label="made in the admin", schedule="1 1 1 1 *",
                        source=Task.Source.DATABASE, wait_for_schedule=False)
    register()
    assert sync_tasks(now=NOW).updated == ["sync.job"]
    adopted = row()
    assert (adopted.source, adopted.schedule, adopted.label) == ("code", "*/15 * * * *",
                                                                 "made in the admin")
    assert adopted.next_run == NOW  # wait_for_schedule=False and never run: now


def test_bad_settings_stop_sync_before_it_writes(isolated_registry, sisy_settings):
    register()
    sisy_settings(TASKS={"sync.job": {"enabled": "yes"}})
    with pytest.raises(sisy.ConfigurationError, match=r"^SISY\['TASKS'\]\['sync.job'\]"):
        sync_tasks(now=NOW)
    assert not Task.objects.exists()


# -- scale ----------------------------------------------------------------------------------

def test_one_thousand_tasks_sync_quickly(isolated_registry, capsys):
    for i in range(1000):
        register(f"{i % 60} * * * *", name=f"bulk.task_{i:04d}")

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as create_queries:
        started = time.perf_counter()
        first = sync_tasks(now=NOW)
        created_in = time.perf_counter() - started

    with CaptureQueriesContext(connection) as unchanged_queries:
        started = time.perf_counter()
        second = sync_tasks(now=NOW)
        unchanged_in = time.perf_counter() - started

    with registry.isolated(), CaptureQueriesContext(connection) as orphan_queries:
        started = time.perf_counter()
        third = sync_tasks(now=NOW)
        orphaned_in = time.perf_counter() - started

    with capsys.disabled():
        print(f"\nsync of 1,000 tasks: create {created_in * 1000:.0f} ms, "
              f"unchanged {unchanged_in * 1000:.0f} ms, orphan {orphaned_in * 1000:.0f} ms")
    assert len(first.created) == 1000 and second.unchanged == 1000
    assert len(third.orphaned) == 1000
    assert Task.objects.filter(name__startswith="bulk.").count() == 1000
    # Bulk statements: the number of queries does not grow with the number of tasks
    # (timings are printed above; extra/bench/sync_bench.py measures them).
    assert len(create_queries) <= 60  # SQLite inserts ~37 rows per statement (999 variables)
    assert len(unchanged_queries) <= 5
    assert len(orphan_queries) <= 8


# -- concurrency ----------------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_sisy_sync_processes_on_postgres(spawn_manage):
    periodic = {d.name for d in registry.periodic()}
    for round_ in range(3):
        if round_ % 2 == 0:
            Task.objects.all().delete()  # both processes create the same rows
        else:  # both processes update the same stale rows and orphan the same row
            Task.objects.update(schedule="1 1 1 1 *", retries=9)
            Task.objects.create(name="gone.task", source=Task.Source.CODE)
        processes = [spawn_manage("sisy_sync", "--skip-checks") for _ in range(2)]
        outputs = [p.communicate(timeout=60) for p in processes]
        for process, (out, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err
            assert "Traceback" not in err, err
            assert "Sync done:" in out
        code_rows = Task.objects.filter(source=Task.Source.CODE, orphaned=False)
        assert sorted(code_rows.values_list("name", flat=True)) == sorted(periodic)
        assert set(code_rows.values_list("schedule", flat=True)) != {"1 1 1 1 *"}
        if round_ % 2:
            assert Task.objects.get(name="gone.task").orphaned is True
            assert Task.objects.count() == len(periodic) + 1
        else:
            assert Task.objects.count() == len(periodic)


def test_orphans_are_logged_in_one_line(isolated_registry, caplog):
    for i in range(12):
        register(name=f"log.task_{i:02d}")
    sync_tasks(now=NOW)
    with registry.isolated():
        sync_tasks(now=NOW)
    [record] = [r for r in caplog.records if r.name == "sisy.sync"]
    assert record.getMessage() == (
        "12 task(s) have no @sisy.periodic definition any more; they are switched off "
        "(orphaned) and their runs are kept: "
        + ", ".join(f"log.task_{i:02d}" for i in range(10)) + " and 2 more"
    )
