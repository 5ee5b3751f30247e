"""One import path for Django's Tasks framework, on every Django that Sisy supports.

Django 6.0 ships it as ``django.tasks``; on Django 5.2 it comes from the
``django-tasks`` backport (``pip install "sisy[django-tasks]"``) as
``django_tasks``. The two differ in small ways (``InvalidTask`` is
``InvalidTaskError`` in the backport, ``normalize_json`` lives elsewhere);
Sisy imports the framework from here only, under the backport's names.
When both are installed, ``django.tasks`` wins: it is what ``TASKS`` and
``@django.tasks.task`` use on Django 6.
"""

from __future__ import annotations

try:
    from django.tasks import (
        DEFAULT_TASK_QUEUE_NAME,
        Task,
        TaskContext,
        TaskResult,
        TaskResultStatus,
        task_backends,
    )
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    TASKS_MODULE = "django.tasks"
except ImportError:  # Django 5.2: the backport
    try:
        from django_tasks import (
            DEFAULT_TASK_QUEUE_NAME,
            TaskContext,
            TaskResult,
            TaskResultStatus,
            task_backends,
        )
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json
    except ImportError as exc:
        raise ImportError(
            "Sisy's backend for Django's Tasks framework needs django.tasks (Django 6.0 or "
            "later) or, on Django 5.2, the django-tasks backport: "
            "pip install \"sisy[django-tasks]\"."
        ) from exc

    TASKS_MODULE = "django_tasks"

__all__ = [
    "TASKS_MODULE",
    # the framework's classes and constants
    "BaseTaskBackend",
    "DEFAULT_TASK_QUEUE_NAME",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultStatus",
    "task_backends",
    "normalize_json",
    # its exceptions, under the backport's names
    "InvalidTaskError",
    "TaskResultDoesNotExist",
    # its signals
    "task_enqueued",
    "task_started",
    "task_finished",
]
