"""Which layer (settings, database, code) set each value of a ``Task`` row.

Precedence: settings beat the database, and the database beats code.
``sisy_list`` and the admin use :func:`explain` to show it.
"""

from __future__ import annotations

import dataclasses

from sisy.conf import SisySettings, get_settings
from sisy.models import Task

__all__ = ["Explanation", "explain"]


@dataclasses.dataclass(frozen=True)
class Explanation:
    switched_on: bool
    why: str
    schedule_source: str


def explain(row: Task, conf: SisySettings | None = None) -> Explanation:
    """Say whether ``row`` may fire and which layer decided, and where its schedule comes from."""
    conf = conf or get_settings()
    overrides = conf.overrides_for(row.name) if row.name else {}
    schedule_source = "settings" if "schedule" in overrides else (
        "code" if row.source == Task.Source.CODE else "database"
    )
    if row.orphaned:
        why = "orphaned: its code definition is gone"
    elif "enabled" in overrides:
        why = "on in settings" if overrides["enabled"] else "off in settings"
    elif row.paused:
        why = "paused by an operator"
    elif not row.enabled:
        why = "off in code" if row.source == Task.Source.CODE else "off in the database"
    else:
        why = "on"
    if not conf.ENABLED:
        why += "; SISY['ENABLED'] is False, nothing fires"
    return Explanation(row.is_switched_on(overrides), why, schedule_source)
