"""End to end: real ``sisy_worker`` / ``sisy_run`` / ``runworker`` processes.

These are the few tests that sleep: they wait for other processes, each with
a bound. The PostgreSQL + Redis ones are marked ``postgres`` and ``redis``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from channels.layers import get_channel_layer
from django.db.models import Count
from django.test import override_settings

from sisy.models import Run, Worker
from tests.helpers import spawn_manage, wait_for
from tests.testapp import tasks
from tests.testapp.models import Mark

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True),
              pytest.mark.usefixtures("empty_redis_channels")]

PG_REDIS = [pytest.mark.postgres, pytest.mark.redis]


class Processes:
    """Started subprocesses, stopped (and their output kept) at the end of a test."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, *args, env=None) -> subprocess.Popen:
        before = Worker.objects.count()
        proc = spawn_manage(*args, env={"SISY_LOG": "INFO", **(env or {})})
        self.procs.append(proc)
        if args[0] in ("sisy_worker", "sisy_run"):
            wait_for(lambda: Worker.objects.count() > before or proc.poll() is not None,
                     20, f"{args[0]} to start")
            assert proc.poll() is None, proc.communicate()
        return proc

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def procs():
    started = Processes()
    yield started
    started.stop_all()


def settled(runs) -> bool:
    pending = Run.objects.filter(pk__in=[r.pk for r in runs], status__in=["queued", "running"])
    return not pending.exists()


def send(message, channel="sisy.run_task"):
    layer = get_channel_layer()
    asyncio.run(layer.send(channel, message))


