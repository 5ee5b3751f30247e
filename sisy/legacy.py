"""The seed's API (Sisy 1.0) on the new engine.

``task_with_callable()`` turns a callable, or the dotted path of one, into an
unsaved ``Task`` row whose ``func_info`` says how a worker finds the callable
again: a module-level function, a class or static method, or an instance
method of a Django model object (re-fetched by primary key in the worker).
``Task.run_once()`` and ``Task.run_iterations()`` are built on it.

The callable of such a row is resolved from the row — which trusted code
wrote — and never from a channel message. :class:`LegacyDefinition` is what
the worker runs for it: seed-style functions, with one parameter named
``message``, receive ``dict(task=<Task>, channel_message=<the run message>)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from datetime import datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.db import models
from django.utils import timezone

from sisy.schedules import validate_schedule

if TYPE_CHECKING:
    from sisy.context import TaskContext
    from sisy.models import Run, Task

__all__ = [
    "FUNC_TYPES",
    "LegacyDefinition",
    "callable_from_info",
    "func_info",
    "func_info_from_path",
    "run_iterations",
    "run_once",
    "task_with_callable",
    "taskinfo_with_label",
]

FUNC_TYPES = ("function", "staticmethod", "classmethod", "instancemethod")

#: Task fields that ``task_with_callable(**fields)`` may set besides its own arguments
#: (the seed's docs pass ``start_running`` and ``end_running`` this way).
EXTRA_FIELDS = (
    "start_running", "end_running", "iterations", "wait_for_schedule", "allow_overlap",
    "enabled", "timezone", "catch_up", "start_deadline", "retries", "retry_backoff", "channel",
)

#: The fields of the ``Task`` a seed-style function receives. Its ``save()`` writes only
#: these, so a function that saves its task cannot undo what the scheduler changed meanwhile.
MESSAGE_TASK_FIELDS = ("id", "name", "label", "schedule", "userdata", "func_info")


def _path(thing) -> str:
    return f"{thing.__module__}.{thing.__qualname__}"


# -- func_info from a live callable ----------------------------------------------------------

def _owner_class(func):
    """The class a function defined in a class body belongs to, or ``None``."""
    parts = func.__qualname__.split(".")
    if len(parts) != 2:
        return None
    module = importlib.import_module(func.__module__)
    owner = getattr(module, parts[0], None)
    return owner if inspect.isclass(owner) else None


def _class_info(kind: str, klass: type, name: str, **extra) -> dict:
    return {
        "func_type": kind,
        "module_name": klass.__module__,
        "class_name": klass.__name__,
        "class_path": _path(klass),
        **extra,
        "func_name": name,
        "func_path": f"{_path(klass)}.{name}",
    }


def _model_pk(obj: models.Model):
    """The primary key as JSON: integers stay integers, anything else (UUID, str) a string."""
    pk = obj.pk
    return pk if isinstance(pk, int) else str(pk)


def _function_info(func, what: str, pk_override) -> dict:
    if func.__name__ == "<lambda>" or "<locals>" in func.__qualname__:
        raise ValueError(
            f"{what} is a lambda or a nested function, which a worker cannot import. "
            "Define the task function with def at module level (or in a class)."
        )
    if func.__qualname__ == func.__name__:
        if pk_override is not None:
            raise ValueError(
                f"pk_override={pk_override!r} was given, but {what} is a plain function, "
                "not an instance method of a model; leave pk_override out."
            )
        return {
            "func_type": "function",
            "module_name": func.__module__,
            "func_name": func.__name__,
            "func_path": _path(func),
        }
    owner = _owner_class(func)
    if owner is None:
        raise ValueError(
            f"{what} is defined inside a nested class; a worker cannot find it. Move it to a "
            "module-level function, or a method of a module-level class."
        )
    attribute = inspect.getattr_static(owner, func.__name__, None)
    if isinstance(attribute, staticmethod):
        return _class_info("staticmethod", owner, func.__name__)
    if pk_override is not None:
        return _instance_info(owner, func.__name__, pk_override, what)
    raise ValueError(
        f"{what} is an instance method, and Sisy needs the object to call it on. Pass the "
        "bound method of a saved model object (obj.method), or pk_override=<the object's pk>."
    )


def _instance_info(klass: type, name: str, pk, what: str) -> dict:
    if not (inspect.isclass(klass) and issubclass(klass, models.Model)):
        raise ValueError(
            f"{what} is an instance method of {_path(klass)}, which is not a Django model; "
            "Sisy can only re-create model objects in a worker (by primary key). Use a "
            "function, a classmethod or a staticmethod instead."
        )
    if pk is None:
        raise ValueError(
            f"{what} is a method of an unsaved {klass.__name__} (its pk is None); save the "
            "object first, so that a worker can fetch it by primary key."
        )
    return _class_info("instancemethod", klass, name, model_pk=pk)


def func_info(the_callable, *, pk_override=None) -> dict:
    """The seed's ``func_info`` dict for a live callable; ``ValueError`` if a worker could not
    call it: a module, a class, a non-callable, a lambda, an instance method of an object
    that is not a Django model (or of an unsaved one)."""
    from sisy.base import TaskDefinition

    what = repr(the_callable)
    if isinstance(the_callable, TaskDefinition):
        the_callable = the_callable.func
    if hasattr(the_callable, "__qualname__") and hasattr(the_callable, "__module__"):
        what = _path(the_callable)
    if inspect.ismodule(the_callable):
        raise ValueError(
            f"{the_callable.__name__} is a module, which cannot be a task; name a function "
            f"in it, e.g. '{the_callable.__name__}.my_function'."
        )
    if inspect.isclass(the_callable):
        raise ValueError(
            f"{what} is a class, which cannot be a task; name one of its classmethods or "
            f"staticmethods, e.g. '{what}.my_method'."
        )
    if inspect.ismethod(the_callable):
        owner = the_callable.__self__
        if inspect.isclass(owner):
            return _class_info("classmethod", owner, the_callable.__name__)
        if not isinstance(owner, models.Model):
            raise ValueError(
                f"{what} is an instance method of a {type(owner).__name__} object, which is "
                "not a Django model; Sisy can only re-create model objects in a worker (by "
                "primary key). Use a function, a classmethod or a staticmethod instead."
            )
        if pk_override is not None:
            pk = pk_override
        else:
            pk = None if owner.pk is None else _model_pk(owner)
        return _instance_info(type(owner), the_callable.__name__, pk, what)
    if inspect.isfunction(the_callable):
        return _function_info(the_callable, what, pk_override)
    raise ValueError(
        f"{what} ({type(the_callable).__name__}) is not a function or method, so it cannot "
        "be a task. Pass a function, a classmethod, a staticmethod, or a model object's method."
    )


# -- func_info from a dotted path -------------------------------------------------------------

def _import_longest(path: str):
    """Import the longest importable module prefix of ``path``; return it and the rest."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            return importlib.import_module(name), parts[cut:]
        except ModuleNotFoundError as exc:
            # Only "this very module does not exist" means "try a shorter prefix".
            if exc.name is None or not name.startswith(exc.name):
                raise
    raise ValueError(
        f"Module '{parts[0]}' of '{path}' cannot be imported; give the full dotted path of "
        "the task function, e.g. 'myapp.tasks.my_function'."
    )


