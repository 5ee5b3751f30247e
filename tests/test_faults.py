"""Reliability under faults, load and hostile input (issue: the fault-injection suite).

Run alone with ``pytest -m faults`` in the PostgreSQL + Redis configuration
(``DJANGO_SETTINGS_MODULE=tests.settings_pg``). Every scenario starts real
``sisy_heartbeat`` / ``sisy_worker`` processes, injects one kind of fault,
waits (with a bound) for the system to settle, prints its counts and asserts
them exactly. Servers that a scenario stops are its own (``own_redis``); the
machine's shared PostgreSQL is only ever hit with ``pg_terminate_backend`` on
the test database's own connections.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from sisy.exceptions import InvalidArguments
from sisy.models import Run, Task
from sisy.scheduler import Scheduler
from tests.helpers import ROOT, manage_env, spawn_manage, wait_for
from tests.testapp import tasks
from tests.testapp.models import Mark

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis,
              pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("empty_redis_channels")]

#: Short intervals so that recovery happens within a test's time.
FAST = {"WORKER_HEARTBEAT": 1.0, "REDELIVERY_INTERVAL": 2.0, "HEARTBEAT_FREQUENCY": 1.0,
        "POLL_INTERVAL": 0.5}
#: Seconds the many-schedulers scenario runs (>= 60 slots of an every-second task).
SCHEDULER_SECONDS = float(os.environ.get("SISY_FAULTS_SECONDS", "62"))


def report(name: str, **counts) -> None:
    print(f"\n[{name}] " + ", ".join(f"{key}={value}" for key, value in counts.items()))


class Cluster:
    """Sisy processes of one scenario: all share one SISY dict, Redis and prefix."""

    def __init__(self, sisy: dict, redis_url: str | None = None):
        # The Redis prefix is the test process's own, so its wake-ups reach the workers.
        self.env = {"SISY_TEST_SISY": json.dumps(sisy), "SISY_LOG": "WARNING"}
        if redis_url:
            self.env["SISY_REDIS_URL"] = redis_url
        self.procs: list[subprocess.Popen] = []

    def start(self, *args) -> subprocess.Popen:
        proc = spawn_manage(*args, env=self.env)
        self.procs.append(proc)
        return proc

    def workers(self, count: int) -> list[subprocess.Popen]:
        return [self.start("sisy_worker") for _ in range(count)]

    def schedulers(self, count: int) -> list[subprocess.Popen]:
        return [self.start("sisy_heartbeat") for _ in range(count)]

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def stop(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes


@pytest.fixture
def cluster_factory():
    made = []

    def make(sisy=None, redis_url=None):
        cluster = Cluster({**FAST, **(sisy or {})}, redis_url)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def unsettled(runs=None) -> int:
    pending = Run.objects.filter(status__in=["queued", "running"])
    if runs is not None:
        pending = pending.filter(pk__in=[r.pk for r in runs])
    return pending.count()


def slots_by_task(since, until) -> dict[str, list]:
    rows = Run.objects.filter(task__isnull=False, attempt=1, scheduled_for__gte=since,
                              scheduled_for__lt=until).values_list("task_name", "scheduled_for")
    found: dict[str, list] = {}
    for name, slot in rows:
        found.setdefault(name, []).append(slot)
    return found


def expected_slots(row: Task, since, until) -> list:
    slots, after = [], since - timedelta(microseconds=1)
    while (slot := row.next_slot(after)) is not None and slot < until:
        slots.append(slot)
        after = slot
    return slots


def database_rows(count: int, schedule_for, catch_up="latest") -> list[Task]:
    """Standing tasks as the database holds them (no worker needed: slots are counted)."""
    now = timezone.now()
    rows = []
    for index in range(count):
        row = Task(label=f"fault-slot-{index}", schedule=schedule_for(index), catch_up=catch_up,
                   source=Task.Source.DATABASE)
        row.next_run = row.next_slot(now)
        rows.append(row)
    return Task.objects.bulk_create(rows)


# 1 --------------------------------------------------------------------------------------

def test_many_schedulers_fire_every_slot_exactly_once(cluster_factory):
    # catch_up="all": a scheduler slowed down by a busy machine fires late, never skips.
    every_second = database_rows(1, lambda i: "* * * * * *", catch_up="all")
    staggered = database_rows(20, lambda i: f"* * * * * {i},{i + 20},{i + 40}", catch_up="all")
    cluster = cluster_factory()
    cluster.schedulers(3)
    start = timezone.now() + timedelta(seconds=3)  # the schedulers are up by then
    time.sleep((start - timezone.now()).total_seconds() + SCHEDULER_SECONDS)
    end = timezone.now() - timedelta(seconds=1)
    assert cluster.alive()
    duplicates = (Run.objects.filter(task__isnull=False, attempt=1)
                  .values("task", "scheduled_for").annotate(n=Count("id")).filter(n__gt=1).count())
    found = slots_by_task(start, end)
    missed = sum(len(set(expected_slots(row, start, end)) - set(found.get(row.label, [])))
                 for row in every_second + staggered)
    fired = sum(len(slots) for slots in found.values())
    report("many schedulers", schedulers=3, slots_fired=fired, duplicates=duplicates,
           missed=missed, every_second_slots=len(found.get("fault-slot-0", [])))
    assert len(found["fault-slot-0"]) >= SCHEDULER_SECONDS - 5
    assert (duplicates, missed) == (0, 0)


# 2 --------------------------------------------------------------------------------------

def test_sigkill_of_workers_mid_run_loses_nothing(cluster_factory):
    cluster = cluster_factory()
    cluster.schedulers(1)  # finds runs of lost workers and retries them
    workers = cluster.workers(2)
    rng = random.Random(9)
    runs = [tasks.fault_work.delay(f"kill-{i}", ms=rng.randint(0, 500)) for i in range(200)]
    kills = 0
    deadline = time.monotonic() + 25
    while unsettled(runs) and time.monotonic() < deadline and kills < 6:
        time.sleep(3)
        index = kills % 2
        workers[index].send_signal(signal.SIGKILL)
        workers[index].wait(timeout=10)
        workers[index] = cluster.start("sisy_worker")
        kills += 1
    wait_for(lambda: unsettled() == 0, 90, "every run (and retry) to settle")
    firsts = Run.objects.filter(task_name="faults.work", attempt=1)
    final = {}
    for run in Run.objects.filter(task_name="faults.work").order_by("attempt"):
        final[run.args[0]] = run
    statuses = dict(Run.objects.filter(task_name="faults.work").values_list("status")
                    .annotate(Count("id")))
    lost = Run.objects.filter(task_name="faults.work", error__startswith="Worker lost").count()
    bodies = dict(Mark.objects.filter(token__startswith="kill-").values_list("token")
                  .annotate(Count("id")))
    twice = sorted(token for token, n in bodies.items() if n > 1)
    retried_after_loss = {
        token for token in twice
        if Run.objects.filter(task_name="faults.work", args__0=token,
                              error__startswith="Worker lost").exists()
    }
    report("SIGKILL", kills=kills, runs=firsts.count(), statuses=statuses,
           lost_worker_runs=lost, bodies_completed_twice=len(twice),
           explained_by_retry_after_loss=len(retried_after_loss))
    assert firsts.count() == 200
    assert {run.status for run in final.values()} == {"succeeded"}
    assert len(bodies) == 200
    assert set(twice) == retried_after_loss  # a body ran twice only when retried after a loss


# 3 --------------------------------------------------------------------------------------

def test_redis_restart_with_runs_queued_and_workers_busy(own_redis, cluster_factory, settings):
    settings.CHANNEL_LAYERS = own_redis.layers(prefix=f"faults-r-{uuid.uuid4().hex[:6]}")
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    cluster = cluster_factory(redis_url=own_redis.url)
    cluster.env["SISY_REDIS_PREFIX"] = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    cluster.schedulers(1)
    cluster.workers(2)
    time.sleep(2)
    runs = [tasks.fault_work.delay(f"redis-{i}", ms=20) for i in range(500)]
    time.sleep(1.0)
    own_redis.restart(down_for=2.0)
    wait_for(lambda: unsettled(runs) == 0, 120, "500 runs to settle after the Redis restart")
    statuses = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status")
                    .annotate(Count("id")))
    report("Redis restart", runs=500, statuses=statuses, processes_alive=cluster.alive(),
           bodies=Mark.objects.filter(token__startswith="redis-").count())
    assert statuses == {"succeeded": 500}
    assert cluster.alive()
    channel_layers.backends.clear()


# 4 --------------------------------------------------------------------------------------

def kill_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def test_postgres_connection_kills_during_firing_and_running(cluster_factory):
    (row,) = database_rows(1, lambda i: "* * * * * *", catch_up="all")
    cluster = cluster_factory()
    cluster.schedulers(1)
    cluster.workers(1)
    start = timezone.now() + timedelta(seconds=3)
    time.sleep(3)
    runs = [tasks.fault_work.delay(f"pg-{i}", ms=50) for i in range(100)]
    killed = 0
    for _ in range(3):
        time.sleep(2.5)
        killed += kill_connections()
    time.sleep(3)
    end = timezone.now() - timedelta(seconds=2)
    wait_for(lambda: unsettled(runs) == 0, 60, "the runs in flight to settle")
    found = slots_by_task(start, end).get(row.label, [])
    expected = expected_slots(row, start, end)
    duplicates = len(found) - len(set(found))
    missed = len(set(expected) - set(found))
    # A body whose own connection was killed fails and is retried (retries=3): count
    # the last attempt of each run.
    statuses = final_statuses("pg-")
    report("PostgreSQL connection kills", connections_killed=killed, slots=len(found),
           duplicates=duplicates, missed=missed, run_statuses=statuses, alive=cluster.alive())
    assert killed >= 3
    assert cluster.alive()
    assert (duplicates, missed) == (0, 0)
    assert statuses == {"succeeded": 100}


def final_statuses(prefix: str) -> dict[str, int]:
    last = {}
    for run in Run.objects.filter(task_name="faults.work").order_by("attempt"):
        if run.args[0].startswith(prefix):
            last[run.args[0]] = run.status
    counts: dict[str, int] = {}
    for status in last.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


# 5 --------------------------------------------------------------------------------------

def test_sigterm_to_a_busy_worker_loses_nothing(cluster_factory):
    cluster = cluster_factory()
    (worker,) = cluster.workers(1)
    time.sleep(2)
    runs = [tasks.fault_work.delay(f"term-{i}", ms=300) for i in range(20)]
    wait_for(lambda: Run.objects.filter(pk__in=[r.pk for r in runs], status="succeeded").exists(),
             20, "the worker to be busy")
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=30)
    after_stop = dict(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status")
                      .annotate(Count("id")))
    cluster.workers(1)
    wait_for(lambda: unsettled(runs) == 0, 60, "the rest to run on another worker")
    bodies = Mark.objects.filter(token__startswith="term-").values("token").annotate(n=Count("id"))
    report("SIGTERM", exit_code=code, at_stop=after_stop,
           finally_succeeded=Run.objects.filter(pk__in=[r.pk for r in runs],
                                                status="succeeded").count())
    assert code == 0
    assert "running" not in after_stop
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="succeeded").count() == 20
    assert sorted(b["n"] for b in bodies) == [1] * 20


# 6 --------------------------------------------------------------------------------------

def test_no_overlap_with_four_workers_and_two_schedulers(cluster_factory):
    cluster = cluster_factory({"TASKS": {"faults.exclusive": {"enabled": True}}})
    cluster.workers(4)
    cluster.schedulers(2)
    exclusive = Run.objects.filter(task_name="faults.exclusive")
    wait_for(lambda: exclusive.filter(status="succeeded").exists(), 60,
             "the first run of the exclusive task")
    time.sleep(10)
    cluster.stop()
    runs = list(Run.objects.filter(task_name="faults.exclusive").order_by("scheduled_for"))
    ran = [r for r in runs if r.status == "succeeded"]
    spans = sorted((r.started_at, r.finished_at) for r in ran)
    overlaps = sum(1 for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1])
    statuses = {s: sum(1 for r in runs if r.status == s) for s in {r.status for r in runs}}
    report("overlap", slots=len(runs), statuses=statuses, overlapping_executions=overlaps)
    assert overlaps == 0
    assert len(ran) >= 2
    assert statuses.get("skipped", 0) >= len(ran)
    assert set(statuses) <= {"succeeded", "skipped", "failed", "queued"}


# 7 --------------------------------------------------------------------------------------

PRODUCER = """
import django, sys
django.setup()
from tests.testapp.tasks import fault_work
for i in range(int(sys.argv[2])):
    fault_work.delay(f"load-{sys.argv[1]}-{i}")
