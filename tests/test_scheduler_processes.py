"""Three ``sisy_heartbeat`` processes on one PostgreSQL database: every slot fires once."""

from __future__ import annotations

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

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("sched.every_second", "sched.every_2s", "sched.every_3s")


def start_scheduler(log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_pg",
        "SISY_DB_NAME": connection.settings_dict["NAME"],
        "SISY_REDIS_PREFIX": f"sisy-sched-{uuid.uuid4().hex[:8]}",
        "SISY_LOG": "INFO",
    }
    log = log_path.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "django", "sisy_heartbeat"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


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


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_three_schedulers_fire_every_slot_exactly_once(tmp_path):
    """Given three schedulers, one of them killed half-way, expect each slot once."""
    processes = [start_scheduler(tmp_path / f"scheduler-{i}.log") for i in range(3)]
    try:
        time.sleep(7)
        processes[0].send_signal(signal.SIGKILL)  # dies in the middle of whatever it did
        time.sleep(7)
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
        assert fired >= {"sched.every_second": 9, "sched.every_2s": 4, "sched.every_3s": 3}[name]
