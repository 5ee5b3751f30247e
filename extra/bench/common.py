"""Helpers shared by the benchmark scripts: database setup, subprocesses, tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Why the harness vacuums the PostgreSQL queue tables before each batch.
VACUUM_NOTE = (
    "Sisy's queue table (sisy_run) is vacuumed before each batch, as autovacuum would "
    "between bursts: this machine's server runs with "
    "autovacuum = off, and without it each batch leaves thousands of dead index entries "
    "that every later claim has to step over (Sisy's drain rate fell from ~1,300 to 45 "
    "runs/s after a day of benchmarks). Procrastinate gets a new database for each "
    "measurement instead."
)


def env(mode: str = "pg", **extra) -> dict:
    full = dict(os.environ)
    full.update({"DJANGO_SETTINGS_MODULE": "extra.bench.settings", "SISY_BENCH_MODE": mode,
                 "PYTHONPATH": str(ROOT)})
    full.update(extra)
    return full


def setup_django(mode: str = "pg") -> None:
    os.environ.update(env(mode))
    if mode == "pg":
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s",
                [os.environ.get("SISY_BENCH_DB", "sisy_bench")]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE {os.environ.get("SISY_BENCH_DB", "sisy_bench")}')
    else:
        path = os.environ.get("SISY_BENCH_SQLITE", "/tmp/sisy-bench.sqlite3")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def bare_connection():
    """A psycopg connection (autocommit) to Django's default database, outside Django:
    the floors that the benchmarks time Sisy against."""
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    return psycopg.connect(host=settings["HOST"], port=settings["PORT"], user=settings["USER"],
                           dbname=settings["NAME"], autocommit=True)


def bare_insert(conn, channel: str, now, name: str = "bench.noop", args: str = "[1]", *,
                prepare: bool = True) -> int:
    """``.delay()``'s ``INSERT`` of a run of ``name`` with ``args`` (JSON), durable and
    (``prepare``) prepared, on ``conn``; its id."""
    from sisy import dispatch

    _, sql = dispatch._insert_plan()
    return conn.execute(sql, (name, args, "{}", channel, now, now, now, now, False),
                        prepare=prepare).fetchone()[0]


def manage(*args, mode="pg", **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "django", *args], env=env(mode, **extra),
                            cwd=ROOT)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (those alive now)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        tree.append(current)
    return tree


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def wait_until(predicate, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def table(headers, rows) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
