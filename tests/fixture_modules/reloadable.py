"""A throw-away tasks module that test_decorators re-imports with importlib.reload()."""

import sisy


@sisy.periodic("0 * * * *")
def hourly():
    return "hourly"


@sisy.task(name="reloadable.named")
def named(x: int) -> int:
    return x
