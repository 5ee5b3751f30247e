"""Cron schedules as pure functions.

A schedule is a cron string as croniter reads it: five fields (minute hour
day-of-month month day-of-week), or six with seconds as the last field, or an
alias such as ``@hourly``. Nothing here reads the clock: every function takes
the moment it computes from.

Daylight-saving policy (wall-clock time, each local time fires at most once):

* **Spring forward** — a local time that does not exist (02:30 in
  Europe/Berlin on the last Sunday of March) fires once, at the first instant
  after the gap (03:00 local). Several missing slots (02:00, 02:30) collapse
  into that one firing.
* **Fall back** — a local time that happens twice (02:30 in Europe/Berlin on
  the last Sunday of October) fires at its first occurrence only.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from sisy.exceptions import InvalidSchedule

__all__ = ["validate_schedule", "next_fire", "next_fires", "get_timezone"]

ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week", "second")
FIELD_RANGES = ("0-59", "0-23", "1-31", "1-12", "0-7", "0-59")
#: croniter's random (``R``) and hashed (``H``) expressions: they would fire at
#: a different moment in every process, so a scheduler cannot use them.
_RANDOM = re.compile(r"(?:^|[,\-/])[RH](?:$|[(/,\-])", re.IGNORECASE)
_REFERENCE = datetime(2001, 1, 1)


def _describe(task_name: str | None) -> str:
    return f" of task '{task_name}'" if task_name else ""


def _field_reason(fields: list[str]) -> str | None:
    """Name the first field croniter refuses, checking one field at a time."""
    for index, field in enumerate(fields):
        name = FIELD_NAMES[index]
        if _RANDOM.search(field):
            return (
                f"{name} field '{field}' uses a random or hashed value (R, H), which would "
                "fire at a different time in every process; write the values out."
            )
        probe = ["*"] * len(fields)
        probe[index] = field
        try:
            croniter(" ".join(probe), _REFERENCE)
        except Exception as exc:  # croniter raises many types; we re-raise ours
            # croniter quotes the whole probe ("[61 * * * *] is not ..."): drop it.
            reason = re.sub(r"^\[[^\]]*\]\s*", "", str(exc)).rstrip(".")
            if "out of range" in reason:
                return f"{name} field '{field}' is out of range {FIELD_RANGES[index]}."
            joint = " " if reason.startswith("is ") else ": "
            return f"{name} field '{field}'{joint}{reason}."
    return None


@functools.lru_cache(maxsize=4096)
def _validated(schedule: str) -> str:
    """Return the normalised schedule, or raise ``InvalidSchedule`` without a task name."""
    text = " ".join(schedule.split())
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise InvalidSchedule(
                f"'{text}' is not a known alias; use one of {', '.join(ALIASES)}."
            )
        text = text.lower()
    else:
        fields = text.split(" ") if text else []
        if len(fields) not in (5, 6):
            count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
            raise InvalidSchedule(
                f"it has {count}; give 5 (minute hour day month weekday) "
                "or 6 (the same, then seconds)."
            )
        reason = _field_reason(fields)
        if reason:
            raise InvalidSchedule(reason)
    try:
        croniter(text, _REFERENCE).get_next(datetime)
    except Exception as exc:
        raise InvalidSchedule(f"it never fires ({exc}).") from None
    return text


def validate_schedule(schedule: object, *, task_name: str | None = None) -> str:
    """Check a cron schedule and return it normalised (single spaces, lower-case alias).

    Raises :class:`~sisy.exceptions.InvalidSchedule` with the task name, the
    schedule and the reason when it is not a string, cannot be parsed, or
    never fires (``0 0 30 2 *``).
    """
    if not isinstance(schedule, str):
        raise InvalidSchedule(
            f"Schedule {schedule!r}{_describe(task_name)} must be a cron string such as "
            f"'*/5 * * * *', not {type(schedule).__name__}."
        )
    try:
        return _validated(schedule)
    except InvalidSchedule as exc:
        raise InvalidSchedule(
            f"Schedule '{schedule}'{_describe(task_name)} is not valid cron: {exc}"
        ) from None


@functools.lru_cache(maxsize=256)
def get_timezone(name: str) -> ZoneInfo:
    """Return the ``ZoneInfo`` for an IANA name, or raise ``InvalidSchedule``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(
            f"Timezone '{name}' is not a known IANA timezone name; "
            "use e.g. 'Europe/Berlin' or 'UTC'."
        ) from None


def _exists(wall: datetime, tz: tzinfo) -> bool:
    aware = wall.replace(tzinfo=tz)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


def _transition_after_gap(wall: datetime, tz: tzinfo) -> datetime:
    """The first UTC instant after the daylight-saving gap that swallowed ``wall``."""
    lo = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    hi = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    lo, hi = min(lo, hi), max(lo, hi)
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def _instant(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant at which a local wall-clock slot fires under the DST policy."""
    if not _exists(wall, tz):
        return _transition_after_gap(wall, tz)
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def next_fire(schedule: str, after: datetime, tz: tzinfo = UTC) -> datetime:
    """Return the first firing instant (aware, UTC) strictly after ``after``.

    ``after`` must be timezone-aware; ``tz`` is the zone the cron fields are
    read in. The schedule must already be valid (see :func:`validate_schedule`).
    """
    if after.tzinfo is None:
        raise ValueError("next_fire() needs an aware datetime; use django.utils.timezone.now().")
    wall = after.astimezone(tz).replace(tzinfo=None)
    it = croniter(schedule, wall)
    while True:
        candidate = _instant(it.get_next(datetime), tz)
        if candidate > after:
            return candidate


def next_fires(schedule: str, after: datetime, count: int, tz: tzinfo = UTC) -> list[datetime]:
    """Return the next ``count`` firing instants after ``after`` (see :func:`next_fire`)."""
    fires = []
    for _ in range(count):
        after = next_fire(schedule, after, tz)
        fires.append(after)
    return fires
