"""Run the examples of the docs' pages, so the docs cannot drift from the code.

In each page, ``.. code-block:: python`` blocks are executed and ``.. code-block::
pycon`` blocks run as doctests, in order, in one namespace per page. A ``SISY``
or ``CHANNEL_LAYERS`` that a block defines must pass Sisy's checks. A block
marked ``.. code-block:: py`` is shown, not run (another library's code, on
the "Coming from Celery beat" page). On ``docs/topics/testing.rst`` the
``test_*`` functions the blocks define are then called, as pytest would.
"""

import doctest
import re
import textwrap

import pytest
from django.db import transaction
from django.test import override_settings

from sisy import checks as sisy_checks
from sisy.conf import parse_settings
from tests.helpers import ROOT

PAGES = {
    "docs/topics/tasks-and-schedules.rst": "billing.tasks",
    "docs/topics/settings.rst": "settings",
    "docs/topics/workers.rst": "settings",
    "docs/coming-from-celery-beat.rst": "shop.tasks",
}
TESTING_PAGE = "docs/topics/testing.rst"
BLOCK = re.compile(r"^\.\. code-block:: (python|pycon)\n\n((?:(?:    .*)?\n)+)", re.MULTILINE)


def blocks(path):
    text = (ROOT / path).read_text()
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        yield match.group(1), textwrap.dedent(match.group(2)), line


@pytest.mark.parametrize("path", PAGES)
def test_page_examples_run(path, isolated_registry, monkeypatch):
    monkeypatch.setattr(sisy_checks, "_redis_major", lambda: 8)
    namespace = {"__name__": PAGES[path], "BASE_DIR": ROOT}  # settings examples use BASE_DIR
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    parser = doctest.DocTestParser()
    found = 0
    for kind, code, line in blocks(path):
        found += 1
        if kind == "python":
            exec(compile(code, f"{path}:{line}", "exec"), namespace)
            if "SISY" in namespace:
                parse_settings(namespace["SISY"])  # kept: a pycon block may use it
            if "CHANNEL_LAYERS" in namespace:
                with override_settings(CHANNEL_LAYERS=namespace.pop("CHANNEL_LAYERS")):
                    assert sisy_checks.check_channel_layers() == []
        else:
            test = parser.get_doctest(code, namespace, f"{path}:{line}", path, line)
            runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest works on a copy    assert found >= 5
    assert runner.failures == 0, f"{runner.failures} doctest example(s) failed in {path}"


@pytest.mark.django_db
def test_testing_page_examples_pass(isolated_registry):
    namespace = {"__name__": "shop.tasks"}
    for kind, code, line in blocks(TESTING_PAGE):
        assert kind == "python", f"{TESTING_PAGE}:{line}: only python blocks are expected"
        exec(compile(code, f"{TESTING_PAGE}:{line}", "exec"), namespace)
    tests = {name: f for name, f in namespace.items() if name.startswith("test_")}
    assert len(tests) >= 8, sorted(tests)
    for name, test in tests.items():
        try:
            with transaction.atomic():  # each example starts from the same tables
                test()
                transaction.set_rollback(True)
        except Exception as exc:
            raise AssertionError(f"{TESTING_PAGE}: {name} failed: {exc!r}") from exc
