"""Where a lone run's enqueue → body-start time goes, on PostgreSQL + Redis.

    python -m extra.bench.latency_bench [--runs 200] [--busy 4] [--prepared]

Starts one worker (``traced_worker.py``: ``sisy_worker`` noting when it pops
each wake-up and runs its claim statement) and runs ``--runs`` no-op tasks one
after another (10 ms apart, as W2 does), each timed in legs: in the
``.delay()`` call, validation and the durable ``INSERT``, then sending the
lone wake-up to Redis until the call returns; from the ``INSERT``'s end to
the worker's pop of the wake-up; from the pop to the claim ``UPDATE``; the
claim statement itself (with building its ``Run``); and from its end to the
body. The same legs are timed on the floor of a run's path with Sisy's
guarantees: a durable ``INSERT`` of the same row from bare psycopg, its id
pushed to Redis (``LPUSH``), and a bare process that pops it, claims the row
with a durable ``UPDATE`` and leaves its mark -- the "durable floor" of the
side-by-side table (``durable_floor.py``), no Django, no threads, nothing of
Sisy's -- with its statements prepared and, as Django's default settings
leave Sisy's, not. Beside them, in the same script: Sisy's whole path again
with the caller busy in Python for ``--busy`` ms (default 4) after
``.delay()``, as a view rendering its response is; and ``claim()`` of a
queued run and a bare ``UPDATE`` by primary key from psycopg, autocommit,
each timed back to back. ``--prepared`` measures Sisy with
``"prepare_threshold": 5`` (the side-by-side table's "Sisy PG prepared").
Prints medians and p95s in ms. Uses the side-by-side benchmark's database
and Redis prefix (see ``systems.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from extra.bench import common, marks, systems, traced_worker, workloads


def _traced(base: type[systems.System], path: str) -> systems.System:
    """``base`` with its worker's legs traced into ``path`` (``traced_worker.py``)."""

    class Traced(base):
        def env(self, **extra) -> dict:
            return super().env(SISY_BENCH_TRACE=path, **extra)

        def worker_commands(self, processes: int) -> list[list[str]]:
            if issubclass(base, systems.DurableFloor):
                return super().worker_commands(processes)
            return [[sys.executable, "-m", "extra.bench.traced_worker"]] * processes

    return Traced()


def _series(system, enqueue, runs: int, path: str, busy: float | None = None):
    """Run ``runs`` runs 10 ms apart on one worker of ``system``; the seconds of each
    leg (:data:`LEGS`) of each run, and with ``busy`` (seconds) the whole of as
    many runs again with the caller busy that long after enqueueing each.
    ``enqueue(i)`` enqueues run ``i`` and returns its id and when its ``INSERT``
    returned."""
    open(path, "w").close()
    times, whole_busy = [], []
    with workloads.start_workers(system, 1, 2.0) as processes:
        system.before_batch()
        marks.reset()
        for i in range(runs):
            began = time.time()
            run_id, inserted = enqueue(i)
            returned = time.time()
            times.append((run_id, {"began": began, "inserted": inserted,
                                   "returned": returned, "body": _mark(processes, i)[1]}))
            time.sleep(0.01)
        if busy is not None:
            marks.reset()
            for i in range(runs):
                began = time.time()
                enqueue(i)
                _work(busy)
                whole_busy.append(_mark(processes, i)[1] - began)
                time.sleep(0.01)
    traced = traced_worker.read(path)  # written by the worker as it stopped
    legs: dict[str, list[float]] = {name: [] for name, _, _ in LEGS}
    for run_id, events in times:
        events.update(traced.get(run_id, {}))
        for name, start, end in LEGS:
            if start in events and end in events:
                legs[name].append(events[end] - events[start])
    return legs, whole_busy


def _floor(runs: int, floor_class: type[systems.DurableFloor], path: str) -> dict:
    """:func:`_series` on the durable floor (``durable_floor.py``)."""
    floor = _traced(floor_class, path)
    floor.setup()
    try:
        return _series(floor, floor.enqueue_timed, runs, path)[0]
    finally:
        floor.teardown()


