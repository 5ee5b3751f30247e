"""Three ``sisy_heartbeat`` processes on one PostgreSQL database: every slot fires once."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

from sisy.models import Run, Task
from sisy.schedules import next_fire

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("sched.every_second", "sched.every_2s", "sched.every_3s")


def start_scheduler(log_path: Path) -> subprocess.Popen:
    settings = "tests.settings_pg" if connection.vendor == "postgresql" else "tests.settings"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": settings,
        "SISY_DB_NAME": connection.settings_dict["NAME"],
        "SISY_REDIS_PREFIX": f"sisy-sched-{uuid.uuid4().hex[:8]}",
        "SISY_LOG": "INFO",
    }
    log = log_path.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "django", "sisy_heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}")
        time.sleep(0.2)


def missing_and_duplicates(name: str) -> tuple[list, list, int]:
    task = Task.objects.get(name=name)
    counts = Counter(Run.objects.filter(task=task).values_list("scheduled_for", flat=True))
    slots = sorted(counts)
    expected, slot = [], slots[0]
    while slot <= slots[-1]:
        expected.append(slot)
        slot = next_fire(task.schedule, slot)
    missing = sorted(set(expected) - set(slots))
    duplicates = [slot for slot, count in counts.items() if count > 1]
    return missing, duplicates, len(slots)


def three_schedulers_fire_every_slot_exactly_once(tmp_path):
    """Given three schedulers, one of them killed half-way, expect each slot once."""
    processes = [start_scheduler(tmp_path / f"scheduler-{i}.log") for i in range(3)]
    fired = Run.objects.filter(task_name="sched.every_second")
    try:
        wait_for(lambda: fired.count() >= 2, 30, "the first slots")  # slow starts under load
        time.sleep(5)
        processes[0].send_signal(signal.SIGKILL)  # dies in the middle of whatever it did
        time.sleep(5)
        for process in processes[1:]:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=10) for process in processes[1:]]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))

    assert codes == [0, 0], logs
    assert "Traceback" not in logs
    for name in TASKS:
        missing, duplicates, fired = missing_and_duplicates(name)
        print(f"{name}: {fired} slots fired, {len(missing)} missed, {len(duplicates)} duplicated")
        assert (missing, duplicates) == ([], []), name
        assert fired >= {"sched.every_second": 6, "sched.every_2s": 3, "sched.every_3s": 2}[name]



@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_three_schedulers_on_postgresql_fire_every_slot_exactly_once(tmp_path):
    three_schedulers_fire_every_slot_exactly_once(tmp_path)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_three_schedulers_on_sqlite_fire_every_slot_exactly_once(tmp_path):
    if connection.vendor != "sqlite":
        pytest.skip("the embedded configuration (DJANGO_SETTINGS_MODULE=tests.settings)")
    three_schedulers_fire_every_slot_exactly_once(tmp_path)

# -- A PostgreSQL restart under a running scheduler ------------------------------------

PG_BIN = next((p for p in ("/usr/local/bin", *sorted(Path("/usr/lib/postgresql").glob("*/bin")))
               if (Path(p) / "initdb").exists()), None)


def as_postgres(*command: str) -> list[str]:
    """initdb and postgres refuse to run as root; run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def own_postgres():
    """A throw-away PostgreSQL cluster on a free port; yields (port, pg_ctl command)."""
    if PG_BIN is None:
        pytest.skip("initdb not found; install PostgreSQL server binaries")
    import shutil
    import socket
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="sisy-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(as_postgres(f"{PG_BIN}/initdb", "-D", str(data / "db"), "-A", "trust",
                               "-U", "postgres"), check=True, capture_output=True)
    pg_ctl = as_postgres(f"{PG_BIN}/pg_ctl", "-D", str(data / "db"), "-w", "-l",
                         str(data / "server.log"), "-o",
                         f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off")
    subprocess.run([*pg_ctl, "start"], check=True, capture_output=True)
    try:
        yield port, pg_ctl
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.faults
@pytest.mark.timeout(90)
def test_the_scheduler_survives_a_postgresql_restart(own_postgres, tmp_path):
    """Given a running scheduler, when PostgreSQL restarts, expect it to go on firing."""
    import psycopg

    port, pg_ctl = own_postgres
    dsn = f"host=127.0.0.1 port={port} user=postgres"
    with psycopg.connect(f"{dsn} dbname=postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE sisy_restart")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_pg",
           "SISY_PG_PORT": str(port), "SISY_DB_NAME": "sisy_restart",
           "SISY_REDIS_PREFIX": f"sisy-restart-{uuid.uuid4().hex[:8]}", "SISY_LOG": "INFO"}
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], cwd=ROOT, env=env,
                   check=True)
    log_path = tmp_path / "scheduler.log"
    with log_path.open("w") as log:
        scheduler = subprocess.Popen([sys.executable, "-m", "django", "sisy_heartbeat"],
                                     cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    def fired():
        with psycopg.connect(f"{dsn} dbname=sisy_restart") as conn:
            return [row[0] for row in conn.execute(
                "SELECT r.scheduled_for FROM sisy_run r JOIN sisy_task t ON r.task_id = t.id "
                "WHERE t.name = 'sched.every_second' ORDER BY 1")]

    try:
        wait_for(lambda: len(fired()) >= 2, 30, "the first slots")
        subprocess.run([*pg_ctl, "stop", "-m", "fast"], check=True, capture_output=True)
        time.sleep(2)
        subprocess.run([*pg_ctl, "start"], check=True, capture_output=True)
        before = len(fired())
        wait_for(lambda: len(fired()) >= before + 3, 30, "slots after the restart")
        scheduler.send_signal(signal.SIGTERM)
        code = scheduler.wait(timeout=10)
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait()
    log = log_path.read_text()
    slots = fired()

    assert code == 0, log
    assert "lost its database or channel layer" in log
    assert len(slots) == len(set(slots)), "a slot fired twice"
    gaps = [(a, b) for a, b in itertools.pairwise(slots) if (b - a).total_seconds() != 1]
    # One gap: the outage (catch_up="latest" fires only the latest missed slot).
    assert len(gaps) == 1, (gaps, log)
    after = [slot for slot in slots if slot >= gaps[0][1]]
    print(f"{len(slots)} slots fired, {len(after)} after the restart; gap {gaps[0]}")
    assert len(after) >= 3
