"""The seed's API (Sisy 1.0) on the new engine: ``task_with_callable``, ``run_once``,
``run_iterations``, instance methods, data migrations and the seed's docs examples.

Given a row made the seed's way, when the scheduler fires it and a worker runs
it, expect the seed's behaviour: the callable comes from the row, a function
with one ``message`` parameter gets ``dict(task=..., channel_message=...)``,
and ``userdata`` changes persist.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

import sisy.scheduler  # noqa: F401  (schedules saved rows, as in every Sisy process)
from sisy.exceptions import UnknownTask
from sisy.execution import claim, execute
from sisy.legacy import callable_from_info, func_info
from sisy.models import Run, Task, task_with_callable, taskinfo_with_label
from sisy.scheduler import Scheduler
from tests.helpers import spawn_manage
from tests.testapp import tasks
from tests.testapp.models import Gadget, Mark, NotAModel, StrGadget, UuidGadget

pytestmark = pytest.mark.django_db

NOW = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)  # a Monday


def fire(row: Task, when: datetime | None = None) -> Run:
    """Queue a run for ``row`` the way the scheduler names it (its label: no registered name)."""
    when = when or timezone.now()
    return Run.objects.create(task=row, task_name=row.label, channel="sisy.run_task",
                              scheduled_for=when, not_before=when)


def run_it(run: Run) -> Run:
    claimed = claim(run.pk, "test-worker", now=max(timezone.now(), run.not_before))
    assert claimed is not None
    execute(claimed, manage_connections=False)
    run.refresh_from_db()
    return run


def saved(*args, **kwargs) -> Task:
    task = task_with_callable(*args, **kwargs)
    task.save()
    return task


# -- task_with_callable: what it records -------------------------------------------------

def test_a_plain_function_is_recorded_by_module_and_name():
    task = task_with_callable(tasks.seed_counter)
    assert task.pk is None  # inactive until saved, as in the seed
    assert task.func_info == {
        "func_type": "function",
        "module_name": "tests.testapp.tasks",
        "func_name": "seed_counter",
        "func_path": "tests.testapp.tasks.seed_counter",
    }
    assert task.label == "tests.testapp.tasks.seed_counter"
    assert (task.name, task.source, task.userdata) == (None, "database", {})
    assert task.schedule == "* * * * *"


@pytest.mark.parametrize(
    ("the_callable", "kind"),
    [
        (tasks.SeedJobs.classy, "classmethod"),
        (tasks.SeedJobs.static, "staticmethod"),
        ("tests.testapp.tasks.SeedJobs.classy", "classmethod"),
        ("tests.testapp.tasks.SeedJobs.static", "staticmethod"),
    ],
)
def test_class_and_static_methods_are_recorded_with_their_class(the_callable, kind):
    info = task_with_callable(the_callable).func_info
    name = info["func_name"]
    assert info == {
        "func_type": kind,
        "module_name": "tests.testapp.tasks",
        "class_name": "SeedJobs",
        "class_path": "tests.testapp.tasks.SeedJobs",
        "func_name": name,
        "func_path": f"tests.testapp.tasks.SeedJobs.{name}",
    }


def test_a_dotted_path_gives_the_same_info_as_the_object():
    assert (task_with_callable("tests.testapp.tasks.seed_counter").func_info
            == task_with_callable(tasks.seed_counter).func_info)


@pytest.mark.parametrize(
    ("make", "stored"),
    [
        (lambda: Gadget.objects.create(name="g"), lambda obj: obj.pk),
        (lambda: UuidGadget.objects.create(), lambda obj: str(obj.pk)),
        (lambda: StrGadget.objects.create(code="gadget/α 1"), lambda obj: "gadget/α 1"),
    ],
    ids=["int", "uuid", "str"],
)
def test_instance_methods_record_the_model_and_any_type_of_pk(make, stored):
    obj = make()
    info = task_with_callable(obj.bump).func_info
    model = type(obj).__name__
    assert info == {
        "func_type": "instancemethod",
        "module_name": "tests.testapp.models",
        "class_name": model,
        "class_path": f"tests.testapp.models.{model}",
        "model_pk": stored(obj),
        "func_name": "bump",
        "func_path": f"tests.testapp.models.{model}.bump",
    }
    # ... and the worker gets a fresh object back by that pk.
    again = callable_from_info(info)
    assert again.__self__ == obj and again.__self__ is not obj


def test_a_dotted_instance_method_with_pk_override_is_the_seeds_migration_pattern():
    gadget = Gadget.objects.create(name="g")
    info = task_with_callable("tests.testapp.models.Gadget.bump", pk_override=gadget.pk).func_info
    assert info == func_info(gadget.bump)


def test_the_unbound_method_with_pk_override_works_too():
    gadget = Gadget.objects.create(name="g")
    assert task_with_callable(Gadget.bump, pk_override=gadget.pk).func_info == func_info(
        gadget.bump)


def test_a_registered_task_may_be_used_the_seeds_way():
    task = task_with_callable(tasks.no_arguments)
    assert task.func_info["func_path"] == "tests.testapp.tasks.no_arguments"
    task = task_with_callable(tasks.with_progress)  # a @sisy.task with takes_context=True
    assert task.func_info["func_name"] == "with_progress"


def test_userdata_label_schedule_and_task_fields_are_kept():
    start = NOW + timedelta(days=1)
    task = task_with_callable(tasks.seed_counter, label="count", schedule="*/5 * * * *",
                              userdata={"a": [1, 2]}, start_running=start, iterations=4)
    assert (task.label, task.schedule, task.userdata, task.start_running, task.iterations) == (
        "count", "*/5 * * * *", {"a": [1, 2]}, start, 4)


def test_the_default_schedule_comes_from_the_settings(sisy_settings, settings):
    sisy_settings(DEFAULT_SCHEDULE="0 * * * *")
    assert task_with_callable(tasks.seed_counter).schedule == "0 * * * *"
    sisy_settings()
    settings.SISY_DEFAULT_SCHEDULE = "15 * * * *"  # the seed's setting name
    assert task_with_callable(tasks.seed_counter).schedule == "15 * * * *"


# -- task_with_callable: refusals ---------------------------------------------------------

@pytest.mark.parametrize(
    ("the_callable", "message"),
    [
        ("seed_counter", "'seed_counter' is not a dotted path; give the full path of the task "
                         "function, e.g. 'myapp.tasks.my_function'."),
        ("tests.testapp..seed_counter", "is not a dotted path"),
        ("nosuchmodule.func", "Module 'nosuchmodule' of 'nosuchmodule.func' cannot be imported"),
        ("tests.testapp.tasks.nothing_here",
         "'tests.testapp.tasks.nothing_here' cannot be found: tests.testapp.tasks has no "
         "attribute 'nothing_here'."),
        ("tests.testapp.tasks.SeedJobs.nope",
         "tests.testapp.tasks.SeedJobs has no attribute 'nope'"),
        ("tests.testapp.tasks.SeedJobs",
         "tests.testapp.tasks.SeedJobs is a class, which cannot be a task; name one of its "
         "classmethods or staticmethods, e.g. 'tests.testapp.tasks.SeedJobs.my_method'."),
        (tasks.SeedJobs, "tests.testapp.tasks.SeedJobs is a class"),
        ("tests.testapp.tasks", "tests.testapp.tasks is a module, which cannot be a task; name "
                                "a function in it, e.g. 'tests.testapp.tasks.my_function'."),
        (tasks, "tests.testapp.tasks is a module"),
        (NotAModel().method,
         "tests.testapp.models.NotAModel.method is an instance method of a NotAModel object, "
         "which is not a Django model; Sisy can only re-create model objects in a worker"),
        ("tests.testapp.models.NotAModel.method",
         "is an instance method, and Sisy needs the object to call it on"),
        ("tests.testapp.tasks.SeedJobs.instance",
         "'tests.testapp.tasks.SeedJobs.instance' is an instance method, and Sisy needs the "
         "object to call it on. Pass pk_override=<the model object's pk>"),
        (tasks.SeedJobs.instance, "is an instance method, and Sisy needs the object"),
        (42, "42 (int) is not a function or method, so it cannot be a task"),
        (lambda message: None, "is a lambda or a nested function"),
        (tasks.two_arguments,
         "tests.testapp.tasks.two_arguments takes (a, b); a task function made with "
         "task_with_callable must take one parameter named 'message'"),
        (tasks.echo, "tests.testapp.tasks.echo takes (value)"),
    ],
)
def test_what_a_worker_could_not_call_is_refused_with_a_clear_value_error(the_callable, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        task_with_callable(the_callable)
    assert not Task.objects.filter(name__isnull=True).exists()


def test_an_instance_method_of_a_non_model_is_refused_even_with_pk_override():
    with pytest.raises(ValueError, match=re.escape(
            "is an instance method of tests.testapp.models.NotAModel, which is not a Django "
            "model")):
        task_with_callable("tests.testapp.models.NotAModel.method", pk_override=1)


def test_an_unsaved_model_object_is_refused():
    with pytest.raises(ValueError, match=re.escape(
            "tests.testapp.models.Gadget.bump is a method of an unsaved Gadget (its pk is None); "
            "save the object first")):
        task_with_callable(Gadget(name="unsaved").bump)


def test_pk_override_for_something_that_is_not_an_instance_method_is_refused():
    with pytest.raises(ValueError, match=re.escape(
            "pk_override=3 was given, but 'tests.testapp.tasks.seed_counter' is not an instance "
            "method of a model; leave pk_override out.")):
        task_with_callable("tests.testapp.tasks.seed_counter", pk_override=3)


def test_a_bad_schedule_is_refused():
    with pytest.raises(ValueError, match=re.escape(
            "Schedule '61 * * * *' of task 'tests.testapp.tasks.seed_counter' is not valid "
            "cron: minute field '61' is out of range 0-59.")):
        task_with_callable(tasks.seed_counter, schedule="61 * * * *")


@pytest.mark.parametrize("userdata", [["a"], "text", 3])
def test_userdata_that_is_not_a_dict_is_refused(userdata):
    with pytest.raises(ValueError, match=re.escape(
            f"userdata must be a dict of JSON-serialisable data, not {type(userdata).__name__} "
            f"({userdata!r}).")):
        task_with_callable(tasks.seed_counter, userdata=userdata)


def test_an_unknown_keyword_is_refused_with_the_ones_accepted():
    with pytest.raises(ValueError, match=re.escape(
            "task_with_callable() got unknown keyword(s) colour; it accepts label, schedule, "
            "userdata, pk_override and the Task fields start_running, end_running")):
        task_with_callable(tasks.seed_counter, colour="red")


# -- running seed rows ---------------------------------------------------------------------

def test_a_message_function_gets_the_task_and_the_run_message_and_userdata_persists():
    task = saved(tasks.seed_counter, label="counter", userdata={"count": 41})
    run = run_it(fire(task))
    assert run.status == "succeeded", run.error
    assert run.result == {"count": 42, "channel_message": {
        "type": "sisy.run", "run": run.pk, "name": "counter"}}
    task.refresh_from_db()
    assert task.userdata == {"count": 42}
    run_it(fire(task, timezone.now() + timedelta(seconds=1)))
    task.refresh_from_db()
    assert task.userdata == {"count": 43}


def test_userdata_changed_before_a_failure_persists_and_the_error_is_recorded():
    task = saved(tasks.seed_fails, label="fails")
    run = run_it(fire(task))
    assert run.status == "failed"
    assert run.error.startswith("RuntimeError: seed task failed")
    task.refresh_from_db()
    assert task.userdata == {"tried": True}


def test_a_function_that_saves_its_task_does_not_undo_the_schedulers_changes():
    task = saved(tasks.seed_saves_task, label="saver", iterations=5)
    run = fire(task)
    # Meanwhile the scheduler fired another slot: one iteration fewer, a later next_run.
    later = timezone.now() + timedelta(hours=1)
    Task.objects.filter(pk=task.pk).update(iterations=4, next_run=later)
    assert run_it(run).status == "succeeded"
    task.refresh_from_db()
    assert (task.userdata, task.iterations, task.next_run) == ({"saved": True}, 4, later)


@pytest.mark.parametrize(
    ("make", "result"),
    [
        (lambda: Gadget.objects.create(name="g"), lambda obj: 1),
        (lambda: UuidGadget.objects.create(), lambda obj: str(obj.pk)),
        (lambda: StrGadget.objects.create(code="café-7"), lambda obj: "café-7"),
    ],
    ids=["int", "uuid", "str"],
)
def test_instance_methods_run_on_the_object_fetched_again_by_pk(make, result):
    obj = make()
    task = saved(obj.bump, label=f"bump {type(obj).__name__}")
    run = run_it(fire(task))
    assert run.status == "succeeded", run.error
    assert run.result == result(obj)
    obj.refresh_from_db()
    assert obj.counter == 1


def test_an_instance_method_sees_the_objects_current_state_and_may_write_userdata():
    gadget = Gadget.objects.create(name="before", counter=10)
    task = saved(gadget.bump, label="bump")
    Gadget.objects.filter(pk=gadget.pk).update(name="after")
    assert run_it(fire(task)).result == 11
    task.refresh_from_db()
    assert task.userdata == {"bumped_by": "after"}


def test_class_and_static_methods_run():
    classy = saved(tasks.SeedJobs.classy, label="classy")
    static = saved("tests.testapp.tasks.SeedJobs.static", label="static",
                   userdata={"greeting": "hi"})
    assert run_it(fire(classy)).result == "SeedJobs:classy"
    assert run_it(fire(static)).result == "hi"


def test_functions_without_a_message_parameter_are_called_without_arguments():
    plain = saved(tasks.no_arguments, label="plain")
    assert run_it(fire(plain)).result == "called without a message"


def test_a_registered_context_task_gets_a_context_with_the_rows_userdata():
    task = saved(tasks.with_progress, label="with context", userdata={"seen": 1})
    run = run_it(fire(task))
    assert run.status == "succeeded", run.error
    assert run.result == {"attempt": 1, "run": run.pk}
    assert (run.progress_done, run.progress_total) == (5, 5)
    task.refresh_from_db()
    assert task.userdata == {"seen": 2}


def test_a_row_labelled_like_a_registered_task_runs_its_own_callable():
    task = saved(tasks.seed_counter, label="tests.testapp.tasks.add")
    run = run_it(fire(task))
    assert run.status == "succeeded", run.error
    assert run.result["count"] == 1


def test_a_deleted_model_object_fails_the_run_with_a_clear_error():
    gadget = Gadget.objects.create(name="g")
    task = saved(gadget.bump, label="orphan object")
    gadget_pk = gadget.pk
    gadget.delete()
    run = run_it(fire(task))
    assert run.status == "failed"
    assert run.error.startswith(
        f"LookupError: Gadget with pk {gadget_pk!r} no longer exists, so "
        "tests.testapp.models.Gadget.bump cannot be called; switch the task off or delete it.")


def test_code_that_is_gone_fails_the_run_with_a_clear_error():
    task = saved(tasks.seed_counter, label="gone")
    Task.objects.filter(pk=task.pk).update(func_info={
        "func_type": "function", "module_name": "tests.testapp.tasks",
        "func_name": "was_deleted", "func_path": "tests.testapp.tasks.was_deleted"})
    run = run_it(fire(task))
    assert run.status == "failed"
    assert "tests.testapp.tasks.was_deleted no longer exists" in run.error


def test_a_run_without_a_row_is_never_resolved_from_its_name():
    # A dotted path in a run's name (or a message) is not a task: only rows and the registry are.
    run = Run.objects.create(task_name="tests.testapp.tasks.seed_counter", channel="sisy.run_task",
                             scheduled_for=timezone.now(), not_before=timezone.now())
    run = run_it(run)
    assert run.status == "failed"
    assert run.error_type == UnknownTask.__module__ + ".UnknownTask"
    assert "No task is registered as 'tests.testapp.tasks.seed_counter'" in run.error


def test_the_scheduler_fires_a_seed_row_under_its_label():
    task = saved(tasks.seed_counter, label="fired", schedule="*/5 * * * *")
    Task.objects.filter(pk=task.pk).update(next_run=NOW)
    Task.objects.exclude(pk=task.pk).update(next_run=None)
    (run,) = Scheduler().fire_due(NOW)
    assert (run.task_id, run.task_name, run.scheduled_for) == (task.pk, "fired", NOW)
    assert run_it(run).result["count"] == 1
    task.refresh_from_db()
    assert task.next_run == NOW + timedelta(minutes=5)


def test_saving_a_new_row_schedules_its_first_slot():
    before = timezone.now()
    task = saved(tasks.seed_counter, schedule="* * * * *")
    assert before < task.next_run <= before + timedelta(minutes=1)


# -- run_once / run_iterations -------------------------------------------------------------

def test_run_once_saves_a_one_iteration_task_due_now():
    before = timezone.now()
    task = Task.run_once(tasks.seed_counter, userdata={"count": 1})
    task.refresh_from_db()
    assert (task.iterations, task.schedule, task.userdata, task.start_running) == (
        1, "* * * * * *", {"count": 1}, None)
    assert task.wait_for_schedule is False
    assert before <= task.next_run <= timezone.now()
    assert task.label == "tests.testapp.tasks.seed_counter"


def test_run_once_with_delay_until_fires_at_that_moment():
    later = timezone.now() + timedelta(days=3)
    task = Task.run_once("tests.testapp.tasks.seed_counter", delay_until=later)
    task.refresh_from_db()
    assert (task.start_running, task.next_run) == (later, later)


def test_run_iterations_waits_for_the_schedule_and_retires_after_its_iterations():
    task = Task.run_iterations(tasks.seed_counter, iterations=3, schedule="*/10 * * * *",
                               label="three times")
    assert task.wait_for_schedule is True
    Task.objects.exclude(pk=task.pk).update(next_run=None)
    Task.objects.filter(pk=task.pk).update(next_run=NOW)
    scheduler = Scheduler()
    fired = [scheduler.fire_due(NOW + timedelta(minutes=10 * i)) for i in range(4)]
    assert [len(runs) for runs in fired] == [1, 1, 1, 0]
    task.refresh_from_db()
    assert (task.iterations, task.enabled, task.next_run) == (0, False, None)
    assert task.runs.count() == 3  # the row and its history stay; the seed deleted it


def test_run_iterations_run_immediately_fires_at_once():
    before = timezone.now()
    task = Task.run_iterations(tasks.seed_counter, iterations=2, run_immediately=True)
    assert before <= task.next_run <= timezone.now()


@pytest.mark.parametrize(
    ("delay_until", "message"),
    [
        (timezone.now() - timedelta(seconds=1), "Task cannot start running in the past: "
                                                "delay_until "),
        ("tomorrow", "delay_until must be a datetime.datetime instance, not str ('tomorrow')."),
        (datetime(2099, 1, 1), "delay_until 2099-01-01T00:00:00 has no timezone; pass an aware "
                               "datetime"),
    ],
    ids=["past", "not-a-datetime", "naive"],
)
def test_delay_until_is_refused_when_the_seed_refused_it(delay_until, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Task.run_once(tasks.seed_counter, delay_until=delay_until)
    with pytest.raises(ValueError, match=re.escape(message)):
        Task.run_iterations(tasks.seed_counter, iterations=2, delay_until=delay_until)
    assert Task.objects.filter(label="tests.testapp.tasks.seed_counter").count() == 0


def test_run_iterations_refuses_a_negative_count():
    with pytest.raises(ValueError, match=re.escape(
            "iterations must be a whole number >= 0 (0: no limit), not -1.")):
        Task.run_iterations(tasks.seed_counter, iterations=-1)


# -- the seed's README and docs, as tests ----------------------------------------------------

def test_readme_quick_howto():
    task = task_with_callable(
        "tests.testapp.tasks.seed_counter",  # dotted path to function
        label="weekday-business-hours-function",  # any string you want here really
        schedule="0,15,30,45 9-17 * * mon-fri",  # Run every 15 minutes 9am-5pm on weekdays
    )
    assert task.pk is None and not Task.objects.filter(name__isnull=True).exists()
    task.save()
    task.refresh_from_db()
    assert task.next_run is not None and task.next_run.minute in (0, 15, 30, 45)
    assert task.next_run.weekday() < 5


def test_docs_basic_form_with_the_schedule_set_after_creation():
    task = task_with_callable(tasks.seed_counter)
    task.schedule = "*/5 0,3,6,9 * * *"
    task.save()
    task.refresh_from_db()
    assert task.next_run.hour in (0, 3, 6, 9) and task.next_run.minute % 5 == 0


def test_docs_class_method_example():
    task = task_with_callable(tasks.SeedJobs.classy)
    task.schedule = "0 9-17 * * mon-fri"
    task.save()
    assert run_it(fire(task)).result == "SeedJobs:tests.testapp.tasks.SeedJobs.classy"


def test_docs_instance_method_example():
    Gadget.objects.create(name="first")
    a_gadget = Gadget.objects.all()[0]
    task = task_with_callable(a_gadget.bump)
    task.schedule = "*/5 * * * *"
    task.save()
    run_it(fire(task))
    a_gadget.refresh_from_db()
    assert a_gadget.counter == 1


def test_docs_start_and_end_dates():
    tz = timezone.get_current_timezone()
    task = task_with_callable(
        tasks.seed_counter,
        schedule="0 7-19 * * *",  # only run 7am - 7pm
        start_running=datetime(2030, 1, 1, 0, 0, tzinfo=tz),
        end_running=datetime(2030, 2, 14, 0, 0, tzinfo=tz),
    )
    task.save()
    task.refresh_from_db()
    assert task.next_run == datetime(2030, 1, 1, 7, 0, tzinfo=tz)  # nothing before the start
    Task.objects.exclude(pk=task.pk).update(next_run=None)
    last = datetime(2030, 2, 13, 19, 0, tzinfo=tz)
    Task.objects.filter(pk=task.pk).update(next_run=last)
    (run,) = Scheduler().fire_due(last)
    task.refresh_from_db()
    assert run.scheduled_for == last
    assert (task.next_run, task.enabled) == (None, False)  # no slot after the end: retired


def test_docs_iteration_counts():
    task = Task.run_iterations(
        tasks.seed_counter,
        schedule="0 7-19 * * *",  # only run 7am - 7pm
        iterations=10,
    )
    assert (task.iterations, task.schedule) == (10, "0 7-19 * * *")
    assert 7 <= task.next_run.hour <= 19


def test_docs_one_shot_runs_with_an_object_a_dotted_path_and_later():
    now_task = Task.run_once(tasks.seed_counter)
    path_task = Task.run_once("tests.testapp.tasks.seed_counter")
    three_days_from_now = timezone.now() + timedelta(days=3)
    later_task = Task.run_once(tasks.seed_counter, delay_until=three_days_from_now)
    assert now_task.func_info == path_task.func_info
    assert later_task.next_run == three_days_from_now


# -- data migrations (the seed's documented pattern) --------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_seed_style_data_migration_applies_runs_and_unapplies():
    from tests.testapp import seed_migration

    loader = MigrationLoader(connection)
    state = loader.project_state(loader.graph.leaf_nodes())
    migration = seed_migration.Migration("0004_seed_tasks", "testapp")
    with connection.schema_editor(atomic=True) as editor:
        migration.apply(state.clone(), editor)

    plain = Task.objects.get(label=seed_migration.PLAIN_LABEL)
    method = Task.objects.get(label=seed_migration.METHOD_LABEL)
    gadget = Gadget.objects.get(name="from a migration")
    assert taskinfo_with_label(seed_migration.METHOD_LABEL)["model_pk"] == gadget.pk
    assert plain.next_run is not None and method.next_run is not None
    assert run_it(fire(method)).result == 1
    assert run_it(fire(plain)).result["count"] == 1

    with connection.schema_editor(atomic=True) as editor:
        migration.unapply(state.clone(), editor)
    assert not Task.objects.filter(label__startswith="MIGRATION-").exists()
    assert not Gadget.objects.filter(pk=gadget.pk).exists()


def test_taskinfo_with_label_returns_a_copy_of_the_rows_info():
    task = saved(tasks.seed_counter, label="info")
    info = taskinfo_with_label("info")
    info["func_name"] = "changed"
    task.refresh_from_db()
    assert task.func_info["func_name"] == "seed_counter"


# -- end to end: a real worker process runs a seed row ----------------------------------------

@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_real_sisy_worker_runs_a_seed_row_fired_by_the_scheduler():
    token = f"seed-e2e-{uuid.uuid4().hex[:8]}"
    gadget = Gadget.objects.create(name="e2e")
    marker = saved("tests.testapp.tasks.seed_mark", label=token, schedule="* * * * * *")
    bumper = saved(gadget.bump, label=f"{token}-bump", schedule="* * * * * *")
    Task.objects.exclude(pk__in=[marker.pk, bumper.pk]).update(next_run=None)
    now = timezone.now()
    Task.objects.filter(pk__in=[marker.pk, bumper.pk]).update(next_run=now)
    runs = Scheduler().fire_due(now)
    assert sorted(run.task_name for run in runs) == [token, f"{token}-bump"]

    worker = spawn_manage("sisy_worker", env={"SISY_LOG": "INFO"})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not Run.objects.filter(pk__in=[r.pk for r in runs],
                                      status__in=["queued", "running"]).exists():
                break
            assert worker.poll() is None, worker.communicate()
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    statuses = dict(Run.objects.filter(pk__in=[r.pk for r in runs])
                    .values_list("task_name", "status"))
    assert statuses == {token: "succeeded", f"{token}-bump": "succeeded"}, (
        list(Run.objects.values_list("error", flat=True)))
    mark = Mark.objects.get(token=token)
    assert mark.pid == worker.pid and mark.pid != __import__("os").getpid()
    gadget.refresh_from_db()
    assert gadget.counter == 1
    bumper.refresh_from_db()
    assert bumper.userdata == {"bumped_by": "e2e"}
