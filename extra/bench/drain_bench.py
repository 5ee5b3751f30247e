"""How fast one worker drains a backlog, beside a bare floor, on PostgreSQL.

    python -m extra.bench.drain_bench [--tasks 5000] [--batches 3] [--workers 1]
                                      [--context | --standing [--overlap]]

Queues ``--tasks`` no-op runs (``.delay()`` in one transaction; their
wake-ups go to Redis and are left there; with ``--context``, of a no-op that
takes a context; with ``--standing``, each of a standing ``Task`` row of its
own that forbids overlap (``--overlap``: allows it), written as the scheduler
writes them), then drains them in this process (with ``--workers N``: in N
processes at once, each until the queue is empty), timed from the first
claim until every outcome is stored, in two ways taken in turn:

- ``Worker.drain()``: what ``sisy_worker`` does once it is behind -- batch
  claims of up to ten short runs, its look for runs of tasks that forbid
  overlap, the call through ``execute()``, outcomes from its writer thread;
- the floor: bare psycopg on one connection, no Django, that claims the ten
  oldest due runs in one prepared durable ``UPDATE``, calls the same body and
  stores their outcomes in one ``UPDATE`` committed with ``synchronous_commit
  = off`` (``durable_floor.OUTCOME``) -- the least a drain with Sisy's
  guarantees costs.

The W1 row of the side-by-side table cannot show this: there the producer's
durable ``INSERT`` sets the pace, and a cheaper worker only catches up sooner.
Prints the median rate, the draining processes' CPU and PostgreSQL's CPU per run.
Uses the database ``sisy_bench``; vacuums the run table before each drain.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

from extra.bench import common
from extra.bench.cpu import server_seconds
from extra.bench.durable_floor import OUTCOME

#: The floor's claim: the ten oldest due runs that allow overlap, as ``claim_batch``
#: chooses them (with ``--standing`` alone, of the tasks that forbid it: the floor
#: knows no overlap).
CLAIM = ("UPDATE sisy_run SET status = 'running', started_at = now(), worker = 'floor' "
         "WHERE id IN (SELECT id FROM sisy_run WHERE status = 'queued' AND not_before <= now() "
         "AND channel = %s AND exclusive = %s ORDER BY not_before, id LIMIT 10 "
         "FOR UPDATE SKIP LOCKED) RETURNING id, args")


def sisy_drain(channel: str, exclusive: bool, floor=None) -> int:
    """``Worker.drain()`` until a drain claims nothing (one is enough for one worker;
    beside others, a drain may end while they hold the runs it would take)."""
    from sisy.worker import Worker

    worker = Worker(name=f"drain-bench-{os.getpid()}")
    worker.seconds_per_run = 0.0001  # known short runs: claimed ten at a time
    done = 0
    try:
        while drained := worker.drain():
            done += drained
        return done
    finally:
        worker._outcomes.close()  # waits for every outcome


def floor_connection():
    """The floor's bare connection, opened before the timing as Django's is."""
    floor = common.bare_connection()
    floor.execute("SET plan_cache_mode = force_custom_plan")  # as durable_floor.py
    return floor


def bare_drain(channel: str, exclusive: bool, floor) -> int:
    """The floor: ten runs per prepared durable claim on one bare connection."""
    from extra.bench.benchapp.tasks import noop

    done = 0
    while rows := floor.execute(CLAIM, (channel, exclusive), prepare=True).fetchall():
        for _, arguments in rows:
            noop.__wrapped__(*arguments)
        floor.execute(OUTCOME, ([run_id for run_id, _ in rows],), prepare=True)
        done += len(rows)
    return done


def _child(way, channel: str, exclusive: bool, ready, start, results) -> None:
    """One draining process: set up, say so, wait for the start, drain, report
    ``(runs, CPU seconds)``."""
    common.setup_django("pg")
    from django.db import connection

    connection.ensure_connection()
    floor = floor_connection() if way is bare_drain else None
    ready.put(os.getpid())
    start.wait()
    cpu = time.process_time()
    done = way(channel, exclusive, floor)
    results.put((done, time.process_time() - cpu))


def in_processes(way, count: int, channel: str, exclusive: bool) -> tuple[int, float, float]:
    """Drain with ``way`` in ``count`` processes at once: ``(runs, seconds, CPU seconds)``,
    timed from the start signal until the last process is done."""
    context = multiprocessing.get_context("spawn")
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    processes = [context.Process(target=_child,
                                 args=(way, channel, exclusive, ready, start, results))
                 for _ in range(count)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=60)
    began = time.perf_counter()
    start.set()
    reports = [results.get(timeout=600) for _ in processes]
    seconds = time.perf_counter() - began
    for process in processes:
        process.join(60)
    return sum(done for done, _ in reports), seconds, sum(cpu for _, cpu in reports)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000, help="queued runs per drain")
    parser.add_argument("--batches", type=int, default=3, help="drains per way; median shown")
    parser.add_argument("--workers", type=int, default=1,
                        help="draining processes at once (1: this process)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--context", action="store_true",
                      help="Sisy's runs are of a no-op task with takes_context=True")
    kind.add_argument("--standing", action="store_true",
                      help="each run belongs to a standing Task row of its own, which "
                           "forbids overlap, as @sisy.periodic's do by default")
    parser.add_argument("--overlap", action="store_true",
                        help="with --standing: the tasks allow overlap")
    args = parser.parse_args(argv)
    common.setup_django("pg")

    from django.db import connection, transaction
    from django.utils import timezone

    from extra.bench.benchapp.tasks import noop, noop_context
    from sisy import dispatch
    from sisy.conf import get_settings
    from sisy.models import Run, Task

    channel = get_settings().RUN_TASK_CHANNEL
    exclusive = args.standing and not args.overlap
    ways = {"Worker.drain() (sisy_worker behind)": sisy_drain,
            "floor: bare psycopg, 10 per claim": bare_drain}
    floor = floor_connection() if args.workers == 1 else None
    if args.workers > 1:
        ways = {f"{name}, {args.workers} processes": way for name, way in ways.items()}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
    for _ in range(args.batches):
        for name, way in ways.items():
            Run.objects.all().delete()
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM ANALYZE {Run._meta.db_table}")
            Task.objects.filter(name__startswith="bench.standing-").delete()
            with transaction.atomic():
                if args.standing:  # what the scheduler writes when the tasks come due
                    now = timezone.now()
                    rows = Task.objects.bulk_create(
                        [Task(name=f"bench.standing-{i}", schedule="* * * * *",
                              allow_overlap=args.overlap) for i in range(args.tasks)])
                    Run.objects.bulk_create(
                        [Run(task=row, task_name=noop.name, args=[i], channel=channel,
                             scheduled_for=now, not_before=now, exclusive=exclusive)
                         for i, row in enumerate(rows)])
                for i in range(0 if args.standing else args.tasks):
                    (noop_context if args.context else noop).delay(i)
            dispatch.sender.flush()
            db = server_seconds()["db"]
            if args.workers > 1:
                done, seconds, cpu = in_processes(way, args.workers, channel, exclusive)
            else:
                cpu, began = time.process_time(), time.perf_counter()
                done = way(channel, exclusive, floor)
                seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
            if done != args.tasks or Run.objects.filter(status="succeeded").count() != done:
                raise RuntimeError(f"{name}: {done} of {args.tasks} runs drained")
            figures[name].append((done / seconds, cpu / done * 1e6,
                                  (server_seconds()["db"] - db) / done * 1e6))
    Run.objects.all().delete()
    Task.objects.filter(name__startswith="bench.standing-").delete()
    if floor is not None:
        floor.close()
    rows = [(name, f"{common.median([f[0] for f in values]):,.0f}",
             f"{min(f[0] for f in values):,.0f}–{max(f[0] for f in values):,.0f}",
             f"{common.median([f[1] for f in values]):,.0f}",
             f"{common.median([f[2] for f in values]):,.0f}") for name, values in figures.items()]
    print(common.table(("way", "median runs/s", f"range over {args.batches}",
                        "process CPU µs/run", "PostgreSQL CPU µs/run"), rows))


if __name__ == "__main__":
    main()
