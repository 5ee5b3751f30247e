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
