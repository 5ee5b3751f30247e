"""Registers a name that tests.fixture_modules.reloadable already uses, from another function."""

import sisy


@sisy.task(name="reloadable.named")
def impostor(x: int) -> int:
    return -x
