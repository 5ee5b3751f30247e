"""Sisy as a backend for Django's Tasks framework (``django.tasks``, or the backport).

.. code-block:: python

    TASKS = {
        "default": {
            "BACKEND": "sisy.backends.SisyBackend",
            "OPTIONS": {"QUEUES": {"default": "sisy.run_task", "emails": "sisy.emails"}},
        }
    }

Each queue maps onto a Sisy channel, and ``sisy_worker --channel <channel>``
runs what is enqueued on it. ``enqueue()`` writes a queued ``Run`` (the
wake-up goes out when the transaction commits) and returns a ``TaskResult``
whose id is the ``Run``'s primary key; ``get_result()`` reads that run and its
retries back.

A Django task is registered with Sisy's registry under its ``module_path``
when it is declared (the framework validates every task with its backend), so
workers find it by name, as they find ``@sisy.task`` functions, and import
nothing a message names.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.core import checks
from django.dispatch import receiver

from sisy import signals
from sisy.base import TaskDefinition
from sisy.compat import (
    DEFAULT_TASK_QUEUE_NAME,
    BaseTaskBackend,
    InvalidTaskError,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from sisy.conf import get_settings
from sisy.models import Run
from sisy.registry import registry

__all__ = ["SisyBackend", "DjangoTaskDefinition"]

#: A channel name that ``sisy_worker --channel`` accepts and ``Run.channel`` can hold.
CHANNEL_NAME = re.compile(r"^[a-zA-Z\d\-_.]{1,100}$")

OPTIONS = frozenset({"QUEUES"})

STATUSES = {
    Run.Status.QUEUED: TaskResultStatus.READY,
    Run.Status.RUNNING: TaskResultStatus.RUNNING,
    Run.Status.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Run.Status.FAILED: TaskResultStatus.FAILED,
    # "FAILED: the Task raised an exception during execution, or was unable to start."
    Run.Status.SKIPPED: TaskResultStatus.FAILED,
    Run.Status.CANCELLED: TaskResultStatus.FAILED,
}

UNSETTLED = (Run.Status.QUEUED, Run.Status.RUNNING)


@dataclasses.dataclass(frozen=True, eq=False)
class DjangoTaskDefinition(TaskDefinition):
    """A Django ``Task`` registered with Sisy, so that workers find it by name.

    ``django_task`` is the ``Task`` as declared; ``func`` is its function, or,
    for ``takes_context=True``, a wrapper that hands the function Django's
    ``TaskContext`` instead of Sisy's.
    """

    django_task: Any = None


def _with_django_context(func):
    """Wrap ``func(context, ...)`` so that it gets Django's context, built from Sisy's."""
    if inspect.iscoroutinefunction(func):
        async def call(context, *args, **kwargs):
            django_context = await sync_to_async(_django_context)(context)
            return await func(django_context, *args, **kwargs)
    else:
        def call(context, *args, **kwargs):
            return func(_django_context(context), *args, **kwargs)
    # The wrapper keeps the function's module and qualname (the registry compares them)
    # and its signature (argument validation skips the context parameter).
    return functools.update_wrapper(call, func)


def _django_context(context) -> TaskContext:
    definition, run = context.definition, context.run
    backend = _backend_for(definition)
    return TaskContext(task_result=backend.result_for_run(run, definition))


def register(task: Task) -> DjangoTaskDefinition:
    """Register ``task`` with Sisy under its ``module_path``, once; return its definition.

    ``task.using(...)`` copies share their function with the declared task and
    find its registration; a re-imported module replaces it.
    """
    name = task.module_path
    if name in registry:
        existing = registry.get(name)
        if isinstance(existing, DjangoTaskDefinition) and existing.django_task.func is task.func:
            return existing
    func = _with_django_context(task.func) if task.takes_context else task.func
    definition = registry.register(DjangoTaskDefinition(
        func=func, name=name, takes_context=task.takes_context, django_task=task,
    ))
    # Only this task's run_finished is the framework's business: a receiver for every
    # sender would make every worker wait for each outcome write (see sisy.outcomes).
    signals.run_finished.connect(_send_task_finished, sender=definition,
                                 dispatch_uid="sisy.backends.task_finished")
    return definition


def _backend_for(definition: DjangoTaskDefinition) -> SisyBackend:
    """The Sisy backend a task is declared with (else the first Sisy backend in ``TASKS``)."""
    backend = task_backends[definition.django_task.backend]
    if isinstance(backend, SisyBackend):
        return backend
    for backend in task_backends.all():
        if isinstance(backend, SisyBackend):
            return backend
    raise InvalidTaskError(
        f"Task {definition.name} is registered with Sisy but no TASKS backend is "
        "sisy.backends.SisyBackend."
    )


def _normalize_unannotated(spec, args, kwargs) -> tuple[list, dict]:
    """Normalise arguments without annotations the framework's way (tuples become lists).

    Annotated arguments are left to Sisy's pydantic validation; a value the
    framework cannot normalise is left as it is, for Sisy's clearer message.
    """
    params = spec.signature.parameters
    kinds = inspect.Parameter
    positional = [p for p in params.values()
                  if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    var_args = next((p for p in params.values() if p.kind is kinds.VAR_POSITIONAL), None)
    var_kwargs = next((p for p in params.values() if p.kind is kinds.VAR_KEYWORD), None)

    def normalize(param, value):
        if param is None or param.name in spec.annotated:
            return value
        try:
            return normalize_json(value)
        except (TypeError, ValueError):
            return value

    return (
        [normalize(positional[i] if i < len(positional) else var_args, value)
         for i, value in enumerate(args)],
        {name: normalize(params.get(name, var_kwargs), value) for name, value in kwargs.items()},
    )


def _attempts(run: Run) -> list[Run]:
    """The runs of one result, oldest first: the first run, its retries, the latest last."""
    attempts = [run]
    while attempts[0].retry_of_id is not None:
        attempts.insert(0, attempts[0].retry_of)
    while attempts[-1].status == Run.Status.FAILED:
        retry = Run.objects.filter(retry_of=attempts[-1]).order_by("pk").first()
        if retry is None:
            break
        attempts.append(retry)
    return attempts


def _task_error(run: Run) -> TaskError:
    """The framework's ``TaskError`` for a run that failed, was skipped or cancelled."""
    if run.status == Run.Status.FAILED:
        # Sisy stores "<type>: <message>\n\n<traceback>"; the framework wants the traceback.
        _, marker, rest = run.error.partition("\n\nTraceback (most recent call last):\n")
        path = run.error_type if "." in run.error_type else f"builtins.{run.error_type}"
        return TaskError(exception_class_path=path,
                         traceback=marker.lstrip("\n") + rest if marker else run.error)
    reason = run.error or f"Run {run.pk} was {run.status}."
    return TaskError(exception_class_path="sisy.exceptions.RunCancelled",
                     traceback=f"sisy.exceptions.RunCancelled: {reason}\n")


