"""Test settings with Django's Tasks framework on Sisy: ``TASKS`` and ``tests.djangotasks``.

They extend the settings module named by ``SISY_TASKS_BASE_SETTINGS``
(``tests.settings``, or ``tests.settings_pg``), so worker subprocesses of the
backend tests use the same database and channel layer as the test session.
The test session itself keeps its own settings and overrides ``TASKS`` for
the backend tests only (``tests/test_backend.py``).
"""

import importlib.util
import os
from importlib import import_module

_base = import_module(os.environ.get("SISY_TASKS_BASE_SETTINGS", "tests.settings"))
globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

TASKS = {
    "default": {
        "BACKEND": "sisy.backends.SisyBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"QUEUES": {"default": "sisy.run_task", "emails": "sisy.emails"}},
    },
}

INSTALLED_APPS = [*INSTALLED_APPS, "tests.djangotasks"]  # noqa: F821 (from the base)
if importlib.util.find_spec("django.tasks") is None:  # Django 5.2: the backport is an app
    INSTALLED_APPS.append("django_tasks")
