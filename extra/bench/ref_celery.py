"""Celery 5 for the side-by-side benchmark: Redis broker (database 5), no result backend.

Workers run as ``celery -A extra.bench.ref_celery worker --pool=solo``; beat as
``celery -A extra.bench.ref_celery beat`` with the default PersistentScheduler
and a ``schedule`` of 1.0 s for ``bench.tick``. Beat stamps each message with
the time it sends it, so the tick's body can tell its slot: the previous send
plus one second, as beat's interval schedule defines it.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.signals import before_task_publish

from extra.bench import marks

BROKER = os.environ.get("SISY_BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/5")
QUEUE = "sisy-bench-celery"

app = Celery("sisybench", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    beat_schedule={"bench-tick": {"task": "bench.tick", "schedule": 1.0}},
)


@app.task(name="bench.noop")
def noop(i: int) -> None:
    marks.record(i)


@app.task(name="bench.tick", bind=True)
def tick(self) -> None:
    started = time.time()
    marks.client().rpush(marks.PREFIX + "beat", f"{self.request.get('bench_sent', 0.0)} {started}")


@before_task_publish.connect
def stamp(sender=None, headers=None, **kwargs):
    if sender == "bench.tick" and headers is not None:
        headers["bench_sent"] = time.time()


def cleanup() -> None:
    """Delete this benchmark's keys from the broker database (and nothing else)."""
    import redis

    client = redis.Redis.from_url(BROKER)
    for pattern in (QUEUE, QUEUE + "*", "_kombu.binding*", "unacked*", "*.reply.celery.pidbox"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
