"""Task definitions and the ``@sisy.task`` / ``@sisy.periodic`` decorators."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, get_args, overload

from sisy.conf import CatchUp
from sisy.exceptions import InvalidSchedule, InvalidTaskDefinition
from sisy.registry import registry
from sisy.schedules import get_timezone, validate_schedule

if TYPE_CHECKING:
    from sisy.models import Run

__all__ = ["TaskDefinition", "task", "periodic"]

P = ParamSpec("P")
R = TypeVar("R")

MAX_NAME_LENGTH = 200


@dataclasses.dataclass(frozen=True, eq=False)
class TaskDefinition(Generic[P, R]):
    """A registered task: the function plus its options.

    Calling it runs the function inline; :meth:`delay` runs it on a worker.
    """

    func: Callable[P, R]
    name: str
    schedule: str | None = None
    enabled: bool = True
    allow_overlap: bool = True
    timezone: str | None = None
    takes_context: bool = False
    retries: int = 0
    retry_backoff: float = 1.0
    catch_up: CatchUp = "latest"
    start_deadline: timedelta | None = None
    channel: str | None = None
    run_after: datetime | timedelta | None = None

    def __post_init__(self):
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            object.__setattr__(self, attr, getattr(self.func, attr, None))
        object.__setattr__(self, "__wrapped__", self.func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.takes_context:
            from sisy.context import TaskContext

            return self.func(TaskContext.inline(self), *args, **kwargs)
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        kind = "periodic" if self.schedule else "task"
        return f"<sisy {kind} {self.name!r}>"

    @property
    def module_path(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    @functools.cached_property
    def arguments(self):
        """The :class:`~sisy.arguments.ArgumentSpec` built from the function's signature."""
        from sisy.arguments import ArgumentSpec

        return ArgumentSpec(self.func, task_name=self.name, skip_first=self.takes_context)

    def using(self, *, run_after: datetime | timedelta | None = None) -> TaskDefinition[P, R]:
        """Return a copy whose :meth:`delay` uses other options (``run_after``)."""
        if run_after is not None and not isinstance(run_after, datetime | timedelta):
            raise InvalidTaskDefinition(
                f"run_after for task '{self.name}' must be a datetime or a timedelta, "
                f"not {type(run_after).__name__}."
            )
        if isinstance(run_after, datetime) and run_after.tzinfo is None:
            raise InvalidTaskDefinition(
                f"run_after for task '{self.name}' must be timezone-aware "
                "(use django.utils.timezone.now() + timedelta(...))."
            )
        copy = dataclasses.replace(self, run_after=run_after)
        if "arguments" in self.__dict__:  # share the argument model already built
            copy.__dict__["arguments"] = self.__dict__["arguments"]
        return copy

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Run:
        """Validate the arguments and queue one run on a worker; return its ``Run``."""
        from sisy.dispatch import enqueue

        return enqueue(self, args, kwargs)


def _check_function(func: object) -> None:
    what = getattr(func, "__qualname__", repr(func))
    if inspect.isclass(func):
        raise InvalidTaskDefinition(
            f"Sisy cannot register the class {what}: decorate a function. "
            "Put the work in a module-level function (it may create the object)."
        )
    if isinstance(func, TaskDefinition):
        raise InvalidTaskDefinition(
            f"{func.name} is already a Sisy task; apply one Sisy decorator per function."
        )
    if not inspect.isfunction(func):
        raise InvalidTaskDefinition(
            f"Sisy can only register functions defined with def, not {func!r} "
            f"({type(func).__name__})."
        )
    if func.__name__ == "<lambda>":
        raise InvalidTaskDefinition(
            f"Sisy cannot register a lambda (in {func.__module__}): a worker finds a task "
            "by name in its module. Define it with def at module level."
        )
    if "<locals>" in func.__qualname__:
        raise InvalidTaskDefinition(
            f"Sisy cannot register the nested function {func.__module__}.{func.__qualname__}: "
            "a worker imports tasks.py and must find it there. Move it to module level."
        )