# -- PostgreSQL + Redis -------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.redis
def test_two_workers_run_every_run_exactly_once(procs):
    procs.start("sisy_worker")
    procs.start("sisy_worker")
    runs = [tasks.mark.delay(f"twice-{i}") for i in range(200)]
    wait_for(lambda: settled(runs), 60, "200 runs to settle")
    marked = Run.objects.filter(task_name="exec.mark")
    statuses = dict(marked.values_list("status").annotate(Count("id")))
    duplicates = Mark.objects.values("token").annotate(n=Count("id")).filter(n__gt=1).count()
    workers = set(Run.objects.filter(task_name="exec.mark").values_list("worker", flat=True))
    print(f"\n200 runs on 2 workers: statuses={statuses} duplicates={duplicates} "
          f"workers={len(workers)}")
    assert statuses == {"succeeded": 200}
    assert Mark.objects.filter(token__startswith="twice-").count() == 200
    assert duplicates == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_sigterm_finishes_the_current_run_and_exits_zero(procs):
    worker = procs.start("sisy_worker")
    run = tasks.mark.delay("slow-term", sleep=2.0)
    wait_for(lambda: Run.objects.get(pk=run.pk).status == "running", 10, "the run to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert Mark.objects.filter(token="slow-term").count() == 1
    assert Worker.objects.get(name=run.worker).stopped_at is not None


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_survives_hostile_messages(procs):
    worker = procs.start("sisy_worker")
    finished = tasks.add.delay(1, 1)
    wait_for(lambda: settled([finished]), 10, "a first run")
    for message in (
        {"run": 1, "name": "x"},                                   # no type
        {"type": "unknown.type"},
        {"type": "sisy.run", "run": "1", "name": "exec.mark"},     # run not an int
        {"type": "sisy.run", "run": finished.pk, "name": "tests.testapp.tasks.add"},  # finished
        {"type": "sisy.run", "run": 10**9, "name": "exec.mark"},   # no such run
        {"type": "sisy.run", "run": 1, "name": "os.system"},       # not registered
        {"type": "sisy.run", "run": 1, "name": "x", "pad": "y" * 200_000},  # huge
        {1: "int keys", "type": "sisy.run"},                       # msgpack poison
    ):
        send(message)
    good = tasks.mark.delay("after-poison")
    wait_for(lambda: settled([good]), 15, "the run after the poison")
    assert worker.poll() is None
    assert Run.objects.get(pk=good.pk).status == "succeeded"
    assert Run.objects.get(pk=finished.pk).result == 2
    assert Mark.objects.filter(token="after-poison").count() == 1


@pytest.mark.postgres
@pytest.mark.redis
def test_runworker_runs_sisy_tasks_through_channel_routes(procs):
    procs.start("runworker", "sisy.run_task")
    run = tasks.add.delay(20, 22)
    assert run.wait(timeout=20) == 42
    assert run.worker.startswith("runworker:")


@pytest.mark.postgres
@pytest.mark.redis
def test_redis_down_at_delay_time_keeps_the_run(own_redis, procs):
    own_redis.stop()
    with override_settings(CHANNEL_LAYERS=own_redis.layers()):
        run = tasks.mark.delay("redis-was-down")  # must not raise
        from sisy.dispatch import sender

        sender.flush()
    assert Run.objects.get(pk=run.pk).status == "queued"
    own_redis.start()
    procs.start("sisy_worker", env={"SISY_REDIS_URL": own_redis.url})
    wait_for(lambda: settled([run]), 20, "the queued run to run after Redis came back")
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert Mark.objects.filter(token="redis-was-down").count() == 1


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_reconnects_after_redis_restarts(own_redis, procs):
    worker = procs.start("sisy_worker", env={"SISY_REDIS_URL": own_redis.url})
    own_redis.restart(down_for=1.5)
    with override_settings(CHANNEL_LAYERS=own_redis.layers()):
        run = tasks.mark.delay("after-restart")
    wait_for(lambda: settled([run]), 20, "a run after the Redis restart")
    assert worker.poll() is None
    assert Run.objects.get(pk=run.pk).status == "succeeded"


# -- the embedded default (any database; in-memory layer) ---------------------------------

def test_sisy_run_picks_up_runs_enqueued_by_another_process(procs, settings):
    if os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings") != "tests.settings":
        pytest.skip("the embedded mode is the SQLite + in-memory configuration")
    procs.start("sisy_run", "--no-scheduler")
    started = time.monotonic()
    run = tasks.add.delay(3, 4)
    assert run.wait(timeout=10) == 7
    took = time.monotonic() - started
    print(f"\nembedded sisy_run picked up a run from another process in {took:.2f} s")
    assert took < 2.0
    # While work keeps coming it looks at the table every 20 ms, not every second.
    lags = []
    for i in range(5):
        run = tasks.add.delay(i, 1)
        run.wait(timeout=10, poll=0.01)
        run.refresh_from_db()
        lags.append((run.started_at - run.enqueued_at).total_seconds())
    print(f"then {', '.join(f'{lag * 1000:.0f}' for lag in lags)} ms")
    assert max(lags) < 0.5


@pytest.mark.postgres
@pytest.mark.redis
def test_concurrency_runs_several_runs_at_once_on_two_channels(procs):
    worker = procs.start("sisy_worker", "--concurrency", "2", "--channel", "sisy.run_task",
                         "--channel", "sisy.other")
    runs = [tasks.mark.delay(f"conc-{i}", sleep=0.5) for i in range(6)]
    wait_for(lambda: settled(runs), 30, "six half-second runs")
    spans = sorted(Run.objects.filter(pk__in=[r.pk for r in runs])
                   .values_list("started_at", "finished_at"))
    assert worker.poll() is None
    assert Run.objects.filter(pk__in=[r.pk for r in runs], status="succeeded").count() == 6
    # Two threads shared the whole backlog, not just its first two runs: the six runs went
    # in three pairs (about 1.5 s from the first start to the last end). A thread that
    # claimed the rest in one batch would run four of them one after the other (2.5 s, the
    # last start 2 s after the first). Whether a pair starts just before or just after the
    # previous pair ends is noise, so the test bounds the spans, not the overlaps. The two
    # threads of "sisy.other" have no wake-ups, but their poll (every second) looks at the
    # table for both channels: when it falls inside the batch, it takes a run too, and three
    # or four run at once (seen: [1, 2, 2, 2, 3, 3] and [1, 2, 2, 2, 3, 4]).
    at_once = [sum(1 for s, f in spans if s <= start < f) for start, _ in spans]
    last_start = (spans[-1][0] - spans[0][0]).total_seconds()
    makespan = (max(f for _, f in spans) - spans[0][0]).total_seconds()
    print(f"\nsix half-second runs: {at_once} at once; last start after {last_start:.2f} s, "
          f"all done after {makespan:.2f} s")
    assert 2 <= max(at_once) <= 4, at_once  # two threads per channel
    assert last_start < 1.5
    assert makespan < 2.0