class SisyBackend(BaseTaskBackend):
    """Runs Django tasks on Sisy's workers and reads their results from Sisy's ``Run`` table.

    ``OPTIONS["QUEUES"]`` maps each queue name onto a Sisy channel (``None``:
    ``SISY["RUN_TASK_CHANNEL"]``); the default is ``{"default": None}``. The
    backend's ``QUEUES`` defaults to the mapped names.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    # Workers take runs in the order they become due, so priority is not honoured.
    supports_priority = False

    def __init__(self, alias: str, params: dict):
        super().__init__(alias, params)
        mapping = self.options.get("QUEUES", {DEFAULT_TASK_QUEUE_NAME: None})
        self.channels: dict[str, str | None] = dict(mapping) if isinstance(mapping, dict) else {}
        if "QUEUES" not in params:
            self.queues = set(self.channels)

    # -- declaring and enqueueing -----------------------------------------------------------
    def channel_for(self, queue_name: str) -> str:
        """The Sisy channel that runs ``queue_name``; ``InvalidTaskError`` if it has none."""
        if queue_name not in self.channels:
            example = {queue_name: f"sisy.{queue_name}"}
            raise InvalidTaskError(
                f"Queue '{queue_name}' has no Sisy channel: add it to "
                f"TASKS[{self.alias!r}]['OPTIONS']['QUEUES'], e.g. {example!r}, and run "
                f"a worker for it (manage.py sisy_worker --channel sisy.{queue_name})."
            )
        return self.channels[queue_name] or get_settings().RUN_TASK_CHANNEL

    def validate_task(self, task: Task) -> None:
        """The framework's rules, a channel for the queue; then register the task with Sisy."""
        super().validate_task(task)
        if task.func.__name__ == "<lambda>":
            raise InvalidTaskError(
                f"Task {task.module_path} is a lambda; a worker finds a task by its name, "
                "so define it with def at module level."
            )
        self.channel_for(task.queue_name)
        register(task)

    def enqueue(self, task: Task, args, kwargs) -> TaskResult:
        """Validate the arguments, write a queued ``Run`` and return its ``TaskResult``.

        The run's wake-up is sent when the surrounding transaction commits.
        Arguments with annotations are validated and converted by pydantic
        (Sisy's rules); the others must be JSON, as the framework requires.
        """
        from sisy.dispatch import enqueue as enqueue_run

        self.validate_task(task)
        definition = register(task)
        args, kwargs = _normalize_unannotated(definition.arguments, args, kwargs)
        queued = dataclasses.replace(
            definition, channel=self.channel_for(task.queue_name), run_after=task.run_after)
        queued.__dict__["arguments"] = definition.arguments  # pydantic model: build it once
        run = enqueue_run(queued, args, kwargs)
        attempts = [run] if run.status == Run.Status.QUEUED else _attempts(run)  # SISY["EAGER"]
        result = self._result(attempts, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    # -- reading results --------------------------------------------------------------------
    def get_result(self, result_id: str) -> TaskResult:
        """The ``TaskResult`` of run ``result_id`` and its retries.

        Raises ``TaskResultDoesNotExist`` if there is no such run, or if it is
        not a run of a Django task registered in this process.
        """
        try:
            run = Run.objects.get(pk=int(result_id))
        except (Run.DoesNotExist, TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        definition = registry.get(run.task_name) if run.task_name in registry else None
        if not isinstance(definition, DjangoTaskDefinition):
            raise TaskResultDoesNotExist(
                f"Run {result_id} is a run of {run.task_name!r}, which is not a Django task "
                "registered in this process (declare it in an installed app's tasks.py)."
            )
        return self.result_for_run(run, definition)

    def result_for_run(self, run: Run, definition: DjangoTaskDefinition) -> TaskResult:
        """The ``TaskResult`` that ``run`` (any attempt) belongs to."""
        attempts = _attempts(run)
        first = attempts[0]
        declared = definition.django_task
        run_after = first.scheduled_for if first.scheduled_for != first.enqueued_at else None
        task = dataclasses.replace(
            declared, backend=self.alias, run_after=run_after,
            queue_name=self._queue_for(attempts[-1].channel, declared.queue_name),
        )
        return self._result(attempts, task)

    def _queue_for(self, channel: str, declared: str) -> str:
        channels = {queue: self.channel_for(queue) for queue in self.channels}
        if channels.get(declared) == channel:
            return declared
        return next((queue for queue, c in channels.items() if c == channel), declared)

    def _result(self, attempts: list[Run], task: Task) -> TaskResult:
        first, last = attempts[0], attempts[-1]
        started = [run for run in attempts if run.started_at is not None]
        result = TaskResult(
            task=task,
            id=str(first.pk),
            status=STATUSES[last.status],
            enqueued_at=first.enqueued_at,
            started_at=started[0].started_at if started else None,
            finished_at=last.finished_at if last.status not in UNSETTLED else None,
            last_attempted_at=started[-1].started_at if started else None,
            args=first.args,
            kwargs=first.kwargs,
            backend=self.alias,
            errors=[_task_error(run) for run in attempts
                    if STATUSES[run.status] == TaskResultStatus.FAILED],
            worker_ids=[run.worker for run in started if run.worker],
        )
        if last.status == Run.Status.SUCCEEDED:
            object.__setattr__(result, "_return_value", last.result)
        return result

    # -- configuration ----------------------------------------------------------------------
    def check(self, **kwargs) -> list[checks.CheckMessage]:
        messages = list(super().check(**kwargs))
        where = f"TASKS[{self.alias!r}]"
        if not apps.is_installed("sisy"):
            messages.append(checks.Error(
                f"{where} uses sisy.backends.SisyBackend, but 'sisy' is not in INSTALLED_APPS.",
                hint="Add 'channels' and 'sisy' to INSTALLED_APPS: Sisy's tables, workers and "
                     "task discovery come with the app.",
                id="sisy.E020",
            ))
        mapping = self.options.get("QUEUES", {})
        unknown = sorted(set(self.options) - OPTIONS)
        if unknown:
            messages.append(checks.Error(
                f"{where}['OPTIONS'] has the key(s) {', '.join(map(repr, unknown))}, which "
                "SisyBackend does not know.",
                hint="SisyBackend's only option is 'QUEUES', a dict of queue name -> channel.",
                id="sisy.E022",
            ))
        if not isinstance(mapping, dict):
            messages.append(checks.Error(
                f"{where}['OPTIONS']['QUEUES'] must be a dict of queue name -> Sisy channel, "
                f"not {type(mapping).__name__}.",
                hint="For example {'default': 'sisy.run_task', 'emails': 'sisy.emails'}.",
                id="sisy.E022",
            ))
            mapping = {}
        for queue, channel in mapping.items():
            if channel is not None and not (isinstance(channel, str)
                                            and CHANNEL_NAME.match(channel)):
                messages.append(checks.Error(
                    f"{where}['OPTIONS']['QUEUES'][{queue!r}] = {channel!r} is not a Sisy "
                    "channel name.",
                    hint="Use letters, digits, '-', '_' and '.', at most 100 characters, such "
                         "as 'sisy.emails'; None means SISY['RUN_TASK_CHANNEL'].",
                    id="sisy.E022",
                ))
        for queue in sorted(self.queues - set(self.channels)):
            messages.append(checks.Error(
                f"Queue {queue!r} of {where} has no Sisy channel, so its tasks cannot be "
                "enqueued.",
                hint=f"Add it to {where}['OPTIONS']['QUEUES'], e.g. "
                     f"{{{queue!r}: 'sisy.{queue}'}}, and run manage.py sisy_worker "
                     f"--channel sisy.{queue}.",
                id="sisy.E021",
            ))
        return messages


# -- the framework's signals, sent by Sisy's workers -----------------------------------------

@receiver(signals.run_started, dispatch_uid="sisy.backends.task_started")
def _send_task_started(sender, run: Run, **kwargs) -> None:
    if isinstance(sender, DjangoTaskDefinition):
        backend = _backend_for(sender)
        task_started.send(type(backend), task_result=backend.result_for_run(run, sender))


def _send_task_finished(sender, run: Run, status: str, **kwargs) -> None:
    """Sent for the final outcome; a failure with a retry queued is not finished yet.

    Sisy sends ``run_finished`` for a failure from its ``except`` block, so the
    framework's receivers find the exception in ``sys.exc_info()``.
    """
    if isinstance(sender, DjangoTaskDefinition):
        backend = _backend_for(sender)
        result = backend.result_for_run(run, sender)
        if result.is_finished:
            task_finished.send(type(backend), task_result=result)
