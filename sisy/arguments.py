"""Argument validation from a task function's signature, with pydantic.

``.delay()`` checks its arguments here before anything is written, and turns
them into JSON; the worker turns the JSON back into the annotated types.

Plain positional values skip pydantic: a ``str``, ``int``, ``float``
(finite), ``bool`` or ``None`` given for a parameter annotated with its very
type (or a union of such types, or nothing) is what pydantic would return
and what JSON gives back, so it is stored and passed on as it is. Anything
else -- keywords, other types, a subclass, a value pydantic would convert
(``"5"`` for an ``int``) -- goes through pydantic.
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from typing import Any

from pydantic import ConfigDict, ValidationError, create_model
from pydantic_core import PydanticSerializationError

from sisy.exceptions import InvalidArguments

__all__ = ["ArgumentSpec"]

_JSON_NATIVE = (str, int, float, bool, type(None))
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _plain_types(annotation) -> tuple[type, ...] | None:
    """The types whose values pass a parameter annotated ``annotation`` unchanged, by
    validation and by JSON both (``None`` if the parameter needs pydantic)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return _JSON_NATIVE
    if annotation is None:
        return (type(None),)
    if annotation in _JSON_NATIVE:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if all(member in _JSON_NATIVE for member in members):
            return members
    return None


def _check_json_native(value: Any, where: str) -> None:
    """Refuse un-annotated values that would not come back from JSON unchanged."""
    if isinstance(value, _JSON_NATIVE):
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            raise InvalidArguments(f"{where} = {value!r} does not survive JSON.")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_native(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArguments(
                    f"{where} has the key {key!r}; JSON objects only have string keys."
                )
            _check_json_native(item, f"{where}[{key!r}]")
        return
    raise InvalidArguments(
        f"{where} = {value!r} ({type(value).__name__}) does not survive JSON; pass plain "
        "JSON values, or annotate the parameter with a type pydantic can serialise "
        "(datetime, UUID, Decimal, a pydantic model, ...)."
    )


class ArgumentSpec:
    """Validates and serialises the arguments of one task function."""

    def __init__(self, func, *, task_name: str, skip_first: bool = False):
        self.task_name = task_name
        try:  # string annotations (from __future__ import annotations) become types
            signature = inspect.signature(func, eval_str=True)
        except (NameError, AttributeError):  # a name imported under TYPE_CHECKING only
            signature = inspect.signature(func)
        params = list(signature.parameters.values())
        if skip_first:
            params = params[1:]
        self.signature = signature.replace(parameters=params)
        self.annotated = {
            p.name for p in params if p.annotation is not inspect.Parameter.empty
        }
        fields = {}
        for param in params:
            annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                annotation = tuple[annotation, ...]
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                annotation = dict[str, annotation]
            default = ... if param.default is inspect.Parameter.empty else param.default
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                default = () if param.kind is inspect.Parameter.VAR_POSITIONAL else {}
            fields[param.name] = (annotation, default)
        self.model = create_model(
            f"{func.__name__}_arguments",
            __config__=ConfigDict(arbitrary_types_allowed=True),
            **fields,
        )
        # For _plain(): the types each leading positional parameter takes as they are,
        # and how many positional values a call must give (None: never few enough).
        self._plain_types: list[tuple[type, ...]] = []
        for param in params:
            plain = _plain_types(param.annotation) if param.kind in _POSITIONAL else None
            if plain is None:
                break
            self._plain_types.append(plain)
        required = [index for index, param in enumerate(params)
                    if param.default is inspect.Parameter.empty
                    and param.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                           inspect.Parameter.VAR_KEYWORD)]
        self._least = (required[-1] + 1 if required else 0) \
            if all(index < len(self._plain_types) for index in required) else None

    def _plain(self, args, kwargs) -> bool:
        """Whether ``args`` and ``kwargs`` are plain values that pydantic and JSON would
        leave as they are (see the module's docstring): positional only, as many as the
        signature takes, each exactly of a type its parameter takes as it is."""
        if kwargs or self._least is None or type(args) not in (list, tuple):
            return False
        if not self._least <= len(args) <= len(self._plain_types):
            return False
        for value, plain in zip(args, self._plain_types, strict=False):
            kind = type(value)
            if kind not in plain or kind is float and not math.isfinite(value):
                return False
        return True

    def _bind(self, args, kwargs) -> inspect.BoundArguments:
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(
                f"Arguments for task '{self.task_name}' do not match its signature "
                f"{self.signature}: {exc}."
            ) from None

    def _validate(self, bound: inspect.BoundArguments):
        try:
            return self.model.model_validate(dict(bound.arguments))
        except ValidationError as exc:
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e['input']!r})"
                for e in exc.errors()
            )
            raise InvalidArguments(
                f"Arguments for task '{self.task_name}' are invalid: {details}."
            ) from None

    def dump(self, args: tuple, kwargs: dict) -> tuple[list, dict]:
        """Validate ``args``/``kwargs`` and return them as JSON-ready ``(list, dict)``.

        Raises :class:`~sisy.exceptions.InvalidArguments` naming the bad value.
        """
        if self._plain(args, kwargs):
            return list(args), {}
        return self._dump_validated(args, kwargs)

    def _dump_validated(self, args: tuple, kwargs: dict) -> tuple[list, dict]:
        """:meth:`dump` through pydantic."""
        bound = self._bind(args, kwargs)
        for name, value in bound.arguments.items():
            if name not in self.annotated:
                if self.signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
                    value = list(value)  # *args always binds as a tuple
                _check_json_native(value, f"Argument '{name}' of task '{self.task_name}'")
        model = self._validate(bound)
        try:
            data = model.model_dump(mode="json", exclude_unset=True)
            json.dumps(data, allow_nan=False)
        except (PydanticSerializationError, ValueError, TypeError) as exc:
            raise InvalidArguments(
                f"Arguments for task '{self.task_name}' do not survive JSON: {exc}."
            ) from None
        out_args, out_kwargs = [], {}
        for param in self.signature.parameters.values():
            if param.name not in data:
                continue
            value = data[param.name]
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                out_args.extend(value)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                out_kwargs.update(value)
            elif param.name in kwargs or param.kind is inspect.Parameter.KEYWORD_ONLY:
                out_kwargs[param.name] = value
            else:
                out_args.append(value)
        return out_args, out_kwargs

    def load(self, args: list, kwargs: dict) -> tuple[tuple, dict]:
        """Turn stored JSON arguments back into the annotated Python types."""
        if self._plain(args, kwargs):
            return tuple(args), {}
        return self._load_validated(args, kwargs)

    def _load_validated(self, args: list, kwargs: dict) -> tuple[tuple, dict]:
        """:meth:`load` through pydantic."""
        bound = self._bind(args, kwargs)
        model = self._validate(bound)
        rebuilt = self.signature.bind_partial()
        for name in bound.arguments:
            rebuilt.arguments[name] = getattr(model, name)
        return rebuilt.args, rebuilt.kwargs
