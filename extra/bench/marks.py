"""Marks that task bodies leave in Redis, read the same way for every system.

A task body calls :func:`record` first thing: it appends ``"<i> <time.time()>"``
to a Redis list (one ``RPUSH``, the same cost for every system). The harness
counts the list to know when a batch is done, takes the largest time as the
last body start, and pops marks one by one (``BLPOP``) for the latency series.
The marks live in Redis database 7 under the prefix ``sisy-bench-side:mark:``;
:func:`reset` deletes only those keys.
"""

from __future__ import annotations

import os
import time

URL = os.environ.get("SISY_BENCH_MARKS", "redis://127.0.0.1:6379/7")
PREFIX = "sisy-bench-side:mark:"
RUNS = PREFIX + "runs"
TICKS = PREFIX + "ticks"

_client = None


def client():
    """One Redis connection per process, opened lazily (also in forked workers)."""
    global _client
    if _client is None or _client.pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(URL, socket_timeout=30)
        _client.pid = os.getpid()
    return _client


def record(i: int, key: str = RUNS, extra: float | None = None) -> None:
    """Called by a task body: note that run ``i`` started now (and ``extra``, a time)."""
    tail = "" if extra is None else f" {extra:.6f}"
    client().rpush(key, f"{i} {time.time():.6f}{tail}")


def record_tick(slot: float, started: float | None = None) -> None:
    """Called by a periodic task body: its slot (epoch seconds) and its start."""
    started = time.time() if started is None else started
    client().rpush(TICKS, f"{slot:.6f} {started:.6f}")


def reset() -> None:
    keys = list(client().scan_iter(match=PREFIX + "*", count=1000))
    if keys:
        client().delete(*keys)


def count(key: str = RUNS) -> int:
    return client().llen(key)


def read(key: str = RUNS) -> list[tuple[float, float]]:
    return [tuple(map(float, item.split())) for item in client().lrange(key, 0, -1)]


def wait_count(expected: int, timeout: float, key: str = RUNS) -> bool:
    """Poll the list length every 50 ms until it reaches ``expected``, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count(key) >= expected:
            return True
        time.sleep(0.05)
    return False


def pop(timeout: float, key: str = RUNS) -> tuple[float, ...] | None:
    """Block until a mark arrives (``BLPOP``), or ``None`` after ``timeout`` seconds."""
    item = client().blpop([key], timeout=timeout)
    return None if item is None else tuple(map(float, item[1].split()))
