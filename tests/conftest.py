"""Fixtures and service detection for Sisy's test suite.

The suite runs in two configurations:

* ``tests.settings`` (the default): SQLite + the in-memory channel layer;
* ``tests.settings_pg``: PostgreSQL at 127.0.0.1:5432 + Redis at 127.0.0.1:6379.

Under the second, the services are probed when the session starts. When one
is missing, every test is skipped with the reason, or, with ``CI=true``, the
session stops with exit status 1 so that CI can never pass without them.
Tests marked ``postgres`` or ``redis`` are skipped under the first.
"""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.test import override_settings

from tests import helpers

_MISSING = object()

HOW_TO_START = {
    "PostgreSQL": "start it (e.g. `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust "
                  "postgres:16`)",
    "Redis": "start it (e.g. `docker run -d -p 6379:6379 redis:7`)",
}

MARKER_REASONS = {
    "postgres": "needs the PostgreSQL configuration (DJANGO_SETTINGS_MODULE=tests.settings_pg)",
    "redis": "needs the Redis configuration (DJANGO_SETTINGS_MODULE=tests.settings_pg)",
}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _with_fix(problem: str) -> str:
    service = problem.split(" ", 1)[0]
    return f"{problem}; {HOW_TO_START.get(service, 'start it')} or run the SQLite configuration"


def pytest_sessionstart(session):
    problems = helpers.unreachable_services(settings)
    session.config.sisy_service_problems = problems
    if problems and _in_ci():
        pytest.exit(
            "CI=true and a service the settings "
            f"{os.environ.get('DJANGO_SETTINGS_MODULE')} need is missing:\n  "
            + "\n  ".join(_with_fix(p) for p in problems),
            returncode=1,
        )


def pytest_report_header(config):
    return f"sisy services: {getattr(settings, 'SERVICES', '?')}"


def pytest_collection_modifyitems(config, items):
    problems = getattr(config, "sisy_service_problems", [])
    if problems:
        skip_all = pytest.mark.skip(reason="; ".join(_with_fix(p) for p in problems))
        for item in items:
            item.add_marker(skip_all)
        return
    available = {"postgres": helpers.uses_postgres(settings), "redis": helpers.uses_redis(settings)}
    for item in items:
        for marker, present in available.items():
            if not present and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=MARKER_REASONS[marker]))


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture
def sisy_settings():
    """Override ``settings.SISY`` for the rest of the test.

    ``sisy_settings(ENABLED=False, TASKS={...})`` sets those keys;
    ``sisy_settings(value)`` sets ``SISY`` to ``value`` as given (even a non-dict).
    Each call replaces the previous one; all are undone after the test.
    """
    active = []

    def apply(value=_MISSING, /, **keys):
        override = override_settings(SISY=keys if value is _MISSING else value)
        override.enable()
        active.append(override)
        return override

    yield apply
    for override in reversed(active):
        override.disable()


@pytest.fixture
def isolated_registry():
    """An empty task registry for the test; the real one comes back afterwards."""
    from sisy.registry import registry

    with registry.isolated() as empty:
        yield empty


@pytest.fixture
def run_manage():
    """``run_manage("sisy_sync", env={...})`` -> ``CompletedProcess`` against the test DB.

    The subprocess sees only committed data: use ``django_db(transaction=True)``.
    """
    return helpers.run_manage


@pytest.fixture
def spawn_manage():
    """Like ``run_manage`` but returns the ``Popen`` at once."""
    return helpers.spawn_manage


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of the test's own (free port), so the test may stop or restart it."""
    from tests.servers import RedisServer

    server = RedisServer(tmp_path)
    if server.binary is None:
        pytest.skip("redis-server is not installed")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def empty_redis_channels(settings):
    """Start a test with no wake-ups left in Redis by an earlier one (Redis configuration)."""
    layer = settings.CHANNEL_LAYERS["default"]
    if "channels_redis" not in layer["BACKEND"]:
        return
    import redis

    config = layer.get("CONFIG", {})
    client = redis.Redis.from_url(config["hosts"][0]["address"])
    keys = list(client.scan_iter(match=f"{config.get('prefix', 'asgi')}*"))
    if keys:
        client.delete(*keys)
    client.close()