def _work(seconds: float) -> None:
    """Keep this thread busy in Python (holding the GIL) for ``seconds``, as a view
    that renders its response after ``.delay()`` does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(50))


def _mark(processes, i: int) -> tuple:
    """The mark run ``i``'s body left: ``(i, body start)``."""
    mark = marks.pop(30.0)
    if mark is None:
        processes.check()
        raise RuntimeError(f"run {i} did not start in 30 s")
    return mark


#: The legs of a run: (name, from event, to event). Events: "began", "inserted"
#: and "returned" in this process, "body" from the mark, the rest from the traced
#: worker.
LEGS = (
    ("enqueue: validation, the durable INSERT", "began", "inserted"),
    ("enqueue: the wake-up sent, until it returns", "inserted", "returned"),
    ("INSERT's end → the worker pops the wake-up", "inserted", "pop"),
    ("pop → the claim statement begins", "pop", "sql0"),
    ("the claim statement (and its Run objects)", "sql0", "sql1"),
    ("claim's end → body", "sql1", "body"),
    ("whole: before → body", "began", "body"),
)


def _cell(values: list[float], runs: int, p95: bool = False) -> str:
    """The median (or p95) of ``values`` in ms, with their count if some runs lack them."""
    if not values:
        return "—"
    value = common.percentile(values, 0.95) if p95 else common.median(values)
    text = f"{value * 1000:.2f}"
    return text if len(values) == runs else f"{text} ({len(values)})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="sequential runs")
    parser.add_argument("--busy", type=float, default=4.0,
                        help="ms of Python the caller runs after .delay() in the last series")
    parser.add_argument("--prepared", action="store_true",
                        help='Sisy with DATABASES OPTIONS {"prepare_threshold": 5}')
    args = parser.parse_args(argv)
    trace_file = tempfile.NamedTemporaryFile(prefix="sisy-bench-trace-", delete=False)
    trace_file.close()
    path = trace_file.name
    system = _traced(systems.SisyPrepared if args.prepared else systems.Sisy, path)
    system.setup()
    try:
        from django.db import connection

        from extra.bench.benchapp.tasks import mark
        from sisy import dispatch
        from sisy.execution import claim
        from sisy.models import Run

        inserted: dict[int, float] = {}
        insert = dispatch._insert

        def timed_insert(run, **kwargs):
            run = insert(run, **kwargs)
            inserted[run.pk] = time.time()
            return run

        def enqueue(i: int) -> tuple[int, float]:
            run = mark.delay(i)
            return run.pk, inserted.pop(run.pk)

        dispatch._insert = timed_insert
        try:
            sisy, busy = _series(system, enqueue, args.runs, path, busy=args.busy / 1000)
        finally:
            dispatch._insert = insert

        system.before_batch()
        runs = [mark.delay(i) for i in range(2 * args.runs)]
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
        floors = [_floor(args.runs, floor, path)
                  for floor in (systems.DurableFloor, systems.DurableFloorUnprepared)]
    finally:
        system.teardown()
        os.unlink(path)
    rows = [(name, _cell(sisy[name], args.runs), _cell(sisy[name], args.runs, p95=True),
             *(_cell(floor[name], args.runs) for floor in floors)) for name, _, _ in LEGS]
    rows += [(f"whole, {args.busy:g} ms of Python after enqueueing", _cell(busy, args.runs),
              _cell(busy, args.runs, p95=True), "", ""),
             ("claim(), back to back", _cell(claims, args.runs),
              _cell(claims, args.runs, p95=True), "", ""),
             ("bare UPDATE by id, autocommit", _cell(updates, args.runs),
              _cell(updates, args.runs, p95=True), "", "")]
    print(common.table(("leg (ms)", "Sisy p50", "p95", "floor p50", "floor unprepared p50"),
                       rows))


if __name__ == "__main__":
    main()
