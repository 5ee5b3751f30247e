"""The systems compared by ``python -m extra.bench``, behind one small interface.

Each measurement runs in a child process of its own (``python -m extra.bench
--child KEY``), so a system's settings and imports never meet another's. A
system knows how to prepare and clean its own state, which commands run its
workers (and its scheduler, for W4), and how to enqueue the no-op task; the
workloads in ``workloads.py`` do the rest the same way for every system.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time

from extra.bench import common, durable_floor, marks

SISY_DB = "sisy_bench_side"
SISY_PREFIX = "sisy-bench-side"
SISY_SQLITE = os.path.join(tempfile.gettempdir(), "sisy-bench-side.sqlite3")


class System:
    key = ""
    label = ""
    has_scheduler = False

    def setup(self) -> None:
        """Start from a clean state of this system's own database / keys."""

    def teardown(self) -> None:
        """Remove what ``setup`` and the workloads left behind."""

    def before_batch(self) -> None:
        """Called before each throughput batch."""

    def worker_commands(self, processes: int) -> list[list[str]]:
        raise NotImplementedError

    def scheduler_commands(self) -> list[list[str]]:
        raise NotImplementedError

    def env(self, **extra) -> dict:
        return common.env(**extra)

    def enqueue(self, i: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Make sure everything enqueued so far has left the producer."""

    def finished_at(self, count: int, timeout: float) -> float | None:
        """The time the last of ``count`` runs was durably recorded, if the system records it."""
        return None

    def ticks(self) -> list[tuple[float, float]]:
        """(slot, body start) of each periodic run, in epoch seconds."""
        return marks.read(marks.TICKS)


class Sisy(System):
    key = "sisy-pg"
    label = "Sisy, PostgreSQL + Redis"
    mode = "pg"
    has_scheduler = True

    def env(self, **extra) -> dict:
        return common.env(self.mode, SISY_BENCH_DB=SISY_DB, SISY_BENCH_PREFIX=SISY_PREFIX,
                          SISY_BENCH_SQLITE=SISY_SQLITE, **extra)

    def setup(self) -> None:
        os.environ.update(self.env())
        common.setup_django(self.mode)
        self._clear_layer()
        self.before_batch()
        from extra.bench.benchapp.tasks import mark
        from sisy.dispatch import sender

        self._mark, self._sender = mark, sender

    def _clear_layer(self) -> None:
        if self.mode == "pg":
            import redis

            client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
            keys = list(client.scan_iter(match=SISY_PREFIX + "*", count=1000))
            if keys:
                client.delete(*keys)

    def before_batch(self) -> None:
        from django.db import connection

        from sisy.models import Run, Task

        Run.objects.all().delete()
        Task.objects.filter(name="bench.tick").delete()
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # see common.VACUUM_NOTE
                cursor.execute(f"VACUUM ANALYZE {Run._meta.db_table}")

    def teardown(self) -> None:
        self.before_batch()
        self._clear_layer()

    def worker_commands(self, processes: int) -> list[list[str]]:
        command = ["sisy_worker"] if self.mode == "pg" else ["sisy_run", "--no-scheduler"]
        return [[sys.executable, "-m", "django", *command]] * processes

    def scheduler_commands(self) -> list[list[str]]:
        if self.mode == "pg":
            return [[sys.executable, "-m", "django", "sisy_heartbeat"],
                    [sys.executable, "-m", "django", "sisy_worker"]]
        return [[sys.executable, "-m", "django", "sisy_run"]]

    def enqueue(self, i: int) -> None:
        self._mark.delay(i)

    def flush(self) -> None:
        self._sender.flush()

    def finished_at(self, count: int, timeout: float) -> float | None:
        from django.db.models import Max

        from sisy.models import Run

        done = Run.objects.filter(task_name="bench.mark", status="succeeded")
        if not common.wait_until(lambda: done.count() >= count, timeout, interval=0.1):
            raise RuntimeError(f"{self.label}: fewer than {count} runs succeeded in {timeout} s")
        return done.aggregate(last=Max("finished_at"))["last"].timestamp()


class SisyPrepared(Sisy):
    """Sisy on PostgreSQL with psycopg's prepared statements (``DATABASES[...]["OPTIONS"]
    = {"prepare_threshold": 5}``): a deployment choice, not Django's default."""
    key = "sisy-pg-prepared"
    label = "Sisy, PostgreSQL + Redis, prepared statements"

    def env(self, **extra) -> dict:
        return super().env(SISY_BENCH_DB_OPTIONS='{"prepare_threshold": 5}', **extra)


class SisyEmbedded(Sisy):
    key = "sisy-embedded"
    label = "Sisy, SQLite + in-memory"
    mode = "embedded"


