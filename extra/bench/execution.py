"""W1–W3 for Sisy beside the raw channels-redis floor, in one script.

    python -m extra.bench.execution [--tasks 5000] [--latency 200] [--mode pg|embedded]

Prints enqueue rate from sync code, end-to-end throughput with one worker
process (first enqueue to last finish), enqueue→start latency p50/p95 over
sequential runs, and the idle worker's RSS. Uses the database ``sisy_bench``
and the Redis prefix ``sisy-bench``; starts nothing global.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from extra.bench import common, floor


def measure_floor(count: int, sequential: int) -> dict:
    receiver = subprocess.Popen([sys.executable, "-m", "extra.bench.floor", "receive", str(count)],
                                cwd=common.ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    start, sent = asyncio.run(floor.send(count))
    result = json.loads(receiver.communicate(timeout=120)[0])
    receiver = subprocess.Popen(
        [sys.executable, "-m", "extra.bench.floor", "receive", str(sequential)],
        cwd=common.ROOT, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    asyncio.run(floor.send(sequential, sequential_gap=0.005))
    latencies = json.loads(receiver.communicate(timeout=120)[0])["latencies"]
    return {
        "enqueue": count / (sent - start),
        "e2e": count / (result["last"] - start),
        "p50": common.median(latencies) * 1000,
        "p95": common.percentile(latencies, 0.95) * 1000,
        "rss": float("nan"),
    }


def measure_sisy(mode: str, count: int, sequential: int) -> dict:
    common.setup_django(mode)
    from django.db.models import Max, Min

    from extra.bench.benchapp.tasks import noop
    from sisy.dispatch import sender
    from sisy.models import Run

    Run.objects.all().delete()
    command = "sisy_worker" if mode == "pg" else "sisy_run"
    worker = common.manage(command, *(["--no-scheduler"] if mode != "pg" else []), mode=mode)
    try:
        time.sleep(3.0)
        idle_rss = common.rss_mib(worker.pid)
        began = time.time()
        for i in range(count):
            noop.delay(i)
        enqueued = time.time()
        sender.flush()
        done = lambda: Run.objects.filter(status="succeeded").count() >= count  # noqa: E731
        if not common.wait_until(done, 300, interval=0.2):
            raise SystemExit(f"Sisy ({mode}) did not finish {count} runs in 300 s")
        span = Run.objects.aggregate(first=Min("enqueued_at"), last=Max("finished_at"))
        e2e = count / (span["last"] - span["first"]).total_seconds()
        Run.objects.all().delete()
        fast = None
        if mode == "pg":  # the same with SISY["DURABLE_ENQUEUE"] = False
            from django.test import override_settings

            with override_settings(SISY={"POLL_INTERVAL": 1.0, "DURABLE_ENQUEUE": False}):
                began_fast = time.time()
                for i in range(count):
                    noop.delay(i)
                fast = count / (time.time() - began_fast)
            sender.flush()
            common.wait_until(done, 300, interval=0.2)
            Run.objects.all().delete()
        latencies = []
        for i in range(sequential):
            run = noop.delay(i)
            time.sleep(0.02)  # do not compete with the worker for the CPU while it starts
            has_started = Run.objects.filter(pk=run.pk, started_at__isnull=False)
            common.wait_until(has_started.exists, 10, interval=0.005)
            run.refresh_from_db()
            latencies.append((run.started_at - run.enqueued_at).total_seconds())
        return {"enqueue": count / (enqueued - began),
                "enqueue_fast": fast, "e2e": e2e,
                "p50": common.median(latencies) * 1000,
                "p95": common.percentile(latencies, 0.95) * 1000, "rss": idle_rss}
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--mode", choices=["pg", "embedded"], default="pg")
    parser.add_argument("--no-floor", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    results = {}
    if not args.no_floor:
        results["channels-redis floor (async sender)"] = measure_floor(args.tasks, args.latency)
    label = "Sisy, PostgreSQL + Redis" if args.mode == "pg" else "Sisy, SQLite + in-memory"
    results[label] = measure_sisy(args.mode, args.tasks, args.latency)
    for name, r in results.items():
        enqueue = f"{r['enqueue']:,.0f}"
        if r.get("enqueue_fast"):
            enqueue += f" ({r['enqueue_fast']:,.0f} non-durable)"
        rows.append((name, enqueue, f"{r['e2e']:,.0f}", f"{r['p50']:.1f}",
                     f"{r['p95']:.1f}", f"{r['rss']:.0f}"))
    print(common.table(("system", "enqueue/s", "end to end/s", "enq→start p50 ms",
                        "p95 ms", "idle worker RSS MiB"), rows))


if __name__ == "__main__":
    main()
