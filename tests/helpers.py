"""Helpers shared by the test modules and by ``conftest.py``.

``run_manage`` / ``spawn_manage`` start ``python -m django ...`` in a subprocess
that uses the same settings module and the *test* database of the running
session (through ``SISY_DB_NAME``, which ``tests/settings*.py`` read). A test
that uses them must see committed data, so mark it
``@pytest.mark.django_db(transaction=True)``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "wait_for",
    "manage_env",
    "run_manage",
    "spawn_manage",
    "unreachable_services",
]


def manage_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``manage.py`` subprocess pointed at the test database."""
    from django.db import connection

    full = dict(os.environ)
    full["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings")
    # Inside a test this is the test database (a file for SQLite, test_sisy for PostgreSQL).
    full["SISY_DB_NAME"] = str(connection.settings_dict["NAME"])
    full["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    full.update(env or {})
    return full


def _command(args) -> list[str]:
    return [sys.executable, "-m", "django", *map(str, args)]


def run_manage(*args, env: dict[str, str] | None = None, timeout: float = 60):
    """Run ``python -m django <args>`` and return the ``CompletedProcess`` (text output)."""
    return subprocess.run(
        _command(args), env=manage_env(env), cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def spawn_manage(*args, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m django <args>`` without waiting; stdout/stderr are pipes (text)."""
    return subprocess.Popen(
        _command(args), env=manage_env(env), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


# -- service detection ----------------------------------------------------------------------

def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _postgres_problem(db: dict) -> str | None:
    host, port = db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)
    where = f"PostgreSQL at {host}:{port}"
    if not _port_open(host, port):
        return f"{where} is not reachable"
    import psycopg

    try:
        # The maintenance database: the test database may not exist yet.
        psycopg.connect(
            host=host, port=port, user=db.get("USER") or "postgres",
            password=db.get("PASSWORD") or None, dbname="postgres", connect_timeout=2,
        ).close()
    except psycopg.Error as exc:
        return f"{where} refuses connections ({str(exc).strip()})"
    return None


def _redis_problem(host) -> str | None:
    if isinstance(host, dict):
        host = host.get("address", "redis://127.0.0.1:6379")
    if isinstance(host, str):
        url = urlparse(host)
        address = (url.hostname or "127.0.0.1", url.port or 6379)
    else:
        address = (host[0], int(host[1]))
    if not _port_open(*address):
        return f"Redis at {address[0]}:{address[1]} is not reachable"
    return None


def unreachable_services(settings) -> list[str]:
    """Problems with the services that ``settings`` need, as sentences without a fix."""
    problems = []
    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"]:
        problems.append(_postgres_problem(db))
    for layer in getattr(settings, "CHANNEL_LAYERS", {}).values():
        if "channels_redis" in layer.get("BACKEND", ""):
            for host in layer.get("CONFIG", {}).get("hosts", [("127.0.0.1", 6379)]):
                problems.append(_redis_problem(host))
    return [p for p in problems if p]


def uses_postgres(settings) -> bool:
    return "postgresql" in settings.DATABASES["default"]["ENGINE"]


def uses_redis(settings) -> bool:
    return any(
        "channels_redis" in layer.get("BACKEND", "")
        for layer in getattr(settings, "CHANNEL_LAYERS", {}).values()
    )


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
