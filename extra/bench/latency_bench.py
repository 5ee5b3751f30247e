"""Where a lone run's enqueue → body-start time goes, on PostgreSQL + Redis.

    python -m extra.bench.latency_bench [--runs 200] [--busy 4]

Starts one ``sisy_worker`` and runs ``--runs`` no-op tasks one after another
(10 ms apart, as W2 does), each timed in three legs: the ``.delay()`` call
(validation, the durable ``INSERT`` and, a lone wake-up, sending it to
Redis); from its return to the worker's start of execution (the worker's
receive and its durable claim ``UPDATE``); and from there to the body. Beside them, in the
same script: the whole again with the caller busy in Python for ``--busy``
ms (default 4) after ``.delay()``, as a view rendering its response is;
``claim()`` of a queued run back to back, a bare ``UPDATE``
by primary key from psycopg, autocommit, and the floor of a run's path with
Sisy's guarantees, timed like the whole: a durable prepared ``INSERT`` of
the same row from bare psycopg, its id pushed to Redis (``LPUSH``), and a
bare process that pops it, claims the row with a durable prepared ``UPDATE``
and leaves its mark -- the "durable floor" of the side-by-side table
(``durable_floor.py``), no Django, no threads, nothing of Sisy's. Prints
medians and p95s in ms. Uses the side-by-side benchmark's database and Redis prefix (see
``systems.py``).
"""

from __future__ import annotations

import argparse
import time

from extra.bench import common, marks, systems, workloads


def _floor(runs: int) -> list[float]:
    """W2 on the durable floor (``durable_floor.py``): ``runs`` runs 10 ms apart,
    seconds from before the bare ``INSERT`` to the mark its worker leaves after the
    durable claim."""
    floor = systems.DurableFloor()
    floor.setup()
    try:
        with workloads.start_workers(floor, 1, 2.0) as processes:
            return workloads.latency(floor, processes, runs)
    finally:
        floor.teardown()


def _work(seconds: float) -> None:
    """Keep this thread busy in Python (holding the GIL) for ``seconds``, as a view
    that renders its response after ``.delay()`` does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(50))


def _mark(processes, i: int) -> tuple:
    """The mark run ``i``'s body left: ``(i, body start, execution start)``."""
    mark = marks.pop(30.0)
    if mark is None:
        processes.check()
        raise RuntimeError(f"run {i} did not start in 30 s")
    return mark


def _row(name: str, values: list[float]) -> tuple[str, str, str]:
    return (name, f"{common.median(values) * 1000:.2f}",
            f"{common.percentile(values, 0.95) * 1000:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="sequential runs")
    parser.add_argument("--busy", type=float, default=4.0,
                        help="ms of Python the caller runs after .delay() in the last series")
    args = parser.parse_args(argv)
    system = systems.Sisy()
    system.setup()
    try:
        from django.db import connection

        from extra.bench.benchapp.tasks import trace
        from sisy.execution import claim
        from sisy.models import Run

        legs: dict[str, list[float]] = {"the .delay() call": [], "return → execution starts": [],
                                        "execution starts → body": [], "whole: before → body": []}
        busy = []
        with workloads.start_workers(system, 1, 2.0) as processes:
            system.before_batch()
            marks.reset()
            for i in range(args.runs):
                began = time.time()
                trace.delay(i)
                returned = time.time()
                _, body, executing = _mark(processes, i)
                for name, value in zip(legs, (returned - began, executing - returned,
                                              body - executing, body - began), strict=True):
                    legs[name].append(value)
                time.sleep(0.01)
            for i in range(args.runs):
                began = time.time()
                trace.delay(i)
                _work(args.busy / 1000)
                busy.append(_mark(processes, i)[1] - began)
                time.sleep(0.01)
        rows = [_row(name, values) for name, values in legs.items()]
        rows.append(_row(f"whole, {args.busy:g} ms of Python after .delay()", busy))

        system.before_batch()
        runs = [trace.delay(i) for i in range(2 * args.runs)]
        system.flush()  # their wake-ups sent (no worker takes them) before the timing
        claims, updates = [], []
        for run in runs[:args.runs]:
            began = time.perf_counter()
            claim(run.pk, "latency-bench", name=run.task_name)
            claims.append(time.perf_counter() - began)
        raw = connection.connection
        for run in runs[args.runs:]:
            began = time.perf_counter()
            raw.execute(f"UPDATE {Run._meta.db_table} SET status = 'running' WHERE id = %s",
                        (run.pk,))
            updates.append(time.perf_counter() - began)
        rows += [_row("claim(), back to back", claims),
                 _row("bare UPDATE by id, autocommit", updates)]
        rows.append(_row("floor: bare INSERT → Redis → claim", _floor(args.runs)))
    finally:
        system.teardown()
    print(common.table(("leg", "p50 ms", "p95 ms"), rows))


if __name__ == "__main__":
    main()