def func_info_from_path(path: str, *, pk_override=None) -> dict:
    """The ``func_info`` of the callable named by the dotted ``path``.

    ``module.function``, ``module.Class.classmethod`` and ``module.Class.staticmethod``
    are found by importing; ``module.Model.method`` needs ``pk_override``, the primary key
    of the model object the method is called on (the seed's pattern for data migrations,
    where the real model class is not at hand). ``ValueError`` for anything else.
    """
    if not isinstance(path, str) or path.count(".") < 1 or "" in path.split("."):
        raise ValueError(
            f"{path!r} is not a dotted path; give the full path of the task function, "
            "e.g. 'myapp.tasks.my_function'."
        )
    module, rest = _import_longest(path)
    thing = module
    for index, name in enumerate(rest):
        try:
            thing = getattr(thing, name)
        except AttributeError:
            where = ".".join([module.__name__, *rest[:index]])
            raise ValueError(
                f"'{path}' cannot be found: {where} has no attribute '{name}'."
            ) from None
    if len(rest) == 2 and inspect.isclass(owner := getattr(module, rest[0])) and (
            inspect.isfunction(thing)
            and not isinstance(inspect.getattr_static(owner, rest[1]), staticmethod)):
        # An instance method named through its class: the seed's migration pattern.
        if pk_override is None:
            raise ValueError(
                f"'{path}' is an instance method, and Sisy needs the object to call it on. "
                "Pass pk_override=<the model object's pk>, or the bound method obj.method."
            )
        return _instance_info(owner, rest[1], pk_override, f"'{path}'")
    if pk_override is not None:
        raise ValueError(
            f"pk_override={pk_override!r} was given, but '{path}' is not an instance method "
            "of a model; leave pk_override out."
        )
    if len(rest) > 2:
        raise ValueError(
            f"'{path}' is nested too deeply; a task must be a module-level function or a "
            "method of a module-level class."
        )
    return func_info(thing)


