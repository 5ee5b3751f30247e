"""The scheduler's cost at 100 / 10,000 / 100,000 standing tasks, and a burst of due slots.

    python -m extra.bench.scheduler_bench [--sizes 100,10000,100000] [--burst 10000]
                                          [--idle-seconds 15] [--lag 30]

For each size, the ``sisy_task`` table of the PostgreSQL database
``sisy_bench`` (``SISY_BENCH_DB`` to change it) is refilled with that many
rows whose next slot is an hour or more away, and a fresh process measures:

* start to first tick: from launching the process (Python, Django, sync) to
  the end of its first tick;
* idle tick: median and p99 of ``Scheduler.tick()`` with nothing due, and of a
  full tick that also runs the recovery queries;
* idle CPU: CPU-seconds the process uses per minute in ``Scheduler.run()``;
* RSS after all of the above.

Then ``--burst`` rows are all made due in the same second and one scheduler
fires them: time from the slot to the last run committed. Last, ``--lag``
seconds of an every-second task with one scheduler and one idle worker give
the start lag (``started_at - scheduled_for``), median and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from extra.bench import common

FILL_SQL = """
INSERT INTO sisy_task (name, label, source, schedule, timezone, enabled, paused, orphaned,
    iterations, wait_for_schedule, allow_overlap, catch_up, retries, retry_backoff, channel,
    running, userdata, func_info, created_at, modified_at, next_run)
SELECT 'bench.t' || i, 'bench.t' || i, 'database', %s, '', true, false, false,
    0, true, false, 'latest', 0, 1.0, '', false, '{}', '{}', now(), now(), {next_run}
