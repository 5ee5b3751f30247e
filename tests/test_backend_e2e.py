"""SisyBackend end to end: Django tasks enqueued here, run by real ``sisy_worker`` processes.

The workers use ``tests.settings_tasks`` on top of this session's settings, so
they autodiscover ``tests/djangotasks/tasks.py`` and find each Django task by
its registered name.
"""

from __future__ import annotations

import os
import socket

import pytest
from django.test import override_settings

try:
    from sisy.compat import TaskResultStatus
except ImportError as exc:  # Django 5.2 without the backport: pip install "sisy[django-tasks]"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        raise
    pytest.skip(str(exc), allow_module_level=True)

from tests.helpers import wait_for
from tests.settings_tasks import TASKS
from tests.test_worker_e2e import Processes

with override_settings(TASKS=TASKS):
    from tests.djangotasks import tasks as djtasks

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("empty_redis_channels")]

WORKER_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.settings_tasks",
    "SISY_TASKS_BASE_SETTINGS": os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
}


@pytest.fixture(autouse=True)
def sisy_backend():
    with override_settings(TASKS=TASKS):
        yield


@pytest.fixture
def worker():
    """Start ``sisy_worker`` processes with the Django tasks app installed."""
    started = Processes()
    yield lambda *args: started.start("sisy_worker", *args, env=WORKER_ENV)
    started.stop_all()


def finished(result) -> bool:
    result.refresh()
    return result.is_finished


def test_enqueue_runs_on_a_worker_and_the_result_comes_back(worker):
    worker()
    result = djtasks.add.enqueue(2, 3)
    wait_for(lambda: finished(result), 30, "the worker to run add(2, 3)")
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1
    assert result.worker_ids[0].startswith(f"{socket.gethostname()}:")
    assert result.enqueued_at <= result.started_at <= result.finished_at


def test_a_failure_comes_back_with_its_class_and_traceback(worker):
    worker()
    result = djtasks.fail.enqueue("boom from a worker")
    wait_for(lambda: finished(result), 30, "the worker to run fail()")
    assert result.status == TaskResultStatus.FAILED
    [error] = result.errors
    assert error.exception_class is ValueError
    assert error.traceback.startswith("Traceback (most recent call last):\n")
    assert error.traceback.endswith("ValueError: boom from a worker\n")
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018


def test_context_async_and_queues_on_their_own_workers(worker):
    worker()
    worker("--channel", "sisy.emails")
    results = [
        djtasks.with_context.enqueue("e2e-context"),
        djtasks.async_add.enqueue(20, 22),
        djtasks.send_email.enqueue("ada@example.com"),
    ]
    wait_for(lambda: all(finished(r) for r in results), 30, "three tasks on two workers")
    context, async_add, email = results
    assert context.return_value["id"] == context.id
    assert context.return_value["attempt"] == 1
    assert async_add.return_value == 42
    assert email.return_value == "sent to ada@example.com"
    assert email.worker_ids != async_add.worker_ids  # the emails queue has its own worker