# -- func_info back to a callable (in the worker) -----------------------------------------

def _member(owner, name: str, info: dict):
    try:
        return getattr(owner, name)
    except AttributeError:
        raise LookupError(
            f"{info.get('func_path', name)} no longer exists ({owner!r} has no '{name}'); "
            "deploy the code that defines it, or switch the task off."
        ) from None


def callable_from_info(info: dict):
    """Import and return the callable that ``info`` (a row's ``func_info``) describes.

    An instance method's model object is fetched by primary key, so it is
    current. Raises ``ValueError`` for an info dict that is not the seed's,
    ``LookupError`` for code or an object that is gone.
    """
    kind = info.get("func_type") if isinstance(info, dict) else None
    if kind not in FUNC_TYPES:
        raise ValueError(
            f"func_info {info!r} has no valid func_type; expected one of {', '.join(FUNC_TYPES)}."
        )
    if kind == "function":
        module = importlib.import_module(info["module_name"])
        func = _member(module, info["func_name"], info)
    else:
        module = importlib.import_module(info["module_name"])
        klass = _member(module, info["class_name"], info)
        if kind == "instancemethod":
            if not (inspect.isclass(klass) and issubclass(klass, models.Model)):
                raise ValueError(f"{info['class_path']} is not a Django model.")
            try:
                obj = klass._default_manager.get(pk=info["model_pk"])
            except klass.DoesNotExist:
                raise LookupError(
                    f"{klass.__name__} with pk {info['model_pk']!r} no longer exists, so "
                    f"{info['func_path']} cannot be called; switch the task off or delete it."
                ) from None
            func = _member(obj, info["func_name"], info)
        else:
            func = _member(klass, info["func_name"], info)
    if not callable(func):
        raise ValueError(f"{info.get('func_path')} is not callable.")
    return func


# -- calling -----------------------------------------------------------------------------

