"""System checks (``manage.py check``): ids ``sisy.E001``… and ``sisy.W001``….

===========  ==============================================================
``E001``     ``SISY`` holds a key Sisy does not know.
``E002``     A schedule in ``SISY`` is not valid cron.
``E003``     Another ``SISY`` value has the wrong type or range.
``E004``     ``CHANNEL_LAYERS`` has no ``default`` layer.
``W001``     A ``SISY["TASKS"]`` name or glob matches no registered task.
``W002``     channels-redis with redis-py 8 and no ``socket_timeout`` above 5 s.
``E020``     (``SisyBackend.check()``) Sisy is not in ``INSTALLED_APPS``.
``E021``     (``SisyBackend.check()``) a Tasks queue has no Sisy channel.
``E022``     (``SisyBackend.check()``) bad backend ``OPTIONS`` or channel name.
===========  ==============================================================
"""

from __future__ import annotations

import difflib
import fnmatch
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import parse_qs, urlparse

from django.conf import settings
from django.core import checks

from sisy.conf import _read_django_settings, parse_settings
from sisy.exceptions import ConfigurationError
from sisy.registry import registry

__all__ = ["check_settings", "check_channel_layers"]


def _settings_errors(exc: ConfigurationError) -> list[checks.CheckMessage]:
    errors = []
    for line in str(exc).splitlines():
        if "is not a Sisy setting" in line:
            errors.append(checks.Error(
                line, id="sisy.E001",
                hint="Remove the key or correct its spelling; "
                     "the settings reference lists every key.",
            ))
        elif "not valid cron" in line:
            errors.append(checks.Error(
                line, id="sisy.E002",
                hint="Give 5 cron fields (6 with seconds last) or an alias such as @hourly.",
            ))
        else:
            errors.append(checks.Error(
                line, id="sisy.E003", hint="See the settings reference for the allowed values.",
            ))
    return errors


@checks.register("sisy")
def check_settings(app_configs=None, **kwargs):
    raw, legacy = _read_django_settings()
    try:
        conf = parse_settings(raw, legacy)
    except ConfigurationError as exc:
        return _settings_errors(exc)
    messages = []
    names = registry.names()
    for pattern in conf.TASKS:
        if pattern in names or any(fnmatch.fnmatchcase(n, pattern) for n in names):
            continue
        close = difflib.get_close_matches(pattern, names, n=1)
        hint = f"Did you mean '{close[0]}'?" if close else (
            "Registered tasks: " + (", ".join(names[:10]) or "none") + "."
        )
        messages.append(checks.Warning(
            f"SISY['TASKS'][{pattern!r}] matches no registered task, so it changes nothing.",
            hint=hint, id="sisy.W001",
        ))
    return messages


def _redis_major() -> int | None:
    try:
        return int(version("redis").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return None


def _seconds(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _host_timeout(host) -> float | None:
    """The ``socket_timeout`` of one channels-redis host (a dict, a URL or a tuple)."""
    if isinstance(host, dict):
        if host.get("socket_timeout") is not None:
            return _seconds(host["socket_timeout"])
        host = host.get("address", "")
    if isinstance(host, str):
        values = parse_qs(urlparse(host).query).get("socket_timeout")
        return _seconds(values[0]) if values else None
    return None


@checks.register("sisy")
def check_channel_layers(app_configs=None, **kwargs):
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if not isinstance(layers, dict) or "default" not in layers:
        return [checks.Error(
            "CHANNEL_LAYERS has no 'default' layer, so Sisy cannot wake workers.",
            hint="For one process: CHANNEL_LAYERS = {'default': {'BACKEND': "
                 "'channels.layers.InMemoryChannelLayer'}}; for several, use channels_redis.",
            id="sisy.E004",
        )]
    messages = []
    for alias, layer in layers.items():
        if not isinstance(layer, dict) or "channels_redis" not in str(layer.get("BACKEND", "")):
            continue
        if (_redis_major() or 0) < 8:
            continue
        hosts = (layer.get("CONFIG") or {}).get("hosts") or [("localhost", 6379)]
        for host in hosts:
            timeout = _host_timeout(host)
            if timeout is None or timeout <= 5:
                messages.append(checks.Warning(
                    f"CHANNEL_LAYERS[{alias!r}] uses channels-redis with redis-py 8, whose "
                    "default 5 s socket timeout equals channels-redis's 5 s blocking pop: "
                    "idle workers will crash with a timeout (channels_redis #422).",
                    hint="Give each host as a dict with a longer timeout: "
                         "{'address': 'redis://127.0.0.1:6379', 'socket_timeout': 10}.",
                    id="sisy.W002",
                ))
                break
    return messages
