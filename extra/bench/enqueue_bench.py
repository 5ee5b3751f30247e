"""``.delay()`` from sync code on its own (no worker running), beside its floor.

    python -m extra.bench.enqueue_bench [--tasks 1000] [--batches 5]

Prints the median rate over several batches of:

- the floor: a prepared ``INSERT`` of the same row into the same table from
  bare psycopg, autocommit, durable -- what the disk allows one connection;
- durable ``.delay()`` in a loop (the default);
- ``.delay()`` with ``SISY["DURABLE_ENQUEUE"] = False``;
- ``.delay()`` in a loop inside ``transaction.atomic()``, 100 per commit.

Every wake-up goes to Redis as usual; nothing consumes it. Uses the database
``sisy_bench`` and the Redis prefix ``sisy-bench``, and vacuums the run table
between batches (this machine's PostgreSQL runs with autovacuum off).
"""

from __future__ import annotations

import argparse
import time

from extra.bench import common


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="calls per batch")
    parser.add_argument("--batches", type=int, default=5, help="batches per way; median shown")
    args = parser.parse_args(argv)
    common.setup_django("pg")

    from django.db import connection, transaction
    from django.test import override_settings
    from django.utils import timezone

    from extra.bench.benchapp.tasks import noop
    from sisy import dispatch
    from sisy.models import Run

    floor = common.bare_connection()

    def bare(n):
        now = timezone.now()
        for _ in range(n):
            common.bare_insert(floor, "sisy-run-task", now)

    def durable(n):
        for i in range(n):
            noop.delay(i)

    def fast(n):
        with override_settings(SISY={"DURABLE_ENQUEUE": False}):
            for i in range(n):
                noop.delay(i)

    def grouped(n):
        for start in range(0, n, 100):
            with transaction.atomic():
                for i in range(start, min(n, start + 100)):
                    noop.delay(i)

    ways = {"floor: bare psycopg INSERT, durable": bare, ".delay(), durable (default)": durable,
            ".delay(), DURABLE_ENQUEUE=False": fast, ".delay(), 100 per transaction": grouped}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for way in ways.values():  # warm up: connections, caches, the sender thread
        way(100)
    dispatch.sender.flush()
    for _ in range(args.batches):
        for name, way in ways.items():
            began = time.perf_counter()
            way(args.tasks)
            rates[name].append(args.tasks / (time.perf_counter() - began))
            dispatch.sender.flush()
            Run.objects.all().delete()
            with connection.cursor() as cursor:
                cursor.execute(f"VACUUM {Run._meta.db_table}")
    floor.close()
    rows = [(name, f"{common.median(values):,.0f}",
             f"{min(values):,.0f}–{max(values):,.0f}") for name, values in rates.items()]
    print(common.table(("way", "median /s", f"range over {args.batches} batches"), rows))


if __name__ == "__main__":
    main()