def takes_message(func) -> bool:
    """Whether ``func`` is seed-style: exactly one parameter, named ``message``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].name == "message" and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _check_signature(func, what: str) -> None:
    """Refuse a callable a worker could not call: not seed-style and needing arguments."""
    from sisy.base import TaskDefinition

    if takes_message(func):
        return
    context = isinstance(func, TaskDefinition) and func.takes_context
    if isinstance(func, TaskDefinition):
        func = func.func
    try:
        inspect.signature(func).bind(*([None] if context else []))
    except TypeError:
        params = ", ".join(inspect.signature(func).parameters)
        raise ValueError(
            f"{what} takes ({params}); a task function made with task_with_callable must "
            "take one parameter named 'message' (it receives dict(task=..., "
            "channel_message=...)) or no required parameters."
        ) from None
    except ValueError:  # no signature to read (a builtin): let it be called without arguments
        return


@dataclasses.dataclass(frozen=True)
class LegacyDefinition:
    """What a worker runs for a ``Task`` row made by ``task_with_callable``.

    It quacks like a :class:`~sisy.base.TaskDefinition` where the worker needs
    it (``name``, ``takes_context``, ``retries``) and calls the row's callable
    the seed's way.
    """

    task: Task
    name: str
    takes_context: bool = False
    retries: int = 0
    retry_backoff: float = 1.0

    @classmethod
    def for_task(cls, task: Task, name: str) -> LegacyDefinition:
        return cls(task=task, name=name, retries=task.retries, retry_backoff=task.retry_backoff)

    def call(self, run: Run | None, channel_message: dict | None) -> Any:
        """Resolve the callable from the row now and call it; persist ``userdata`` changes."""
        from sisy.base import TaskDefinition
        from sisy.context import TaskContext

        func = callable_from_info(self.task.func_info)
        row = type(self.task).objects.only(*MESSAGE_TASK_FIELDS).get(pk=self.task.pk)
        seen = _copy(row.userdata)
        context: TaskContext | None = None
        try:
            if isinstance(func, TaskDefinition):
                if func.takes_context:
                    context = TaskContext(func, run, row)
                    return _invoke(func.func, context)
                func = func.func
            if takes_message(func):
                return _invoke(func, {"task": row, "channel_message": channel_message})
            return _invoke(func)
        finally:
            if context is not None:
                context.flush_progress()
                row.userdata = context.userdata
            if row.userdata != seen:
                type(row).objects.filter(pk=row.pk).update(userdata=row.userdata)


def _copy(value):
    import copy

    return copy.deepcopy(value)


def _invoke(func, *args):
    if inspect.iscoroutinefunction(func):
        return async_to_sync(func)(*args)
    return func(*args)


# -- the seed's public functions ------------------------------------------------------------

def task_with_callable(the_callable, label: str | None = None, schedule: str | None = None,
                       userdata: dict | None = None, pk_override=None, **fields) -> Task:
    """Return an unsaved ``Task`` that runs ``the_callable`` on ``schedule``; save it to start.

    ``the_callable`` is a function, classmethod, staticmethod or model object's
    method, or the dotted path of one; ``pk_override`` names the model object
    for a dotted path to an instance method (data migrations). ``label``
    defaults to the callable's dotted path, ``schedule`` to
    ``SISY["DEFAULT_SCHEDULE"]``. Other ``Task`` fields (``start_running``,
    ``end_running``, ``iterations``, ...) may be given as keywords. Anything
    a worker could not run raises ``ValueError``.
    """
    from sisy.conf import get_settings
    from sisy.models import Task

    unknown = sorted(set(fields) - set(EXTRA_FIELDS))
    if unknown:
        raise ValueError(
            f"task_with_callable() got unknown keyword(s) {', '.join(unknown)}; it accepts "
            f"label, schedule, userdata, pk_override and the Task fields {', '.join(EXTRA_FIELDS)}."
        )
    if isinstance(the_callable, str):
        info = func_info_from_path(the_callable, pk_override=pk_override)
    else:
        info = func_info(the_callable, pk_override=pk_override)
    if info["func_type"] != "instancemethod":
        _check_signature(callable_from_info(info), info["func_path"])
    if schedule is None:
        schedule = get_settings().DEFAULT_SCHEDULE
    label = info["func_path"] if label is None else label
    schedule = validate_schedule(schedule, task_name=label)  # InvalidSchedule is a ValueError
    if userdata is None:
        userdata = {}
    elif not isinstance(userdata, dict):
        raise ValueError(
            f"userdata must be a dict of JSON-serialisable data, not {type(userdata).__name__} "
            f"({userdata!r})."
        )
    return Task(label=label, schedule=schedule, userdata=userdata, func_info=info,
                source=Task.Source.DATABASE, **fields)


def taskinfo_with_label(label: str) -> dict:
    """The ``func_info`` of the task labelled ``label`` (used in reverse data migrations)."""
    from sisy.models import Task

    return dict(Task.objects.get(label=label).func_info)


def run_iterations(the_callable, iterations: int = 1, label: str | None = None,
                   schedule: str = "* * * * * *", userdata: dict | None = None,
                   run_immediately: bool = False, delay_until: datetime | None = None) -> Task:
    """Save and return a task that runs ``iterations`` times on ``schedule``, then retires.

    ``run_immediately=True`` fires the first iteration at once (at
    ``delay_until`` if given) instead of at the first slot; ``delay_until`` (an
    aware datetime in the future) fires nothing before it.
    """
    if delay_until is not None:
        if not isinstance(delay_until, datetime):
            raise ValueError(
                f"delay_until must be a datetime.datetime instance, not "
                f"{type(delay_until).__name__} ({delay_until!r})."
            )
        if timezone.is_naive(delay_until):
            raise ValueError(
                f"delay_until {delay_until.isoformat()} has no timezone; pass an aware "
                "datetime, e.g. django.utils.timezone.now() + timedelta(days=3)."
            )
        if delay_until <= timezone.now():
            raise ValueError(
                f"Task cannot start running in the past: delay_until {delay_until.isoformat()} "
                "is not in the future."
            )
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(
            f"iterations must be a whole number >= 0 (0: no limit), not {iterations!r}."
        )
    task = task_with_callable(the_callable, label=label, schedule=schedule, userdata=userdata)
    task.iterations = iterations
    task.start_running = delay_until
    task.wait_for_schedule = not run_immediately
    task.next_run = task.first_slot(timezone.now())
    task.save()
    return task


def run_once(the_callable, userdata: dict | None = None,
             delay_until: datetime | None = None) -> Task:
    """Save and return a task that runs ``the_callable`` once, now (or at ``delay_until``)."""
    return run_iterations(the_callable, userdata=userdata, run_immediately=True,
                          delay_until=delay_until)
