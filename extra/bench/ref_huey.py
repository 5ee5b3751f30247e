"""Huey for the side-by-side benchmark: Redis (database 6), no result store.

Consumers run as ``huey_consumer extra.bench.ref_huey.huey -w N -k thread|process``.
"""

from __future__ import annotations

import os

from huey import RedisHuey

from extra.bench import marks

URL = os.environ.get("SISY_BENCH_HUEY_REDIS", "redis://127.0.0.1:6379/6")
NAME = "sisy-bench-huey"

huey = RedisHuey(NAME, url=URL, results=False)


@huey.task(name="bench.noop")
def noop(i: int) -> None:
    marks.record(i)


def cleanup() -> None:
    """Delete this benchmark's keys (queue, schedule) from Huey's database."""
    import redis

    client = redis.Redis.from_url(URL)
    keys = list(client.scan_iter(match=f"huey.*{NAME}*", count=1000))
    if keys:
        client.delete(*keys)
