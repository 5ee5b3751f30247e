"""manage.py sisy_sync and sisy_list, and the sync that runs after migrate."""

import io
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.core.management import call_command

import sisy
from sisy.models import Run, Task
from sisy.registry import registry
from tests.helpers import uses_postgres

pytestmark = pytest.mark.django_db


def job():
    return "job"


def other_job():
    return "other"


@pytest.fixture(autouse=True)
def empty_task_table():
    Task.objects.all().delete()


def manage(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def lines(text: str) -> list[str]:
    return text.splitlines()


# -- sisy_sync ------------------------------------------------------------------------------

def test_sisy_sync_prints_each_change_and_a_summary(isolated_registry):
    sisy.periodic("*/5 * * * *", name="cmd.a")(job)
    sisy.periodic("0 * * * *", name="cmd.b")(other_job)
    assert lines(manage("sisy_sync")) == [
        "  created: cmd.a",
        "  created: cmd.b",
        "Sync done: 2 created, 0 updated, 0 orphaned, 0 unchanged.",
    ]

    sisy.periodic("*/10 * * * *", name="cmd.a")(job)  # code change
    with registry.isolated():
        sisy.periodic("*/10 * * * *", name="cmd.a")(job)  # cmd.b has gone
        assert lines(manage("sisy_sync")) == [
            "  updated: cmd.a",
            "  orphaned: cmd.b",
            "Sync done: 0 created, 1 updated, 1 orphaned, 0 unchanged.",
        ]
        assert lines(manage("sisy_sync")) == [
            "Sync done: 0 created, 0 updated, 0 orphaned, 1 unchanged.",
        ]


def test_sisy_sync_with_the_real_registry_creates_the_fixture_tasks():
    periodic = len(registry.periodic())  # tests/testapp/tasks.py grows with other tests
    output = manage("sisy_sync")
    assert "  created: reports.daily\n" in output
    assert output.endswith(f"Sync done: {periodic} created, 0 updated, 0 orphaned, 0 unchanged.\n")
    assert output.count("  created: ") == periodic


def test_sisy_sync_refuses_bad_settings(sisy_settings):
    from django.core.management.base import SystemCheckError

    sisy_settings(TASKS={"reports.daily": {"enabled": "yes"}})
    with pytest.raises(SystemCheckError, match=r"\(sisy.E003\) SISY\['TASKS'\]\['reports.daily'\]"):
        call_command("sisy_sync", skip_checks=False, stdout=io.StringIO())
    assert not Task.objects.exists()


# -- sisy_list ------------------------------------------------------------------------------

def test_sisy_list_on_an_empty_table():
    assert lines(manage("sisy_list")) == [
        "name  schedule  enabled  next run  last run",
        "----  --------  -------  --------  --------",
        "No tasks yet: decorate a function with @sisy.periodic in tasks.py.",
    ]


def test_sisy_list_shows_each_task_why_and_its_last_run(isolated_registry, sisy_settings):
    sisy.periodic("0 7 * * *", name="cmd.on")(job)
    sisy.periodic("0 * * * *", name="cmd.off")(other_job)
    sisy_settings(TASKS={"cmd.off": {"enabled": False}, "cmd.o*": {"schedule": "0 8 * * *"}})
    call_command("sisy_sync", stdout=io.StringIO())
    Task.objects.create(label="seed task", schedule="*/2 * * * *", enabled=False)
    on = Task.objects.get(name="cmd.on")
    on.next_run = datetime(2030, 1, 2, 8, 0, tzinfo=UTC)
    on.last_run = datetime(2030, 1, 1, 8, 0, 5, tzinfo=UTC)
    on.save()
    slot = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    for status in (Run.Status.FAILED, Run.Status.SUCCEEDED):  # the latest slot counts
        Run.objects.create(task=on, task_name="cmd.on", channel="sisy.run_task",
                           scheduled_for=slot, not_before=slot, status=status)
        slot -= timedelta(days=1)

    assert lines(manage("sisy_list")) == [
        "name       schedule                enabled                   next run                 "
        "last run",
        "---------  ----------------------  ------------------------  -----------------------  "
        "---------------------------------",
        "cmd.off    0 8 * * * (settings)    no (off in settings)      -                        "
        "never",
        "cmd.on     0 8 * * * (settings)    yes (on)                  2030-01-02 08:00:00 UTC  "
        "failed at 2030-01-01 08:00:05 UTC",
        "seed task  */2 * * * * (database)  no (off in the database)  -                        "
        "never",
    ]


@pytest.mark.django_db(transaction=True)  # no open transaction may lock SQLite meanwhile
def test_sisy_list_as_a_subprocess(run_manage):
    done = run_manage("sisy_list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split() == ["name", "schedule", "enabled", "next", "run",
                                                   "last", "run"]


# -- post_migrate ---------------------------------------------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(uses_postgres(settings), reason="uses a throw-away SQLite file")
def test_migrate_syncs_and_unmigrating_sisy_works(run_manage, tmp_path):
    env = {"SISY_DB_NAME": str(tmp_path / "fresh.sqlite3")}
    done = run_manage("migrate", "-v0", env=env)
    assert done.returncode == 0, done.stderr
    listed = run_manage("sisy_list", env=env)
    assert "reports.daily" in listed.stdout  # post_migrate synced the registry

    done = run_manage("migrate", "sisy", "zero", "-v0", env=env)
    assert done.returncode == 0, done.stderr  # no sync against a dropped table

