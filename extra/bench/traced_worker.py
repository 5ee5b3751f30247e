"""``sisy_worker`` with timestamps: when each wake-up was popped and when its run's claim
statement began and ended.

    SISY_BENCH_TRACE=/path/to/file python -m extra.bench.traced_worker

``latency_bench`` starts it in place of ``sisy_worker`` to split the worker's
part of a run's latency into legs. It wraps two of Sisy's functions from the
outside (nothing in Sisy knows of it) and notes ``"<run id> <event>
<time.time()>"`` lines, kept in memory and written to the file when the
worker exits (SIGTERM) -- so tracing costs a list append per event, not a
write. Events: ``pop`` (the wake-up came out of Redis), ``sql0`` / ``sql1``
(the claim statement was about to be sent / its rows were built into
``Run`` objects). The body's start is the mark it leaves. ``durable_floor.py``
notes the same events when ``SISY_BENCH_TRACE`` is set.
"""

from __future__ import annotations

import atexit
import os
import time


def write(path: str, lines: list[str]) -> None:
    with open(path, "a") as out:
        out.writelines(lines)


def claimed(lines: list[str], run_ids, began: float, ended: float) -> None:
    """Note that the claim statement of ``run_ids`` ran from ``began`` to ``ended``."""
    lines.extend(f"{run_id} sql0 {began:.6f}\n{run_id} sql1 {ended:.6f}\n" for run_id in run_ids)


def install(path: str) -> None:
    """Wrap the worker's pop and claim statement to note their times."""
    from sisy import dispatch, execution

    lines: list[str] = []
    atexit.register(write, path, lines)

    pop_wakeups = dispatch.pop_wakeups

    def traced_pop(*args, **kwargs):
        messages = pop_wakeups(*args, **kwargs)
        now = time.time()
        lines.extend(f"{message.get('run')} pop {now:.6f}\n" for message in messages)
        return messages

    claim_sql = execution._claim_sql

    def traced_claim_sql(*args, **kwargs):
        began = time.time()
        runs = claim_sql(*args, **kwargs)
        claimed(lines, [run.pk for run in runs], began, time.time())
        return runs

    dispatch.pop_wakeups = traced_pop
    execution._claim_sql = traced_claim_sql


def read(path: str) -> dict[int, dict[str, float]]:
    """The events of each run id in a trace file: the first time of each."""
    events: dict[int, dict[str, float]] = {}
    with open(path) as trace:
        for line in trace:
            run_id, event, at = line.split()
            if run_id.isdigit():
                events.setdefault(int(run_id), {}).setdefault(event, float(at))
    return events


def main() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    install(os.environ["SISY_BENCH_TRACE"])
    call_command("sisy_worker")


if __name__ == "__main__":
    main()
