"""The per-process registry of task definitions.

It is filled when Django starts: ``SisyConfig.ready()`` imports every
installed app's ``tasks`` module, whose decorators register their functions
here. Workers look names up here and run nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sisy.exceptions import DuplicateTaskName, UnknownTask

if TYPE_CHECKING:
    from sisy.base import TaskDefinition

__all__ = ["Registry", "registry", "autodiscover"]


def _where(func) -> str:
    return f"{func.__module__}.{func.__qualname__}"


class Registry:
    """Task definitions by name; refuses one name for two different functions."""

    def __init__(self):
        self._tasks: dict[str, TaskDefinition] = {}

    def register(self, definition: TaskDefinition) -> TaskDefinition:
        existing = self._tasks.get(definition.name)
        if existing is not None and _where(existing.func) != _where(definition.func):
            raise DuplicateTaskName(
                f"Task name '{definition.name}' is already registered by "
                f"{_where(existing.func)}; {_where(definition.func)} cannot use it too. "
                f"Give one of them another name, e.g. @sisy.task(name=\"{definition.name}_2\")."
            )
        # The same function registered again (its module was re-imported) replaces itself.
        self._tasks[definition.name] = definition
        return definition

    def unregister(self, name: str) -> None:
        self._tasks.pop(name, None)

    def get(self, name: str) -> TaskDefinition:
        """Return the definition registered as ``name`` or raise ``UnknownTask``."""
        try:
            return self._tasks[name]
        except (KeyError, TypeError):
            raise UnknownTask(
                f"No task is registered as {name!r}. Registered tasks come from the "
                "@sisy.task and @sisy.periodic decorators in installed apps' tasks.py."
            ) from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._tasks

    def __iter__(self) -> Iterator[TaskDefinition]:
        return iter(list(self._tasks.values()))

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def periodic(self) -> list[TaskDefinition]:
        """The definitions that carry a schedule (they become ``Task`` rows)."""
        return [d for d in self._tasks.values() if d.schedule is not None]

    @contextlib.contextmanager
    def isolated(self):
        """Run a block with an empty registry, then restore the previous contents (for tests)."""
        saved = self._tasks
        self._tasks = {}
        try:
            yield self
        finally:
            self._tasks = saved


#: The registry that the decorators fill and workers read.
registry = Registry()


def autodiscover() -> None:
    """Import the ``tasks`` module of every installed app."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")