def _check_options(name, options: dict[str, Any]) -> None:
    if options["timezone"] is not None:
        if not isinstance(options["timezone"], str):
            raise InvalidTaskDefinition(
                f"timezone of task '{name}' must be an IANA name such as 'Europe/Berlin'."
            )
        try:
            get_timezone(options["timezone"])
        except InvalidSchedule as exc:
            raise InvalidTaskDefinition(f"timezone of task '{name}': {exc}") from None
    retries = options["retries"]
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise InvalidTaskDefinition(
            f"retries of task '{name}' must be a whole number >= 0, not {retries!r}."
        )
    backoff = options["retry_backoff"]
    if not isinstance(backoff, int | float) or isinstance(backoff, bool) or backoff < 0:
        raise InvalidTaskDefinition(
            f"retry_backoff of task '{name}' must be a number of seconds >= 0, not {backoff!r}."
        )
    if options["catch_up"] not in get_args(CatchUp):
        raise InvalidTaskDefinition(
            f"catch_up of task '{name}' must be one of {', '.join(get_args(CatchUp))}, "
            f"not {options['catch_up']!r}."
        )
    deadline = options["start_deadline"]
    if deadline is not None and not isinstance(deadline, timedelta):
        raise InvalidTaskDefinition(
            f"start_deadline of task '{name}' must be a timedelta or None, not {deadline!r}."
        )
    for flag in ("enabled", "allow_overlap", "takes_context"):
        if not isinstance(options[flag], bool):
            raise InvalidTaskDefinition(
                f"{flag} of task '{name}' must be True or False, not {options[flag]!r}."
            )
    channel = options["channel"]
    if channel is not None and not isinstance(channel, str):
        raise InvalidTaskDefinition(f"channel of task '{name}' must be a string, not {channel!r}.")


def _build(func, *, name, schedule, periodic=False, **options) -> TaskDefinition:
    _check_function(func)
    if name is None:
        name = f"{func.__module__}.{func.__qualname__}"
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidTaskDefinition(
            f"The name of task {func.__module__}.{func.__qualname__} must be a non-empty "
            f"string of at most {MAX_NAME_LENGTH} characters, not {name!r}."
        )
    if periodic:  # even None: @sisy.periodic(None) must not become a one-shot task
        schedule = validate_schedule(schedule, task_name=name)
    _check_options(name, options)
    if options["takes_context"] and not inspect.signature(func).parameters:
        raise InvalidTaskDefinition(
            f"Task '{name}' has takes_context=True, so its function needs a first "
            "parameter for the context: def my_task(context, ...)."
        )
    return registry.register(TaskDefinition(func=func, name=name, schedule=schedule, **options))


@overload
def task(func: Callable[P, R], /) -> TaskDefinition[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    enabled: bool = True,
    allow_overlap: bool = True,
    timezone: str | None = None,
    takes_context: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    channel: str | None = None,
) -> Callable[[Callable[P, R]], TaskDefinition[P, R]]: ...
def task(
    func=None,
    /,
    *,
    name=None,
    enabled=True,
    allow_overlap=True,
    timezone=None,
    takes_context=False,
    retries=0,
    retry_backoff=1.0,
    channel=None,
):
    """Register a function as a task that ``.delay()`` runs on a worker.

    Use it bare (``@sisy.task``) or with options (``@sisy.task(retries=3)``).
    """

    def decorator(f):
        return _build(
            f,
            name=name,
            schedule=None,
            enabled=enabled,
            allow_overlap=allow_overlap,
            timezone=timezone,
            takes_context=takes_context,
            retries=retries,
            retry_backoff=retry_backoff,
            catch_up="latest",
            start_deadline=None,
            channel=channel,
        )

    if isinstance(func, str):
        raise InvalidTaskDefinition(
            f"@sisy.task takes the task name as a keyword: write @sisy.task(name={func!r})."
        )
    if func is not None:
        return decorator(func)
    return decorator


def periodic(
    schedule: str,
    *,
    name: str | None = None,
    enabled: bool = True,
    allow_overlap: bool = False,
    timezone: str | None = None,
    takes_context: bool = False,
    retries: int = 0,
    retry_backoff: float = 1.0,
    catch_up: CatchUp = "latest",
    start_deadline: timedelta | None = None,
    channel: str | None = None,
) -> Callable[[Callable[P, R]], TaskDefinition[P, R]]:
    """Register a function that the scheduler fires on a cron ``schedule``.

    ``allow_overlap`` defaults to False: a slot that comes due while the previous
    run is still running is recorded as ``skipped``.
    """
    if callable(schedule) and not isinstance(schedule, str):
        raise InvalidTaskDefinition(
            "@sisy.periodic needs a schedule: write @sisy.periodic(\"*/5 * * * *\"), "
            "not a bare @sisy.periodic."
        )
    if name is not None:
        # Refuse at once when the message can name the task; otherwise _build() checks
        # the schedule under the default name, which needs the function.
        validate_schedule(schedule, task_name=name)

    def decorator(f):
        return _build(
            f,
            name=name,
            schedule=schedule,
            periodic=True,
            enabled=enabled,
            allow_overlap=allow_overlap,
            timezone=timezone,
            takes_context=takes_context,
            retries=retries,
            retry_backoff=retry_backoff,
            catch_up=catch_up,
            start_deadline=start_deadline,
            channel=channel,
        )

    return decorator
