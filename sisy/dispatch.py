"""Queue runs and send their wake-up messages.

The database is the queue: ``enqueue`` writes a queued ``Run`` row, and after
the surrounding transaction commits a message ``{"type": "sisy.run", "run":
id, "name": name}`` wakes a worker. A lost message only delays a run: idle
workers poll the table and the scheduler sends stale wake-ups again.

Sending from sync code goes through one long-lived event loop per process
(:class:`Sender`), so ``.delay()`` in a loop does not pay for a new loop and a
new Redis connection per call. With the in-memory layer, which only reaches
the same process and is not thread-safe, wake-ups go to in-process workers
through :data:`local_wakeup` instead.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction
from django.utils import timezone

from sisy.conf import get_settings
from sisy.models import Run

__all__ = ["enqueue", "wake", "wake_many", "run_message", "Sender", "local_wakeup"]

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "sisy.run"
#: Wake-ups being sent at once by one process.
MAX_IN_FLIGHT = 32


def run_message(run: Run) -> dict:
    """The wake-up message for a run: its id and registered name, nothing importable."""
    return {"type": MESSAGE_TYPE, "run": run.pk, "name": run.task_name}


class LocalWakeup:
    """Wakes workers that run in this process (the embedded mode)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._generation = 0

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Block until a notification newer than ``seen`` or ``timeout``; return the generation."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen, timeout=timeout)
            return self._generation

    @property
    def generation(self) -> int:
        return self._generation


local_wakeup = LocalWakeup()


class Sender:
    """A background thread with one event loop that sends channel-layer messages."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = None
        self._lock = threading.Lock()
        self._pending: set = set()
        self._last_warning = 0.0
        self._in_flight: asyncio.Semaphore | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="sisy-sender", daemon=True
                )
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self._in_flight = None
            return self._loop

    def send(self, layer, messages: Iterable[tuple[str, dict]]) -> None:
        """Schedule the sends and return at once; failures are logged, not raised."""
        loop = self._start()
        for channel, message in messages:
            future = asyncio.run_coroutine_threadsafe(self._send(layer, channel, message), loop)
            self._pending.add(future)
            future.add_done_callback(self._done)

    async def _send(self, layer, channel: str, message: dict) -> None:
        # Bound the sends in flight: the layer's connection pool is finite.
        if self._in_flight is None:
            self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with self._in_flight:
            await layer.send(channel, message)

    def _done(self, future) -> None:
        self._pending.discard(future)
        if future.cancelled() or future.exception() is None:
            return
        exc = future.exception()
        if isinstance(exc, ChannelFull):
            # Workers are busy and already have plenty of wake-ups; they poll the table.
            logger.debug("Channel full; the run stays queued for a polling worker.")
            return
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            logger.warning(
                "Could not send a Sisy wake-up message (%r); the run stays queued and is "
                "picked up by a polling worker or sent again by the scheduler.", exc,
            )

    def flush(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds for the messages still being sent."""
        for future in list(self._pending):
            try:
                future.result(timeout=timeout)
            except Exception:  # already logged by _done
                pass


sender = Sender()
atexit.register(sender.flush)


def wake_many(runs: Iterable[Run], *, layer_alias: str = "default") -> None:
    """Send the wake-up message of each run (now, not on commit)."""
    runs = list(runs)
    if not runs:
        return
    layer = get_channel_layer(layer_alias)
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        local_wakeup.notify()
        return
    sender.send(layer, ((run.channel, run_message(run)) for run in runs))


def wake(run: Run) -> None:
    wake_many([run])


def _not_before(run_after: datetime | timedelta | None, now: datetime) -> datetime:
    if run_after is None:
        return now
    if isinstance(run_after, timedelta):
        return now + run_after
    return run_after


def enqueue(definition, args: tuple, kwargs: dict) -> Run:
    """Validate, write a queued ``Run`` and wake a worker once the transaction commits.

    Bad arguments raise :class:`~sisy.exceptions.InvalidArguments` here, in the
    caller, and nothing is written. With ``SISY["EAGER"] = True`` the run is
    executed inline before this returns.
    """
    json_args, json_kwargs = definition.arguments.dump(args, kwargs)
    conf = get_settings()
    overrides = conf.overrides_for(definition.name)
    now = timezone.now()
    not_before = _not_before(definition.run_after, now)
    run = Run.objects.create(
        task_name=definition.name,
        args=json_args,
        kwargs=json_kwargs,
        channel=overrides.get("channel") or definition.channel or conf.RUN_TASK_CHANNEL,
        scheduled_for=not_before,
        not_before=not_before,
        enqueued_at=now,
        sent_at=now if not_before <= now else None,
        exclusive=not overrides.get("allow_overlap", definition.allow_overlap),
    )
    if conf.EAGER:
        from sisy.execution import execute_eagerly

        execute_eagerly(run)
        return run
    if not_before <= now:
        transaction.on_commit(lambda: wake(run))
    return run
