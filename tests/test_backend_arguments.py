"""Sisy's argument handling that Django's Tasks contract relies on, for ``@sisy.task`` too.

Given a task function, when its arguments are validated for a run, expect
what the caller passed to be stored (no defaults, ``*args`` as a list) and
string annotations to be validated like real ones.
"""

from __future__ import annotations

import datetime

import pytest

from sisy.arguments import ArgumentSpec
from sisy.exceptions import InvalidArguments


def with_defaults(a: int, b: int = 2, *, c: str = "x"):
    return a, b, c


def with_varargs(*args, **kwargs):
    return args, kwargs


def with_future_annotations(when: datetime.date, n: int = 1):  # strings: see the __future__ import
    return when, n


def spec(func):
    return ArgumentSpec(func, task_name=func.__name__)


def test_arguments_left_out_are_not_stored_so_defaults_apply_in_the_worker():
    assert spec(with_defaults).dump((1,), {}) == ([1], {})
    assert spec(with_defaults).dump((1,), {"c": "y"}) == ([1], {"c": "y"})
    assert spec(with_defaults).load([1], {}) == ((1,), {})


def test_unannotated_varargs_are_json_and_tuples_inside_them_are_not():
    assert spec(with_varargs).dump((1, "a"), {"k": [1]}) == ([1, "a"], {"k": [1]})
    with pytest.raises(InvalidArguments, match=r"Argument 'args' of task 'with_varargs'\[0\] = "
                       r"\(1, 2\) \(tuple\) does not survive JSON"):
        spec(with_varargs).dump(((1, 2),), {})


def test_string_annotations_are_validated_and_converted():
    assert isinstance(with_future_annotations.__annotations__["when"], str)
    checked = spec(with_future_annotations)
    assert checked.dump((datetime.date(2030, 1, 2),), {}) == (["2030-01-02"], {})
    assert checked.load(["2030-01-02"], {}) == ((datetime.date(2030, 1, 2),), {})
    with pytest.raises(InvalidArguments, match=r"when: Input should be a valid date"):
        checked.dump(("soon",), {})
