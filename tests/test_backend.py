"""SisyBackend under Django's Tasks contract, in-process: both Django lines, both configurations.

Given a task declared with Django's ``@task`` on ``TASKS["default"] =
SisyBackend``, when it is enqueued and a Sisy worker drains the queue, expect
what Django's own backend tests expect: statuses, timestamps, errors, return
values, context and signals. ``tests/test_backend_e2e.py`` does the same with
real ``sisy_worker`` processes.
"""

from __future__ import annotations

import datetime
import os
import sys
from datetime import timedelta
from typing import NamedTuple

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

try:
    from sisy import compat
except ImportError as exc:  # Django 5.2 without the backport: pip install "sisy[django-tasks]"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        raise
    pytest.skip(str(exc), allow_module_level=True)

import sisy
from sisy.backends import DjangoTaskDefinition, SisyBackend
from sisy.compat import (
    InvalidTaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from sisy.exceptions import DuplicateTaskName, InvalidArguments
from sisy.models import Run
from sisy.registry import registry
from sisy.worker import Worker
from tests.settings_tasks import TASKS
from tests.testapp.models import Mark

if compat.TASKS_MODULE == "django.tasks":
    from django.tasks import default_task_backend, task
    from django.tasks.exceptions import TaskResultMismatch
else:
    from django_tasks import default_task_backend, task
    from django_tasks.exceptions import TaskResultMismatch

# The fixture tasks are declared (validated and registered) with Sisy as the backend.
with override_settings(TASKS=TASKS):
    from tests.djangotasks import tasks as djtasks

pytestmark = pytest.mark.django_db

WORKER = "test-worker"


@pytest.fixture(autouse=True, scope="module")
def sisy_backend():
    with override_settings(TASKS=TASKS):
        yield task_backends["default"]


def drain(*channels: str) -> int:
    return Worker(list(channels or ["sisy.run_task"]), name=WORKER,
                  manage_connections=False).drain()


class Sent(NamedTuple):
    signal: str
    status: str
    handling: type | None  # the exception being handled when it was sent
    attempts: int
    result: object


@pytest.fixture
def received() -> list[Sent]:
    """Every framework signal sent during the test."""
    seen = []

    def make(name):
        def receiver(sender, task_result, **kwargs):
            assert sender is SisyBackend
            seen.append(Sent(name, task_result.status, sys.exc_info()[0], task_result.attempts,
                             task_result))
        return receiver

    receivers = {task_enqueued: make("enqueued"), task_started: make("started"),
                 task_finished: make("finished")}
    for signal, func in receivers.items():
        signal.connect(func)
    yield seen
    for signal, func in receivers.items():
        signal.disconnect(func)


def module_level(x):
    return x


def module_level_context(ctx, x):
    return x


module_lambda = lambda: 1  # noqa: E731


# -- the backend and its declared tasks ---------------------------------------------------------

def test_the_default_backend_is_sisy_and_says_what_it_supports():
    assert isinstance(task_backends["default"], SisyBackend)
    assert default_task_backend.alias == "default"
    assert (default_task_backend.supports_defer, default_task_backend.supports_get_result,
            default_task_backend.supports_async_task,
            default_task_backend.supports_priority) == (True, True, True, False)
    assert default_task_backend.queues == {"default", "emails"}


def test_declaring_a_task_registers_it_with_sisy_by_module_path():
    definition = registry.get("tests.djangotasks.tasks.add")
    assert isinstance(definition, DjangoTaskDefinition)
    assert definition.django_task == djtasks.add
    assert definition.func is djtasks.add.func


def test_a_task_declared_now_is_registered_at_once(isolated_registry):
    declared = task(module_level)
    assert registry.get("tests.test_backend.module_level").django_task == declared
    # .using() copies keep the declared task's registration
    declared.using(queue_name="emails")
    assert registry.get("tests.test_backend.module_level").django_task is declared


def test_a_name_taken_by_a_sisy_task_is_refused(isolated_registry):
    sisy.task(name="tests.test_backend.module_level")(module_level_context)
    with pytest.raises(DuplicateTaskName, match="already registered by "
                       "tests.test_backend.module_level_context"):
        task(module_level)


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: task(module_lambda), "is a lambda; a worker finds a task by its name"),
        (lambda: task(priority=10)(module_level),
         "Backend does not support setting priority of tasks."),
        (lambda: task(takes_context=True)(module_level_context),
         "Task takes context but does not have a first argument of 'context'."),
        (lambda: djtasks.add.using(queue_name="sms"), "Queue 'sms' is not valid for backend."),
        (lambda: djtasks.add.using(run_after=datetime.datetime(2030, 1, 1)),
         "run_after must be an aware datetime."),
    ],
)
def test_the_framework_rules_and_sisy_rules_refuse_bad_tasks(declare, message, isolated_registry):
    with pytest.raises(InvalidTaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        declare()


def test_nested_functions_are_refused():
    def nested():
        pass

    with pytest.raises(InvalidTaskError, match="Task function must be defined at a module level."):
        task(nested)


def test_a_queue_without_a_channel_is_refused_with_the_fix():
    tasks = {"default": {**TASKS["default"], "QUEUES": []}}  # the framework allows any queue
    with override_settings(TASKS=tasks):
        with pytest.raises(InvalidTaskError, match=(
                r"Queue 'sms' has no Sisy channel: add it to TASKS\['default'\]\['OPTIONS'\]"
                r"\['QUEUES'\], e.g. \{'sms': 'sisy.sms'\}, and run a worker for it "
                r"\(manage.py sisy_worker --channel sisy.sms\).")):
            djtasks.add.using(queue_name="sms")


def test_without_options_the_default_queue_runs_on_sisys_run_task_channel(sisy_settings):
    sisy_settings(RUN_TASK_CHANNEL="sisy.elsewhere")
    with override_settings(TASKS={"default": {"BACKEND": "sisy.backends.SisyBackend"}}):
        assert task_backends["default"].queues == {"default"}
        result = djtasks.add.enqueue(1)
    assert Run.objects.get(pk=result.id).channel == "sisy.elsewhere"


# -- enqueue --------------------------------------------------------------------------------

def test_enqueue_writes_a_queued_run_and_returns_a_ready_result():
    for declared in (djtasks.noop, djtasks.async_add):
        args, kwargs = ((1,), {"two": 3}) if declared is djtasks.noop else ((1,), {"b": 3})
        result = declared.enqueue(*args, **kwargs)
        assert result.status == TaskResultStatus.READY
        assert not result.is_finished
        assert (result.started_at, result.last_attempted_at, result.finished_at) == (None,) * 3
        assert result.enqueued_at is not None
        with pytest.raises(ValueError, match="Task has not finished yet"):
            result.return_value  # noqa: B018
        assert result.task == declared
        assert (result.args, result.kwargs) == ([1], dict(kwargs))
        assert (result.attempts, result.errors, result.backend) == (0, [], "default")
        run = Run.objects.get(pk=int(result.id))
        assert (run.status, run.task_name, run.channel) == (
            "queued", declared.module_path, "sisy.run_task")


def test_aenqueue_and_aget_result():
    result = async_to_sync(djtasks.noop.aenqueue)()
    assert result.status == TaskResultStatus.READY
    assert async_to_sync(default_task_backend.aget_result)(result.id) == result
    assert async_to_sync(djtasks.noop.aget_result)(result.id) == result


def test_a_queue_name_picks_the_sisy_channel():
    declared = djtasks.send_email.enqueue("ada@example.com")
    moved = djtasks.add.using(queue_name="emails").enqueue(1)
    assert {Run.objects.get(pk=r.id).channel for r in (declared, moved)} == {"sisy.emails"}
    assert default_task_backend.get_result(moved.id).task.queue_name == "emails"
    assert drain("sisy.run_task") == 0
    assert drain("sisy.emails") == 2
    assert default_task_backend.get_result(declared.id).return_value == "sent to ada@example.com"


def test_enqueue_waits_for_the_transaction_and_a_rollback_leaves_nothing(
        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        result = djtasks.add.enqueue(1)
    assert len(callbacks) == 1  # the wake-up is sent when the transaction commits
    with pytest.raises(RuntimeError), transaction.atomic():
        gone = djtasks.add.enqueue(2)
        raise RuntimeError
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(gone.id)
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.READY


# -- arguments: the framework's JSON rules, plus Sisy's validation where annotated ------------

def test_annotated_arguments_are_validated_in_the_caller():
    with pytest.raises(InvalidArguments, match=r"a: Input should be a valid integer.*\(got 'x'\)"):
        djtasks.add.enqueue("x")
    with pytest.raises(InvalidArguments, match="missing a required argument: 'a'"):
        djtasks.add.enqueue()
    assert Run.objects.count() == 0


def test_unannotated_arguments_are_normalised_like_the_framework_does():
    result = djtasks.echo.enqueue((1, (2, 3)))
    assert result.args == [[1, [2, 3]]]
    with pytest.raises(InvalidArguments, match=r"Argument 'value' of task "
                       r"'tests.djangotasks.tasks.echo' = .* \(object\) does not survive JSON"):
        djtasks.echo.enqueue(object())


def test_annotated_arguments_arrive_as_their_types():
    result = djtasks.days_until.enqueue(datetime.date(2030, 1, 3), today=datetime.date(2030, 1, 1))
    assert (result.args, result.kwargs) == (["2030-01-03"], {"today": "2030-01-01"})
    drain()
    result.refresh()
    assert result.return_value == 2


def test_defaults_are_not_stored_with_the_arguments():
    result = djtasks.add.enqueue(4)
    assert (result.args, result.kwargs) == ([4], {})
    drain()
    assert default_task_backend.get_result(result.id).return_value == 4


# -- defer --------------------------------------------------------------------------------

def test_run_after_defers_the_run():
    when = timezone.now() + timedelta(hours=1)
    result = djtasks.add.using(run_after=when).enqueue(1)
    assert result.task.run_after == when
    assert Run.objects.get(pk=result.id).not_before == when
    assert drain() == 0
    assert default_task_backend.get_result(result.id) == result
    Run.objects.filter(pk=result.id).update(not_before=timezone.now())
    assert drain() == 1
    result.refresh()
    assert result.return_value == 1


# -- get_result ----------------------------------------------------------------------------

def test_get_result_reads_the_same_result_back():
    result = default_task_backend.enqueue(djtasks.noop, [], {})
    assert default_task_backend.get_result(result.id) == result
    assert djtasks.noop.get_result(result.id) == result
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        djtasks.add.get_result(result.id)


@pytest.mark.parametrize("result_id", ["123456789", "abc", "", None])
def test_get_missing_result(result_id):
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(result_id)
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(default_task_backend.aget_result)(result_id)


def test_a_run_of_a_sisy_task_is_not_a_django_result():
    from tests.testapp import tasks as sisy_tasks

    run = sisy_tasks.add.delay(1)
    with pytest.raises(TaskResultDoesNotExist, match=(
            f"Run {run.pk} is a run of 'tests.testapp.tasks.add', which is not a Django task")):
        default_task_backend.get_result(str(run.pk))


def test_refresh_after_the_worker_ran_it():
    result = djtasks.add.enqueue(2, 3)
    assert drain() == 1
    assert result.status == TaskResultStatus.READY  # a result is a snapshot
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.is_finished and result.return_value == 5
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert (result.attempts, result.worker_ids, result.errors) == (1, [WORKER], [])
    async_to_sync(result.arefresh)()
    assert result.return_value == 5


def test_a_running_run_is_running():
    result = djtasks.add.enqueue(1)
    Run.objects.filter(pk=result.id).update(status="running", started_at=timezone.now(),
                                            worker="w1")
    result.refresh()
    assert (result.status, result.worker_ids, result.finished_at) == (
        TaskResultStatus.RUNNING, ["w1"], None)
    assert result.started_at is not None


def test_a_cancelled_run_failed_to_start():
    result = djtasks.add.enqueue(1)
    Run.objects.filter(pk=result.id).update(status="cancelled", finished_at=timezone.now(),
                                            error="Cancelled in the admin.")
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is sisy.exceptions.RunCancelled
    assert result.errors[0].traceback == "sisy.exceptions.RunCancelled: Cancelled in the admin.\n"


# -- failures ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("declared", "exception", "message"),
    [
        ("fail", ValueError, "This task failed due to ValueError"),
        ("exit_task", SystemExit, "This task failed due to SystemExit"),
    ],
)
def test_failures_record_the_exception_class_and_traceback(declared, exception, message):
    result = getattr(djtasks, declared).enqueue()
    drain()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert result.is_finished
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.errors[0].exception_class is exception
    assert result.errors[0].exception_class_path == f"builtins.{exception.__name__}"
    assert result.errors[0].traceback.startswith("Traceback (most recent call last):\n")
    assert result.errors[0].traceback.endswith(f"{exception.__name__}: {message}\n")
    assert (result.attempts, result.args, result.kwargs) == (1, [], {})


def test_a_return_value_that_is_not_json_fails_the_task():
    result = djtasks.complex_return.enqueue()
    drain()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError
    assert "which cannot be stored as JSON" in result.errors[0].traceback


def test_retries_are_attempts_of_one_result(sisy_settings, received):
    sisy_settings(TASKS={"tests.djangotasks.tasks.fail": {"retries": 1, "retry_backoff": 60}})
    result = djtasks.fail.enqueue()
    drain()
    result.refresh()
    # "READY: the Task ... is ready to be executed again."
    assert (result.status, result.attempts, len(result.errors)) == (TaskResultStatus.READY, 1, 1)
    assert [sent.signal for sent in received] == ["enqueued", "started"]
    Run.objects.filter(retry_of=result.id).update(not_before=timezone.now())
    drain()
    result.refresh()
    assert (result.status, result.attempts, len(result.errors)) == (TaskResultStatus.FAILED, 2, 2)
    assert result.worker_ids == [WORKER, WORKER]
    assert result.last_attempted_at > result.started_at
    assert [sent.signal for sent in received] == ["enqueued", "started", "started", "finished"]
    assert [sent.attempts for sent in received] == [0, 1, 2, 2]


# -- async tasks and context -----------------------------------------------------------------

def test_async_tasks_run():
    result = djtasks.async_add.enqueue(2, 3)
    drain()
    result.refresh()
    assert result.return_value == 5


def test_takes_context_gets_djangos_task_context():
    result = djtasks.with_context.enqueue("ctx")
    drain()
    result.refresh()
    assert result.return_value == {"id": result.id, "attempt": 1, "status": "RUNNING",
                                   "workers": [WORKER]}
    assert Mark.objects.filter(token="ctx").count() == 1
    assert registry.get("tests.djangotasks.tasks.with_context").arguments.signature.parameters \
        .keys() == {"token"}


def test_async_takes_context():
    result = djtasks.async_with_context.enqueue()
    drain()
    result.refresh()
    assert result.return_value == result.id


# -- signals -------------------------------------------------------------------------------

def test_signals_are_sent_at_enqueue_start_and_finish(received):
    result = djtasks.add.enqueue(1)
    assert [(sent.signal, sent.status) for sent in received] == [
        ("enqueued", TaskResultStatus.READY)]
    drain()
    assert [sent[:3] for sent in received] == [
        ("enqueued", TaskResultStatus.READY, None),
        ("started", TaskResultStatus.RUNNING, None),
        ("finished", TaskResultStatus.SUCCESSFUL, None),
    ]
    assert {sent.result.id for sent in received} == {result.id}
    assert received[-1].result.return_value == 1


def test_task_finished_for_a_failure_is_sent_while_the_exception_is_handled(received, caplog):
    result = djtasks.fail.enqueue()
    with caplog.at_level("DEBUG", logger=compat.TASKS_MODULE):  # the framework's own logger
        drain()
    assert [sent[:3] for sent in received] == [
        ("enqueued", TaskResultStatus.READY, None),
        ("started", TaskResultStatus.RUNNING, None),
        ("finished", TaskResultStatus.FAILED, ValueError),
    ]
    [logged] = [r for r in caplog.records if r.name == compat.TASKS_MODULE
                and "state=FAILED" in r.getMessage()]
    assert result.id in logged.getMessage()
    assert logged.exc_info[0] is ValueError


# -- SISY["EAGER"] ---------------------------------------------------------------------------

def test_eager_mode_returns_a_finished_result(sisy_settings):
    sisy_settings(EAGER=True)
    result = djtasks.add.enqueue(2, 2)
    assert (result.status, result.return_value, result.worker_ids) == (
        TaskResultStatus.SUCCESSFUL, 4, ["eager"])


# -- checks --------------------------------------------------------------------------------

def test_a_good_configuration_passes_the_checks(sisy_backend):
    assert sisy_backend.check() == []


def check_messages(tasks_setting, **overrides):
    with override_settings(TASKS=tasks_setting, **overrides):
        return [(m.id, m.msg) for m in task_backends["default"].check()]


def test_sisy_missing_from_installed_apps_is_an_error():
    assert check_messages(TASKS, INSTALLED_APPS=["django.contrib.contenttypes"]) == [(
        "sisy.E020",
        "TASKS['default'] uses sisy.backends.SisyBackend, but 'sisy' is not in INSTALLED_APPS.",
    )]


def test_a_queue_without_a_channel_is_an_error():
    tasks = {"default": {**TASKS["default"], "QUEUES": ["default", "emails", "sms"]}}
    assert check_messages(tasks) == [(
        "sisy.E021",
        "Queue 'sms' of TASKS['default'] has no Sisy channel, so its tasks cannot be enqueued.",
    )]


def test_bad_options_are_errors():
    tasks = {"default": {"BACKEND": "sisy.backends.SisyBackend",
                         "OPTIONS": {"QUEUES": {"default": "no spaces!"}, "PRIORITY": 1}}}
    assert check_messages(tasks) == [
        ("sisy.E022", "TASKS['default']['OPTIONS'] has the key(s) 'PRIORITY', which "
                      "SisyBackend does not know."),
        ("sisy.E022", "TASKS['default']['OPTIONS']['QUEUES']['default'] = 'no spaces!' is "
                      "not a Sisy channel name."),
    ]
    tasks["default"]["OPTIONS"] = {"QUEUES": ["default"]}
    assert check_messages(tasks) == [
        ("sisy.E022", "TASKS['default']['OPTIONS']['QUEUES'] must be a dict of queue name -> "
                      "Sisy channel, not list."),
    ]