FROM generate_series(1, %s) AS i
"""


def fill(count: int, schedule: str, next_run_sql: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE sisy_run, sisy_task RESTART IDENTITY CASCADE")
        cursor.execute(FILL_SQL.replace("{next_run}", next_run_sql), [schedule, count])
        cursor.execute("ANALYZE sisy_task")


def child(mode: str, count: int, idle_seconds: float) -> dict:
    process = subprocess.run(
        [sys.executable, "-m", "extra.bench.scheduler_bench", "--child", mode,
         "--idle-seconds", str(idle_seconds)],
        env=common.env("pg", BENCH_LAUNCH=repr(time.time()), BENCH_COUNT=str(count)),
        cwd=common.ROOT, capture_output=True, text=True, check=True,
    )
    return json.loads(process.stdout.strip().splitlines()[-1])


def measure_idle(idle_seconds: float) -> dict:
    import django

    django.setup()
    from django.utils import timezone

    from sisy.scheduler import Scheduler
    from sisy.sync import sync_tasks

    scheduler = Scheduler()
    sync_tasks()
    scheduler.tick(timezone.now())
    first_tick = time.time() - float(os.environ["BENCH_LAUNCH"])

    ticks, full = [], []
    for _ in range(300):
        begin = time.perf_counter()
        scheduler.tick(timezone.now())
        ticks.append(time.perf_counter() - begin)
    for _ in range(100):
        scheduler._next_redelivery = scheduler._next_lost_check = None
        begin = time.perf_counter()
        scheduler.tick(timezone.now())
        full.append(time.perf_counter() - begin)

    stop = threading.Event()
    loop = threading.Thread(target=scheduler.run, args=(stop,))
    loop.start()
    time.sleep(1.0)  # past the start-up sync
    cpu = time.process_time()
    time.sleep(idle_seconds)
    cpu = time.process_time() - cpu
    stop.set()
    loop.join()
    return {
        "first_tick_s": first_tick,
        "tick_ms": common.median(ticks) * 1000, "tick_p99_ms": common.percentile(ticks, .99) * 1000,
        "full_tick_ms": common.median(full) * 1000,
        "cpu_s_per_min": cpu * 60 / idle_seconds,
        "rss_mib": common.rss_mib(os.getpid()),
    }


def measure_burst() -> dict:
    import django

    django.setup()
    from datetime import UTC, datetime, timedelta

    from sisy.dispatch import sender
    from sisy.models import Run, Task
    from sisy.scheduler import Scheduler

    scheduler = Scheduler()
    slot = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    Task.objects.update(next_run=slot)
    time.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
    fired = scheduler.fire_due(datetime.now(UTC))
    elapsed = (datetime.now(UTC) - slot).total_seconds()
    sender.flush(30)
    sent = (datetime.now(UTC) - slot).total_seconds()
    return {"runs": Run.objects.filter(scheduled_for=slot).count(), "fired": len(fired),
            "fire_s": elapsed, "sent_s": sent, "rss_mib": common.rss_mib(os.getpid())}


def measure_lag(seconds: float) -> dict:
    """Start lag (``started_at - scheduled_for``) of an every-second task with an idle worker.

    One ``sisy_heartbeat`` and one ``sisy_worker`` process; the task row is a
    database row naming the registered ``bench.noop`` (it fails for want of its
    argument, which does not matter here: ``started_at`` is set by the claim).
    """
    from datetime import UTC, datetime, timedelta

    from sisy.models import Run, Task

    fill(0, "* * * * * *", "now()")
    Task.objects.create(name="bench.noop", label="lag probe", schedule="* * * * * *",
                        allow_overlap=True,
                        next_run=datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3))
    processes = [common.manage("sisy_worker", SISY_LOG="ERROR"), common.manage("sisy_heartbeat")]
    time.sleep(seconds)
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)
    runs = list(Run.objects.filter(started_at__isnull=False, attempt=1)
                .values_list("scheduled_for", "enqueued_at", "started_at"))
    worker_up = min((started for _, _, started in runs), default=None)
    runs = [run for run in runs if run[0] > worker_up]  # the worker was up for these
    fired = [(enqueued - slot).total_seconds() * 1000 for slot, enqueued, _ in runs]
    lags = [(started - slot).total_seconds() * 1000 for slot, _, started in runs]
    return {"runs": len(lags), "fire_median_ms": common.median(fired),
            "fire_p99_ms": common.percentile(fired, .99),
            "median_ms": common.median(lags), "p99_ms": common.percentile(lags, .99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=15.0)
    parser.add_argument("--lag", type=float, default=30.0,
                        help="seconds of the start-lag measurement (0: skip)")
    parser.add_argument("--child", choices=["idle", "burst"])
    options = parser.parse_args()
    if options.child == "idle":
        print(json.dumps(measure_idle(options.idle_seconds)))
        return
    if options.child == "burst":
        print(json.dumps(measure_burst()))
        return

    common.setup_django("pg")
    rows = []
    for count in map(int, options.sizes.split(",")):
        fill(count, "0 * * * *", "now() + interval '1 hour' + i * interval '1 second'")
        r = child("idle", count, options.idle_seconds)
        rows.append([f"{count:,}", f"{r['first_tick_s']:.2f}", f"{r['tick_ms']:.2f}",
                     f"{r['tick_p99_ms']:.2f}", f"{r['full_tick_ms']:.2f}",
                     f"{r['cpu_s_per_min']:.3f}", f"{r['rss_mib']:.1f}"])
    print("Scheduler, idle (PostgreSQL, nothing due)")
    print(common.table(["tasks", "start→1st tick s", "tick ms p50", "tick ms p99",
                        "full tick ms p50", "idle CPU-s/min", "RSS MiB"], rows))
    if options.burst:
        fill(options.burst, "* * * * * *", "now() + interval '1 hour'")
        r = child("burst", options.burst, 0)
        print()
        print(f"Burst: {options.burst:,} tasks due in the same second")
        print(common.table(
            ["runs created", "fired by this scheduler", "slot→all committed s",
             "slot→all wake-ups sent s", "RSS MiB"],
            [[f"{r['runs']:,}", f"{r['fired']:,}", f"{r['fire_s']:.2f}", f"{r['sent_s']:.2f}",
              f"{r['rss_mib']:.1f}"]],
        ))
    if options.lag:
        r = measure_lag(options.lag)
        print()
        print(f"Start lag of an every-second task, one scheduler and one idle worker, "
              f"{options.lag:g} s")
        print(common.table(
            ["runs", "fired: median ms", "fired: p99 ms", "started: median ms",
             "started: p99 ms"],
            [[r["runs"], f"{r['fire_median_ms']:.1f}", f"{r['fire_p99_ms']:.1f}",
              f"{r['median_ms']:.1f}", f"{r['p99_ms']:.1f}"]]))


if __name__ == "__main__":
    main()
