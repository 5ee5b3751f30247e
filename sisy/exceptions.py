"""Exceptions raised by Sisy.

Every exception Sisy raises on purpose derives from :class:`SisyError`, so
``except sisy.SisyError`` catches them all. Each message names the bad value
and says how to fix it.
"""

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "SisyError",
    "InvalidSchedule",
    "InvalidTaskDefinition",
    "DuplicateTaskName",
    "ConfigurationError",
    "InvalidArguments",
    "UnknownTask",
    "RunFailed",
    "RunCancelled",
    "RunTimeout",
]


class SisyError(Exception):
    """Base class of every error Sisy raises on purpose."""


class InvalidSchedule(SisyError, ValueError):
    """A cron schedule could not be parsed, or never fires."""


class InvalidTaskDefinition(SisyError, TypeError):
    """A decorator was put on something that cannot be a task, or with bad options."""


class DuplicateTaskName(SisyError, ValueError):
    """Two different functions were registered under one task name."""


class ConfigurationError(SisyError, ImproperlyConfigured):
    """The ``SISY`` setting (or one of the legacy ``SISY_*`` settings) is invalid."""


class InvalidArguments(SisyError, TypeError):
    """Arguments given to ``.delay()`` do not fit the task function's signature."""


class UnknownTask(SisyError, LookupError):
    """No task is registered under the given name."""


class RunFailed(SisyError):
    """A run ended ``failed``; raised by :meth:`sisy.models.Run.wait`.

    ``error_type`` is the dotted name of the remote exception class and
    ``remote_traceback`` the traceback recorded by the worker.
    """

    def __init__(self, message, *, run=None, error_type="", remote_traceback=""):
        super().__init__(message)
        self.run = run
        self.error_type = error_type
        self.remote_traceback = remote_traceback

    def __str__(self):
        text = super().__str__()
        if self.remote_traceback:
            return f"{text}\n\nRemote traceback:\n{self.remote_traceback}"
        return text


class RunCancelled(SisyError):
    """A run ended ``cancelled`` or ``skipped``; raised by :meth:`sisy.models.Run.wait`."""


class RunTimeout(SisyError, TimeoutError):
    """:meth:`sisy.models.Run.wait` gave up before the run finished."""
