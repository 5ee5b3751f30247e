"""The raw channels-redis floor: one async sender, one receiving process.

Run as ``python -m extra.bench.floor receive N`` (the receiver) or imported by
``execution.py``, which runs both sides and prints the numbers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

CHANNEL = "bench.floor"


def layer():
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 10}],
                             prefix="sisy-bench-floor", capacity=100_000)


async def receive(count: int) -> None:
    chan = layer()
    latencies = []
    first = last = None
    for _ in range(count):
        message = await chan.receive(CHANNEL)
        last = time.time()
        first = first or last
        latencies.append(last - message["t"])
    print(json.dumps({"first": first, "last": last, "latencies": latencies}), flush=True)


async def send(count: int, sequential_gap: float = 0.0) -> tuple[float, float]:
    chan = layer()
    start = time.time()
    for i in range(count):
        await chan.send(CHANNEL, {"type": "bench", "i": i, "t": time.time()})
        if sequential_gap:
            await asyncio.sleep(sequential_gap)
    return start, time.time()


if __name__ == "__main__":
    asyncio.run(receive(int(sys.argv[2])))
