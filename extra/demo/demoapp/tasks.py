"""The demo's tasks, found by Sisy's autodiscovery like admin.py.

Everything here is the decorator way: no data migration, the ``Task`` rows
follow this module. (The 2017 way, a data migration that creates a ``Task``
row, is in ``migrations/0002_water_the_fern.py``.)
"""

import logging
import time

import sisy

logger = logging.getLogger(__name__)


# Six fields: croniter reads the sixth (last) one as seconds, so this fires
# every 10 seconds.
@sisy.periodic("* * * * * */10")
def tick():
    logger.info("tick")
    return "tick"


# takes_context: the first argument is the context; context.userdata is kept
# on the Task row between runs.
@sisy.periodic("* * * * * */5", name="demo.count", takes_context=True)
def count(context):
    context.userdata["count"] = context.userdata.get("count", 0) + 1
    return context.userdata["count"]


@sisy.periodic("* * * * * */15", name="demo.fails")
def fails():
    """Fails on purpose: the run is recorded as failed, with the error and traceback."""
    raise RuntimeError("the demo's failing task failed, as it does every 15 seconds")


@sisy.periodic("* * * * *")
def switched_off_in_settings():
    """Fires every minute in code, but SISY["TASKS"] in settings switches it off."""
    return "never"


@sisy.task
def greet(name: str) -> str:
    return f"Hello, {name}!"


@sisy.task(name="demo.long_job", takes_context=True)
def long_job(context, steps: int = 20, seconds_per_step: float = 0.25) -> str:
    """A long one-shot task that reports its progress (the page shows a progress bar)."""
    for step in range(1, steps + 1):
        time.sleep(seconds_per_step)
        context.progress(step, steps, f"step {step} of {steps}")
    return f"{steps} steps done"
