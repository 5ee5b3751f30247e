"""Sisy: background work for Django over Channels.

Importing ``sisy`` never reads Django settings, so ``tasks.py`` modules and
settings files can import it freely.
"""

from importlib.metadata import PackageNotFoundError, version

from sisy.base import TaskDefinition, periodic, task
from sisy.exceptions import (
    ConfigurationError,
    DuplicateTaskName,
    InvalidArguments,
    InvalidSchedule,
    InvalidTaskDefinition,
    RunCancelled,
    RunFailed,
    RunTimeout,
    SisyError,
    UnknownTask,
)
from sisy.registry import registry

try:
    __version__ = version("sisy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    # decorators
    "task",
    "periodic",
    "TaskDefinition",
    "registry",
    # exceptions
    "SisyError",
    "ConfigurationError",
    "DuplicateTaskName",
    "InvalidArguments",
    "InvalidSchedule",
    "InvalidTaskDefinition",
    "RunCancelled",
    "RunFailed",
    "RunTimeout",
    "UnknownTask",
]
