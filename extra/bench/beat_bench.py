"""W5's reference: django-celery-beat's DatabaseScheduler with N standing tasks.

For each size the table ``django_celery_beat_periodictask`` of the database
``sisy_bench_celerybeat`` is refilled with N hourly interval tasks, none due,
and a fresh process measures start to first ``tick()``, the median idle
``tick()`` and its RSS, as ``scheduler_bench.py`` does for Sisy. Then all N are
made due and a fresh process ticks until nothing is due (beat sends one due
entry per tick), bounded by ``BURST_TIMEOUT``; the messages go to the Celery
benchmark's queue in Redis database 5 and are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from extra.bench import common

DATABASE = os.environ.get("SISY_BENCH_BEAT_DB", "sisy_bench_celerybeat")
BURST_TIMEOUT = 30.0
IDLE_TICKS = 20


def env(**extra) -> dict:
    return common.env(DJANGO_SETTINGS_MODULE="extra.bench.beat_settings", **extra)


def setup() -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    os.environ.update(env())
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def fill(count: int, due: bool) -> None:
    from datetime import UTC, datetime, timedelta

    from django.db import connection
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    with connection.cursor() as cursor:  # .delete() would fire beat's signals once per row
        cursor.execute("TRUNCATE django_celery_beat_periodictask")
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    last = datetime.now(UTC) - (timedelta(hours=2) if due else timedelta(0))
    PeriodicTask.objects.bulk_create(
        (PeriodicTask(name=f"bench.t{i}", task="bench.noop", interval=hourly, args="[0]",
                      last_run_at=last, enabled=True) for i in range(count)),
        batch_size=5000)
    PeriodicTasks.update_changed()


def child(kind: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "extra.bench.beat_bench", kind],
                          env=env(BENCH_LAUNCH=repr(time.time())), cwd=common.ROOT,
                          capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(f"beat_bench {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scheduler():
    import django

    django.setup()
    from django_celery_beat.schedulers import DatabaseScheduler

    from extra.bench.ref_celery import app

    return DatabaseScheduler(app=app)


def measure_idle() -> dict:
    beat = scheduler()
    beat.tick()
    first = time.time() - float(os.environ["BENCH_LAUNCH"])
    ticks = []
    for _ in range(IDLE_TICKS):
        began = time.perf_counter()
        beat.tick()
        ticks.append(time.perf_counter() - began)
    return {"first_tick_s": first, "tick_ms": common.median(ticks) * 1000,
            "rss_mib": common.rss_mib(os.getpid())}


def measure_burst() -> dict:
    beat = scheduler()
    began = time.time()
    sent = 0
    while time.time() - began < BURST_TIMEOUT:
        if beat.tick() > 0:  # tick() sends one due entry and returns 0 while more are due
            break
        sent += 1
    elapsed = time.time() - began
    finished = time.time() - began < BURST_TIMEOUT
    return {"fire_s": elapsed if finished else f"> {BURST_TIMEOUT:.0f} ({sent:,} sent)",
            "sent": sent}


def measure(sizes: list[int], options=None) -> dict:
    from extra.bench import ref_celery

    setup()
    result = {}
    try:
        for size in sizes:
            fill(size, due=False)
            idle = child("idle")
            fill(size, due=True)
            result[size] = {**idle, **child("burst")}
            ref_celery.cleanup()
    finally:
        ref_celery.cleanup()
        from django.db import connection

        connection.close()
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    return result


if __name__ == "__main__":
    print(json.dumps(measure_idle() if sys.argv[1] == "idle" else measure_burst()))
