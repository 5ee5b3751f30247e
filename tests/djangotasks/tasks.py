"""Tasks declared with Django's ``@task`` decorator, for ``tests/test_backend*.py``.

``TASKS["default"]`` is ``SisyBackend``, which validates each one
and registers it with Sisy's registry under its ``module_path``.
"""

from __future__ import annotations

import datetime

from sisy.compat import TASKS_MODULE

if TASKS_MODULE == "django.tasks":
    from django.tasks import task
else:  # Django 5.2 and the backport
    from django_tasks import task

from tests.testapp.models import Mark


@task
def noop(*args, **kwargs) -> None:
    return None


@task
def add(a: int, b: int = 0) -> int:
    return a + b


@task
def echo(value):
    return value


@task
def days_until(when: datetime.date, today: datetime.date) -> int:
    return (when - today).days


@task
async def async_add(a: int, b: int) -> int:
    return a + b


@task
def fail(message: str = "This task failed due to ValueError") -> None:
    raise ValueError(message)


@task
def exit_task() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task
def complex_return() -> object:
    return object()


@task(takes_context=True)
def with_context(context, token: str) -> dict:
    Mark.objects.create(token=token)
    return {"id": context.task_result.id, "attempt": context.attempt,
            "status": str(context.task_result.status),
            "workers": context.task_result.worker_ids}


@task(takes_context=True)
async def async_with_context(context) -> str:
    return context.task_result.id


@task(queue_name="emails")
def send_email(address: str) -> str:
    return f"sent to {address}"


@task
def mark(token: str) -> str:
    Mark.objects.create(token=token)
    return token
