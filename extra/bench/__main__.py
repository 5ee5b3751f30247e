"""Sisy side by side with Celery, Huey, Procrastinate and two floors.

    python -m extra.bench [--tasks 5000] [--repeat 1] [--latency 200]
                          [--schedule-seconds 20] [--sizes 100,10000,100000]
                          [--systems sisy-pg,sisy-pg-prepared,sisy-embedded,celery,huey,
                                     procrastinate,pg-floor,pg-floor-unprepared,floor]

(``extra/bench/run`` makes the virtualenv with the reference systems and runs
this.) Each system is measured in a child process of its own that starts its
workers, waits until they run a probe, measures, stops them and deletes its
own database / keys. Prints one table, every figure with its ratio to Celery
measured in the same run, and writes it into ``docs/performance.rst``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

from extra.bench import common

ALL = ["sisy-pg", "sisy-pg-prepared", "sisy-embedded", "celery", "huey", "procrastinate",
       "pg-floor", "pg-floor-unprepared", "floor"]
COLUMNS = {
    "sisy-pg": "Sisy PG+Redis", "sisy-pg-prepared": "Sisy PG prepared",
    "sisy-embedded": "Sisy SQLite+mem", "celery": "Celery solo",
    "huey": "Huey", "procrastinate": "Procrastinate", "pg-floor": "durable floor",
    "pg-floor-unprepared": "floor unprepared",
    "floor": "ch-redis floor",
}
DOCS = common.ROOT / "docs" / "performance.rst"
BEGIN, END = ".. bench-table-begin", ".. bench-table-end"
LEGEND = [
    "(×) = ratio to the Celery column of the same run; ↑ higher is better, ↓ lower is better.",
    "Sisy PG prepared: the same with DATABASES OPTIONS {\"prepare_threshold\": 5}",
    "   (.delay()'s INSERT is prepared; Django's default, None, prepares nothing).",
    "durable floor: Sisy's guarantees with nothing of Sisy: a bare prepared durable INSERT",
    "   and LPUSH per run; bare workers pop up to 10 ids, claim durably, write outcomes",
    "   with synchronous_commit off (extra/bench/durable_floor.py).",
    "floor unprepared: the same, nothing prepared (Django's default): the floor of Sisy's",
    "   default configuration.",
    "W4 Celery column: celery beat (PersistentScheduler, schedule 1.0 s) + 1 solo worker;",
    "   Sisy: sisy_heartbeat + 1 sisy_worker (embedded: one sisy_run).",
    "W5 Celery column: django-celery-beat's DatabaseScheduler (fire all due capped at 30 s).",
    "Huey -w 2 -k process for W6. W4: Huey's periodic tasks work to the minute;",
    "   Procrastinate's periodic tasks are not measured yet.",
    "sisy_run is vacuumed before each batch (this server has autovacuum = off;",
    "   see extra/bench/common.py).",
]


def parse(argv=None):
    parser = argparse.ArgumentParser(prog="python -m extra.bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000,
                        help="runs per throughput batch (W1, W6, W7)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="throughput batches per system; the median is shown (default 1)")
    parser.add_argument("--latency", type=int, default=200, help="sequential runs for W2")
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds a started worker idles before its RSS is read (W3)")
    parser.add_argument("--schedule-seconds", type=float, default=20.0,
                        help="seconds of every-second ticks for W4 (0 skips W4)")
    parser.add_argument("--sizes", default="100,10000,100000",
                        help="standing tasks for W5, comma-separated (empty skips W5)")
    parser.add_argument("--tick-seconds", type=float, default=5.0,
                        help="seconds of idle scheduler loop per W5 size (CPU per minute)")
    parser.add_argument("--no-workers2", dest="workers2", action="store_false",
                        help="skip W6 (two worker processes)")
    parser.add_argument("--systems", default=",".join(ALL),
                        help="which to measure, comma-separated: " + ",".join(ALL))
    parser.add_argument("--no-docs", dest="docs", action="store_false",
                        help="do not write the table into docs/performance.rst")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- children: one system each, printing one JSON line ----------------------

def child(options) -> dict:
    if options.child == "floor":
        from extra.bench import execution

        return execution.measure_floor(options.tasks, options.latency)
    if options.child == "w5-sisy":
        return w5_sisy(options)
    if options.child == "w5-beat":
        from extra.bench import beat_bench

        return beat_bench.measure([int(s) for s in options.sizes.split(",")], options)
    from extra.bench import systems, workloads

    return workloads.measure(systems.SYSTEMS[options.child](), options)


def w5_sisy(options) -> dict:
    from extra.bench import scheduler_bench, systems

    sisy = systems.Sisy()
    os.environ.update(sisy.env())
    common.setup_django("pg")
    result = {}
    try:
        for size in (int(s) for s in options.sizes.split(",")):
            scheduler_bench.fill(size, "0 * * * *",
                                 "now() + interval '1 hour' + i * interval '1 second'")
            idle = scheduler_bench.child("idle", size, options.tick_seconds)
            scheduler_bench.fill(size, "* * * * * *", "now() + interval '1 hour'")
            burst = scheduler_bench.child("burst", size, 0)
            result[size] = {**idle, "fire_s": burst["sent_s"], "fired": burst["runs"]}
    finally:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE sisy_run, sisy_task RESTART IDENTITY CASCADE")
    return result


# ---- the parent: run the children, print and write the table ----------------

def run_child(key: str, options, argv: list[str], timeout: float) -> dict:
    began = time.monotonic()
    print(f"... {key}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run([sys.executable, "-m", "extra.bench", *argv, "--child", key],
                              cwd=common.ROOT, env=common.env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"    {key}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return result


def fmt(value, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:,.{digits}f}"


def cell(results, key, field, digits, base_key="celery") -> str:
    value = results.get(key, {}).get(field)
    if isinstance(value, str):
        return value
    text = fmt(value, digits)
    base = results.get(base_key, {}).get(field)
    if text != "—" and isinstance(base, int | float) and base and base == base and key != base_key:
        text += f" ({value / base:.2f}×)"
    return text


def build_table(results: dict, keys: list[str], sizes: list[int]) -> str:
    rows = [
        ("W1 enqueue /s, sync code ↑", "enqueue", 0),
        ("W1 end to end /s, 1 worker ↑", "e2e", 0),
        ("W1 CPU µs per run, machine ↓", "cpu", 0),
        ("W1 … of it PostgreSQL ↓", "cpu_db", 0),
        ("W1 … of it Redis ↓", "cpu_redis", 0),
        ("W1 … of it the producer ↓", "cpu_producer", 0),
        ("W1 … of it the worker ↓", "cpu_worker", 0),
        ("W2 enqueue→start p50 ms ↓", "p50", 1),
        ("W2 enqueue→start p95 ms ↓", "p95", 1),
        ("W3 idle worker RSS MiB ↓", "rss", 0),
        ("W4 start−slot p50 ms ↓", "lag_p50", 1),
        ("W4 start−slot p99 ms ↓", "lag_p99", 1),
        ("W4 ticks seen / expected", "ticks", 0),
        ("W6 end to end /s, 2 workers ↑", "e2e2", 0),
        ("W7 backlog drained /s, 1 worker ↑", "drain", 0),
    ]
    w5 = {"sisy-pg": results.get("w5-sisy", {}), "celery": results.get("w5-beat", {})}
    for size in sizes:
        for label, field, digits in (("idle tick ms p50", "tick_ms", 2),
                                     ("start→1st tick s", "first_tick_s", 2),
                                     ("fire all due s", "fire_s", 2),
                                     ("RSS MiB", "rss_mib", 0)):
            name = f"w5:{size}:{field}"
            for key, data in w5.items():
                entry = data.get(str(size), {})
                results.setdefault(key, {})[name] = entry.get(field)
            rows.append((f"W5 {size:,} tasks: {label} ↓", name, digits))
    table_rows = [[label, *(cell(results, key, field, digits) for key in keys)]
                  for label, field, digits in rows]
    return common.table(["workload", *(COLUMNS[k] for k in keys)], table_rows)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for package in ("Django", "channels", "channels-redis", "celery", "huey", "procrastinate",
                    "django-celery-beat"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; " + ", ".join(versions))


def write_docs(text: str) -> None:
    page = DOCS.read_text(encoding="utf-8")
    if BEGIN not in page or END not in page:
        print(f"{DOCS} has no {BEGIN} / {END} markers; not written", file=sys.stderr)
        return
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOCS.write_text(f"{head}{BEGIN}\n\n{text}\n\n{END}{tail}", encoding="utf-8")


def main(argv=None) -> None:
    options = parse(argv)
    if options.child:
        print(json.dumps(child(options)))
        return
    keys = [k for k in options.systems.split(",") if k]
    unknown = set(keys) - set(ALL)
    if unknown:
        raise SystemExit(f"Unknown system(s) {sorted(unknown)}; choose from {ALL}.")
    if "celery" not in keys:
        keys.insert(0, "celery")  # every ratio is to Celery measured in the same run
    argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
    argv = [a for i, a in enumerate(argv)
            if a != "--systems" and (i == 0 or argv[i - 1] != "--systems")
            and not a.startswith("--systems=")]
    sizes = [int(s) for s in options.sizes.split(",") if s]
    results = {}
    for key in keys:
        results[key] = run_child(key, options, argv, timeout=1800)
    if sizes and "sisy-pg" in keys:
        results["w5-sisy"] = run_child("w5-sisy", options, argv, timeout=1800)
        results["w5-beat"] = run_child("w5-beat", options, argv, timeout=1800)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = build_table(results, keys, sizes)
    notes = [f"{COLUMNS[k]}: {results[k]['error']}" for k in keys if "error" in results[k]]
    notes += [f"{k}: {results[k]['error']}" for k in ("w5-sisy", "w5-beat")
              if "error" in results.get(k, {})]
    settings = (f"--tasks {options.tasks} --repeat {options.repeat} --latency {options.latency} "
                f"--schedule-seconds {options.schedule_seconds:g} --sizes {options.sizes}")
    header = f"{when}; {machine()}\n{settings}"
    print(header)
    print(table)
    print("\n".join(LEGEND))
    for note in notes:
        print("error:", note)
    if options.docs:
        lines = [f"{when}; {machine()}", "", *table.splitlines(), "", *LEGEND,
                 *("error: " + n for n in notes)]
        body = "\n".join(("    " + line).rstrip() for line in lines)
        write_docs(f"Measured with ``python -m extra.bench {settings}``::\n\n{body}")


if __name__ == "__main__":
    main()
