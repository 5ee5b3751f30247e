"""Run the examples of the foundation's topic pages, so the docs cannot drift from the code.

In each page, ``.. code-block:: python`` blocks are executed and ``.. code-block::
pycon`` blocks run as doctests, in order, in one namespace per page. A ``SISY``
or ``CHANNEL_LAYERS`` that a block defines must pass Sisy's checks.
"""

import doctest
import re
import textwrap

import pytest
from django.test import override_settings

from sisy import checks as sisy_checks
from sisy.conf import parse_settings
from tests.helpers import ROOT

PAGES = {
    "docs/topics/tasks-and-schedules.rst": "billing.tasks",
    "docs/topics/settings.rst": "settings",
}
BLOCK = re.compile(r"^\.\. code-block:: (python|pycon)\n\n((?:(?:    .*)?\n)+)", re.MULTILINE)


def blocks(path):
    text = (ROOT / path).read_text()
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        yield match.group(1), textwrap.dedent(match.group(2)), line


@pytest.mark.parametrize("path", PAGES)
def test_page_examples_run(path, isolated_registry, monkeypatch):
    monkeypatch.setattr(sisy_checks, "_redis_major", lambda: 8)
    namespace = {"__name__": PAGES[path]}
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
