"""Fixture tasks, found by autodiscovery like any app's tasks.py."""

import datetime
import decimal
import uuid

import sisy


@sisy.periodic("*/5 * * * *")
def every_five_minutes():
    return "tick"


@sisy.periodic("0 7 * * *", name="reports.daily")
def daily_report():
    return "report"


@sisy.periodic("30 2 * * *", name="reports.weekly", enabled=False)
def weekly_report():
    return "weekly"


@sisy.periodic("* * * * * *", name="fast.every_second", takes_context=True)
def every_second(context):
    return context.run.scheduled_for.isoformat() if context.run else None


@sisy.task
def add(a: int, b: int = 0) -> int:
    return a + b


@sisy.task
def echo(value):
    return value


@sisy.task
def typed(when: datetime.datetime, ident: uuid.UUID, amount: decimal.Decimal) -> list:
    return [type(when).__name__, type(ident).__name__, type(amount).__name__, str(amount)]


@sisy.task(name="testapp.fail")
def fail(message: str = "boom"):
    raise ValueError(message)


# -- execution fixtures (worker tests) ------------------------------------------------------

@sisy.task(name="exec.mark")
def mark(token: str, sleep: float = 0.0) -> int:
    """Record one execution of ``token`` (optionally after sleeping) and return the pid."""
    import os
    import time

    from tests.testapp.models import Mark

    if sleep:
        time.sleep(sleep)
    Mark.objects.create(token=token, pid=os.getpid())
    return os.getpid()


@sisy.task(name="exec.progress", takes_context=True)
def with_progress(context, steps: int = 5, total: int | None = None):
    for done in range(1, steps + 1):
        context.progress(done, steps if total is None else total, f"step {done}")
    context.userdata["seen"] = context.userdata.get("seen", 0) + 1
    return {"attempt": context.attempt, "run": context.run.pk if context.run else None}


@sisy.task(name="exec.solo", allow_overlap=False)
def solo_job(label: str) -> str:
    """A one-shot task of which only one run may run at a time."""
    return label


@sisy.task(name="exec.task_running", takes_context=True)
def task_running(context):
    """Whether the database says this run's standing task is running, read by the body."""
    return type(context.task).objects.get(pk=context.task.pk).running


@sisy.task(name="exec.async")
async def async_add(a: int, b: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return a + b


@sisy.task(name="exec.exit")
def calls_exit():
    import sys

    sys.exit(3)


@sisy.task(name="exec.interrupt")
def raises_interrupt():
    raise KeyboardInterrupt("from a task")


@sisy.task(name="exec.not_json")
def returns_object():
    return object()


@sisy.task(name="exec.flaky", retries=2, retry_backoff=0.0)
def flaky(token: str):
    from tests.testapp.models import Mark

    Mark.objects.create(token=token)
    if Mark.objects.filter(token=token).count() < 3:
        raise RuntimeError(f"attempt {Mark.objects.filter(token=token).count()} fails")
    return "third time lucky"


# Used by tests/test_scheduler_processes.py: several schedulers fire these every
# second or two; each slot must have exactly one run.
@sisy.periodic("* * * * * *", name="sched.every_second", allow_overlap=True)
def sched_every_second():
    return None


@sisy.periodic("* * * * * */2", name="sched.every_2s")
def sched_every_2s():
    return None


@sisy.periodic("* * * * * 1-59/3", name="sched.every_3s")
def sched_every_3s():
    return None


# -- the seed's API (tests/test_legacy.py) ---------------------------------------------------
# Plain functions in the seed's style take one parameter named ``message``.

def seed_counter(message):
    """Count runs in the task's userdata (the seed's way to keep state between runs)."""
    task = message["task"]
    task.userdata["count"] = task.userdata.get("count", 0) + 1
    return {"count": task.userdata["count"], "channel_message": message["channel_message"]}


def seed_mark(message):
    """Write a Mark named after the task's label (end-to-end tests count them)."""
    import os

    from tests.testapp.models import Mark

    Mark.objects.create(token=message["task"].label, pid=os.getpid())
    return os.getpid()


def seed_saves_task(message):
    """A seed-style function that changes userdata and saves the task itself."""
    task = message["task"]
    task.userdata = {"saved": True}
    task.save()


def seed_fails(message):
    message["task"].userdata["tried"] = True
    raise RuntimeError("seed task failed")


def no_arguments():
    return "called without a message"


def two_arguments(a, b):
    return a + b


class SeedJobs:
    @classmethod
    def classy(cls, message):
        return f"{cls.__name__}:{message['task'].label}"

    @staticmethod
    def static(message):
        return message["task"].userdata.get("greeting", "hello")

    def instance(self, message):
        return "needs an object"


# -- fault-injection suite (tests/test_faults.py) --------------------------------------------

@sisy.task(name="faults.work", retries=3, retry_backoff=0.2)
def fault_work(token: str, ms: int = 0) -> int:
    """Sleep ``ms`` milliseconds, then record one completed body for ``token``."""
    import os
    import time

    from tests.testapp.models import Mark

    time.sleep(ms / 1000)
    Mark.objects.create(token=token, pid=os.getpid())
    return ms


@sisy.periodic("* * * * * *", name="faults.exclusive", enabled=False, allow_overlap=False,
               takes_context=True)
def fault_exclusive(context):
    """Takes longer than its one-second period; switched on by the overlap scenario only."""
    import os
    import time

    from tests.testapp.models import Mark

    Mark.objects.create(token=f"exclusive-start:{context.run.pk}", pid=os.getpid())
    time.sleep(2.5)
    Mark.objects.create(token=f"exclusive-end:{context.run.pk}", pid=os.getpid())
