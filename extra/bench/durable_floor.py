"""The durable floor: Sisy's guarantees for a run, with nothing of Sisy.

    python -m extra.bench.durable_floor    (the worker; the side-by-side
                                            benchmark starts it as "pg-floor")

The producer (``systems.DurableFloor.enqueue``) does what ``.delay()`` must do
at the least: the same durable, prepared ``INSERT`` of the run's row from bare
psycopg, then its id to a Redis list (``LPUSH``). This worker pops up to
:data:`BATCH` waiting ids at once (``BLMPOP``, as ``sisy_worker`` pops up to ten
wake-ups of short runs), claims their rows in one durable prepared ``UPDATE``
(queued → running) before it calls anything (prepared, but planned at each
execution: ``plan_cache_mode = force_custom_plan``), calls the body (the same
``marks.record``), and writes their outcomes in one ``UPDATE`` committed with
``synchronous_commit = off``, as Sisy's default ``DURABLE_RESULTS = False``
does. No Django, no threads, no validation, no event loop: whatever a design
with these guarantees costs, it costs at least this on the same machine.

With ``SISY_BENCH_FLOOR_PREPARED=0`` ("pg-floor-unprepared") neither the
``INSERT`` nor the claim is prepared: each is parsed and planned at every
execution, as Django's default settings (no ``prepare_threshold``) have
PostgreSQL do for Sisy's statements. That is the floor of Sisy's default
configuration.
"""

from __future__ import annotations

import os
import signal
import time

from extra.bench import marks, traced_worker

#: The Redis list (in the marks' database) that carries the run ids.
QUEUE = marks.PREFIX + "durable-floor"
#: The most ids one pop takes.
BATCH = 10

CLAIM = ("UPDATE sisy_run SET status = 'running', started_at = now(), worker = 'floor' "
         "WHERE id = ANY(%s) AND status = 'queued' RETURNING id, args")
OUTCOME = ("UPDATE sisy_run AS r SET status = 'succeeded', result = 'null', "
           "finished_at = clock_timestamp() "
           "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS sisy_async "
           "WHERE r.id = ANY(%s) AND r.status = 'running'")


def prepared() -> bool:
    """Whether the floor's statements are prepared (``SISY_BENCH_FLOOR_PREPARED``, default 1)."""
    return os.environ.get("SISY_BENCH_FLOOR_PREPARED", "1") != "0"


def connect():
    """A psycopg connection (autocommit) to the benchmark's database, from the environment."""
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=5432, user="postgres",
                           dbname=os.environ.get("SISY_BENCH_DB", "sisy_bench"), autocommit=True)


def work() -> None:
    """Pop ids, claim their rows durably, run the bodies, write the outcomes; forever."""
    conn = connect()
    prepare = prepared()
    # Prepared (parsed once), but planned at each execution with the ids at hand: a
    # generic plan made while the table was small would read the whole table.
    conn.execute("SET plan_cache_mode = force_custom_plan")
    redis = marks.client()
    trace, lines = os.environ.get("SISY_BENCH_TRACE"), []
    if trace:  # latency_bench: the times of the legs, written on SIGTERM
        def stop(signum, frame):
            traced_worker.write(trace, lines)
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
    while True:
        popped = redis.blmpop(5, 1, QUEUE, direction="RIGHT", count=BATCH)
        if popped is None:
            continue
        ids = [int(item) for item in popped[1]]
        if trace:
            began = time.time()
            lines.extend(f"{run_id} pop {began:.6f}\n" for run_id in ids)
        rows = conn.execute(CLAIM, (ids,), prepare=prepare).fetchall()
        if trace:
            traced_worker.claimed(lines, ids, began, time.time())
        for _, args in rows:
            marks.record(args[0])
        conn.execute(OUTCOME, ([run_id for run_id, _ in rows],), prepare=prepare)


if __name__ == "__main__":
    work()