class DurableFloor(Sisy):
    """Sisy's guarantees with nothing of Sisy (see ``durable_floor.py``): a bare durable
    ``INSERT`` and ``LPUSH`` per run, bare workers that claim durably in batches."""
    key = "pg-floor"
    label = "Durable floor, PostgreSQL + Redis, no Sisy"
    has_scheduler = False
    #: Whether its statements are prepared (told to its workers by the environment).
    prepared = True

    def env(self, **extra) -> dict:
        return super().env(SISY_BENCH_FLOOR_PREPARED="1" if self.prepared else "0", **extra)

    def setup(self) -> None:
        super().setup()
        self._conn = common.bare_connection()

    def teardown(self) -> None:
        self._conn.close()
        super().teardown()

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[sys.executable, "-m", "extra.bench.durable_floor"]] * processes

    def enqueue(self, i: int) -> None:
        self.enqueue_timed(i)

    def enqueue_timed(self, i: int) -> tuple[int, float]:
        """Enqueue run ``i``; its id and the ``time.time()`` its ``INSERT`` returned."""
        now = datetime.datetime.now(datetime.UTC)
        run_id = common.bare_insert(self._conn, "floor", now, name="bench.mark", args=f"[{i}]",
                                    prepare=self.prepared)
        inserted = time.time()
        marks.client().lpush(durable_floor.QUEUE, run_id)
        return run_id, inserted

    def flush(self) -> None:
        pass


class DurableFloorUnprepared(DurableFloor):
    """The durable floor with nothing prepared: Django's default statements, the floor
    of Sisy's default configuration."""
    key = "pg-floor-unprepared"
    label = "Durable floor, unprepared statements"
    prepared = False


class Celery(System):
    key = "celery"
    label = "Celery 5, Redis, solo"
    has_scheduler = True

    def setup(self) -> None:
        from extra.bench import ref_celery

        ref_celery.cleanup()
        self._beat_dir = tempfile.mkdtemp(prefix="sisy-bench-beat-")
        self._noop = ref_celery.noop

    def teardown(self) -> None:
        from extra.bench import ref_celery

        ref_celery.cleanup()

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[sys.executable, "-m", "celery", "-A", "extra.bench.ref_celery", "worker",
                 "--pool=solo", "--concurrency=1", f"--hostname=sisy-bench-{n}@%h",
                 "--loglevel=WARNING"] for n in range(processes)]

    def scheduler_commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "celery", "-A", "extra.bench.ref_celery", "beat",
                 "--schedule", os.path.join(self._beat_dir, "celerybeat-schedule"),
                 "--loglevel=WARNING"], *self.worker_commands(1)]

    def enqueue(self, i: int) -> None:
        self._noop.delay(i)

    def ticks(self) -> list[tuple[float, float]]:
        # Beat's interval schedule: each slot is the previous send plus one second.
        sent_start = marks.read(marks.PREFIX + "beat")
        return [(previous[0] + 1.0, current[1])
                for previous, current in zip(sent_start, sent_start[1:], strict=False)]


class Huey(System):
    key = "huey"
    label = "Huey, Redis"

    def setup(self) -> None:
        from extra.bench import ref_huey

        ref_huey.cleanup()
        self._noop = ref_huey.noop

    def teardown(self) -> None:
        from extra.bench import ref_huey

        ref_huey.cleanup()

    def worker_commands(self, processes: int) -> list[list[str]]:
        kind = "thread" if processes == 1 else "process"
        return [[sys.executable, "-m", "huey.bin.huey_consumer", "extra.bench.ref_huey.huey",
                 "-w", str(processes), "-k", kind, "--quiet"]]

    def enqueue(self, i: int) -> None:
        self._noop(i)


class Procrastinate(System):
    key = "procrastinate"
    label = "Procrastinate, PostgreSQL"

    def setup(self) -> None:
        from extra.bench import ref_procrastinate

        ref_procrastinate.recreate_database()
        ref_procrastinate.app.open()
        self._noop = ref_procrastinate.noop

    def teardown(self) -> None:
        from extra.bench import ref_procrastinate

        ref_procrastinate.app.close()
        ref_procrastinate.drop_database()

    def worker_commands(self, processes: int) -> list[list[str]]:
        return [[sys.executable, "-m", "procrastinate",
                 "--app", "extra.bench.ref_procrastinate.app", "--log-level", "warning",
                 "worker", "--concurrency", "1"]] * processes

    def enqueue(self, i: int) -> None:
        self._noop.defer(i=i)


SYSTEMS = {system.key: system for system in (Sisy, SisyPrepared, SisyEmbedded, Celery, Huey,
                                             Procrastinate, DurableFloor, DurableFloorUnprepared)}
