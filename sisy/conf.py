"""The ``SISY`` setting, parsed once by pydantic and read lazily.

``get_settings()`` parses ``settings.SISY`` (plus the seed's legacy ``SISY_*``
names) on first use and caches the result; the cache is cleared on Django's
``setting_changed`` signal so ``override_settings`` works in tests.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from datetime import timedelta
from typing import Any, Literal

from django.core.signals import setting_changed
from django.dispatch import receiver
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sisy.exceptions import ConfigurationError, InvalidSchedule
from sisy.schedules import get_timezone, validate_schedule

__all__ = ["SisySettings", "TaskOverride", "get_settings", "LEGACY_SETTINGS", "CatchUp"]

CatchUp = Literal["latest", "all", "skip"]

#: The seed's top-level settings and the ``SISY`` key each one fills.
LEGACY_SETTINGS = {
    "SISY_HEARTBEAT_FREQUENCY": "HEARTBEAT_FREQUENCY",
    "SISY_DEFAULT_SCHEDULE": "DEFAULT_SCHEDULE",
    "SISY_HEARTBEAT_CHANNEL": "HEARTBEAT_CHANNEL",
    "SISY_RUN_TASK_CHANNEL": "RUN_TASK_CHANNEL",
    "SISY_KILL_TASK_CHANNEL": "KILL_TASK_CHANNEL",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TaskOverride(_Strict):
    """Per-task settings in ``SISY["TASKS"]``; ``None`` means "not overridden"."""

    enabled: bool | None = None
    schedule: str | None = None
    allow_overlap: bool | None = None
    timezone: str | None = None
    retries: int | None = Field(default=None, ge=0)
    retry_backoff: float | None = Field(default=None, ge=0)
    catch_up: CatchUp | None = None
    channel: str | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value):
        return None if value is None else validate_schedule(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value):
        if value is not None:
            get_timezone(value)
        return value

    def set_fields(self) -> dict[str, Any]:
        """The options this override sets, without the ones left at ``None``."""
        return {key: value for key, value in self if value is not None}


class SisySettings(_Strict):
    """Everything ``SISY = {...}`` may hold. See the settings reference for each key."""

    ENABLED: bool = True
    EAGER: bool = False
    #: False: ``.delay()`` outside a transaction commits its row on PostgreSQL with
    #: ``synchronous_commit = off`` (about twice the enqueue rate; a crash of the
    #: database server may lose the last ~0.6 s of queued runs).
    DURABLE_ENQUEUE: bool = True
    #: True: a worker waits for PostgreSQL to flush each run's outcome to disk.
    #: False (default): it does not; a database-server crash can turn a just-finished
    #: run into a "worker lost" one (retried if the task allows), never a silent loss.
    DURABLE_RESULTS: bool = False
    TASKS: dict[str, TaskOverride] = Field(default_factory=dict)
    DEFAULT_SCHEDULE: str = "* * * * *"
    RUN_TASK_CHANNEL: str = "sisy.run_task"
    HEARTBEAT_CHANNEL: str = "sisy.heartbeat"
    KILL_TASK_CHANNEL: str = "sisy.kill_task"
    #: Longest time (seconds) the scheduler sleeps between two looks at the table.
    HEARTBEAT_FREQUENCY: float = Field(default=5.0, gt=0, le=3600)
    #: A queued run whose wake-up was sent this long ago (seconds) is sent again.
    REDELIVERY_INTERVAL: float = Field(default=30.0, gt=0)
    #: Workers write a heartbeat this often (seconds); twice this without one means lost.
    WORKER_HEARTBEAT: float = Field(default=10.0, gt=0)
    #: How often (seconds) an idle worker looks in the database for queued runs.
    POLL_INTERVAL: float = Field(default=1.0, gt=0)
    #: Finished runs older than this are deleted by the scheduler; ``None`` keeps them.
    RETENTION: timedelta | None = timedelta(days=30)
    #: Seconds between two progress writes of one run (``context.progress``).
    PROGRESS_INTERVAL: float = Field(default=0.5, ge=0)

    @field_validator("DEFAULT_SCHEDULE")
    @classmethod
    def _schedule(cls, value):
        return validate_schedule(value)

    def overrides_for(self, name: str) -> dict[str, Any]:
        """Merge every ``TASKS`` entry that matches ``name``.

        An exact name beats any glob, and a longer glob beats a shorter one.
        """
        matches = [
            (pattern == name, len(pattern), override)
            for pattern, override in self.TASKS.items()
            if pattern == name or fnmatch.fnmatchcase(name, pattern)
        ]
        merged: dict[str, Any] = {}
        for _exact, _length, override in sorted(matches, key=lambda m: (m[0], m[1])):
            merged.update(override.set_fields())
        return merged


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _location(loc) -> str:
    return "".join(f"[{part!r}]" for part in loc)


def _explain(error: ValidationError, from_legacy: frozenset[str] = frozenset()) -> str:
    legacy_names = {key: old for old, key in LEGACY_SETTINGS.items()}
    lines = []
    for item in error.errors():
        loc = item["loc"]
        if loc and loc[0] in from_legacy:  # the value came from a seed SISY_* setting
            where = legacy_names[loc[0]] + _location(loc[1:])
        else:
            where = f"SISY{_location(loc)}"
        if loc and loc[-1] == "[key]":  # pydantic's marker for a bad dict key
            lines.append(
                f"SISY{_location(loc[:-2])} has the key {item['input']!r}, which is invalid: "
                f"{item['msg']}"
            )
        elif item["type"] == "extra_forbidden":
            model = TaskOverride if len(loc) > 2 and loc[0] == "TASKS" else SisySettings
            lines.append(
                f"{where} is not a Sisy setting.{_suggest(str(loc[-1]), model.model_fields)}"
            )
        else:
            message = item["msg"]
            if isinstance(item.get("ctx", {}).get("error"), InvalidSchedule):
                message = str(item["ctx"]["error"])
            lines.append(f"{where} = {item['input']!r} is invalid: {message}")
    return "\n".join(lines)


def parse_settings(raw: object, legacy: dict[str, Any] | None = None) -> SisySettings:
    """Parse a ``SISY`` value (plus legacy values) or raise ``ConfigurationError``.

    ``legacy`` maps ``SISY`` keys to the values of the seed's ``SISY_*`` settings;
    a key given in ``SISY`` too wins over its legacy setting.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError(
            f"The SISY setting must be a dict such as {{'ENABLED': True}}, "
            f"not {type(raw).__name__}."
        )
    data = {**(legacy or {}), **raw}
    try:
        return SisySettings.model_validate(data)
    except ValidationError as exc:
        from_legacy = frozenset(legacy or ()) - set(raw)
        raise ConfigurationError(_explain(exc, from_legacy)) from None


def _read_django_settings() -> tuple[object, dict[str, Any]]:
    from django.conf import settings

    legacy = {
        key: getattr(settings, old)
        for old, key in LEGACY_SETTINGS.items()
        if hasattr(settings, old)
    }
    if "HEARTBEAT_FREQUENCY" in legacy and isinstance(legacy["HEARTBEAT_FREQUENCY"], int):
        legacy["HEARTBEAT_FREQUENCY"] = float(legacy["HEARTBEAT_FREQUENCY"])
    return getattr(settings, "SISY", None), legacy


@functools.cache
def get_settings() -> SisySettings:
    """Return the parsed ``SISY`` settings (cached until a setting changes)."""
    raw, legacy = _read_django_settings()
    return parse_settings(raw, legacy)


@receiver(setting_changed)
def _reset(*, setting, **kwargs):
    if setting == "SISY" or setting in LEGACY_SETTINGS:
        get_settings.cache_clear()