from sisy.dispatch import sender
sender.flush(30)
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


#: Queries of one scheduler tick that runs every pass, with any backlog.
TICK_QUERY_BOUND = 30
#: A worker's resident memory may not grow beyond this while it works through the load.
WORKER_RSS_BOUND_MIB = 150


def test_load_from_four_producers_on_two_workers(cluster_factory):
    total, producers = 10_000, 4
    cluster = cluster_factory()
    workers = cluster.workers(2)
    scheduler = Scheduler(max_sleep=1)
    idle = [timed_tick(scheduler) for _ in range(5)]  # the first one does every pass
    idle_tick, idle_queries = min(t for t, _ in idle), max(q for _, q in idle)
    env = manage_env(cluster.env)
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(p), str(total // producers)],
                              env=env, cwd=ROOT) for p in range(producers)]
    peak = 0.0
    busy_ticks = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        peak = max([peak] + [rss_mib(w.pid) for w in workers if w.poll() is None])
        busy_ticks.append(timed_tick(scheduler, fresh=True))
        done = Run.objects.filter(task_name="faults.work", status="succeeded").count()
        if done >= total and all(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    codes = [p.wait(timeout=30) for p in procs]
    statuses = dict(Run.objects.filter(task_name="faults.work").values_list("status")
                    .annotate(Count("id")))
    busy_tick = sorted(t for t, _ in busy_ticks)[len(busy_ticks) // 2]
    busy_queries = max(q for _, q in busy_ticks)
    report("load", runs=total, producers=producers, statuses=statuses,
           worker_peak_rss_mib=round(peak, 1), idle_tick_ms=round(idle_tick * 1000, 2),
           median_tick_under_load_ms=round(busy_tick * 1000, 2),
           queries_per_tick_idle=idle_queries, queries_per_tick_under_load=busy_queries)
    assert codes == [0] * producers
    assert statuses == {"succeeded": total}
    assert peak < WORKER_RSS_BOUND_MIB
    # Every pass of a tick is bounded (redelivery sends at most 100 wake-ups), so its
    # queries do not grow with 10,000 runs queued (times are printed; on a saturated
    # 2-core machine they say little).
    assert busy_queries <= TICK_QUERY_BOUND


def timed_tick(scheduler: Scheduler, *, fresh: bool = False) -> tuple[float, int]:
    """Seconds and queries of one tick; ``fresh`` makes it do every periodic pass."""
    from django.test.utils import CaptureQueriesContext

    if fresh:
        scheduler._next_redelivery = scheduler._next_lost_check = scheduler._next_prune = None
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        scheduler.tick(timezone.now())
        elapsed = time.perf_counter() - started
    return elapsed, len(queries)


# 8 --------------------------------------------------------------------------------------

def test_hostile_input_runs_nothing_unregistered_and_keeps_the_worker(cluster_factory):
    import asyncio

    from channels.layers import get_channel_layer

    cluster = cluster_factory()
    (worker,) = cluster.workers(1)
    time.sleep(2)
    layer = get_channel_layer()
    channel = "sisy.run_task"
    finished = tasks.add.delay(1, 2)
    wait_for(lambda: unsettled([finished]) == 0, 20, "a first run")
    before = Run.objects.count()
    refused = 0
    for bad in ((object(),), ({1: "x"},), (float("inf"),)):
        with pytest.raises(InvalidArguments):
            tasks.echo.delay(*bad)
        refused += 1
    with pytest.raises(InvalidArguments):
        tasks.add.delay("not a number")
    refused += 1
    assert Run.objects.count() == before  # zero rows for refused calls

    async def send_all():
        for message in (
            {"run": finished.pk, "name": "x"},
            {"type": "unknown"},
            {"type": "sisy.run", "run": finished.pk, "name": "os.system"},
            {"type": "sisy.run", "run": finished.pk, "name": "tests.testapp.tasks.add"},
            {"type": "sisy.run", "run": "DROP TABLE", "name": "exec.mark"},
            {"type": "sisy.run", "run": 1, "name": "x", "pad": "y" * 500_000},
            {1: "int key", 2: "msgpack poison"},
        ):
            await layer.send(channel, message)

    asyncio.run(send_all())
    bodies = [tasks.calls_exit.delay(), tasks.raises_interrupt.delay(),
              tasks.returns_object.delay()]
    good = tasks.add.delay(20, 22)
    wait_for(lambda: unsettled(bodies + [good]) == 0, 30, "the hostile bodies and a good run")
    outcomes = [Run.objects.get(pk=r.pk) for r in bodies]
    report("hostile input", refused_calls=refused, hostile_messages=7,
           body_statuses=[r.status for r in outcomes], worker_alive=worker.poll() is None,
           finished_run_result=Run.objects.get(pk=finished.pk).result)
    assert worker.poll() is None
    assert [r.status for r in outcomes] == ["failed"] * 3
    assert [r.error.split(":")[0] for r in outcomes] == ["SystemExit", "KeyboardInterrupt",
                                                          "TypeError"]
    assert Run.objects.get(pk=good.pk).result == 42
    assert Run.objects.get(pk=finished.pk).result == 3  # not run again
