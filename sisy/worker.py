"""The Sisy worker: takes wake-ups and runs what it can claim.

Unlike ``channels.worker.Worker`` it takes only as many waiting messages as
it expects to finish within ``CLAIM_AHEAD`` (the others stay in Redis for
other workers), survives malformed messages and receive
errors, finishes the current run on SIGTERM/SIGINT, and keeps a heartbeat
row so the scheduler can tell a lost worker from a long run. With the
in-memory layer (the embedded mode) it is woken in-process and polls the
database, so runs queued by other processes are found within
``SISY["POLL_INTERVAL"]`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from django.db import DatabaseError, connection
from django.utils import timezone

from sisy import dispatch
from sisy.conf import get_settings
from sisy.connections import tidy_connections
from sisy.execution import (
    claim,
    claim_batch,
    claim_exclusive,
    claim_wakeup,
    claim_wakeups,
    execute,
    prepare,
    release,
)
from sisy.models import Run, Task
from sisy.models import Worker as WorkerRow
from sisy.outcomes import OutcomeWriter

__all__ = ["Worker", "Heartbeat", "parse_message", "worker_name"]

logger = logging.getLogger(__name__)

#: Seconds a worker waits before it tries again to receive after a failure, doubled
#: at each failure in a row up to MAX_BACKOFF.
INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: A drain claims no more runs in one statement than it expects to finish within
#: this many seconds: short runs are claimed ``batch_size`` at a time, runs that
#: take long one at a time, so that the worker's other threads (and other
#: workers) share a backlog instead of waiting while one thread holds it.
CLAIM_AHEAD = 0.05
#: Weight of the newest run in the running mean of how long a run takes.
DURATION_WEIGHT = 0.2
#: After a wake-up's run, a worker looks at the table for more when that run
#: waited this long (seconds) after it was due -- the worker is behind -- ...
BACKLOG_AGE = 0.02
#: ... or when it has not looked for this long (seconds): a lost wake-up's run is
#: found within that while other wake-ups keep coming (POLL_INTERVAL when none do).
DRAIN_EVERY = 0.1
#: While draining a backlog, a worker looks for due runs of tasks that forbid
#: overlap before a batch only when it has not looked (and found none) for this
#: long (seconds): one statement per batch cost as much as the batch's claim.
EXCLUSIVE_EVERY = 0.02


def worker_name(prefix: str = "") -> str:
    """A name unique across hosts and restarts: ``host:pid:random``."""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


#: In-process workers look at the table this often (seconds) while work keeps coming,
#: for BUSY_SECONDS after they last found some.
BUSY_POLL = 0.02
#: ... and on SQLite it checks for other processes' commits this often (seconds).
DATA_VERSION_POLL = 0.002
BUSY_SECONDS = 5.0
#: How many run ids a worker remembers having run.
RECENT_RUNS = 10_000
#: A message may ask a worker to wait at most this long (seconds) for its run's start.
MAX_EARLY = 1.0


def start_at(message: dict) -> float | None:
    """The UNIX time at which a message's run may start (``at``), if well-formed."""
    at = message.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool) and at == at:
        return at
    return None


def parse_message(message: object) -> tuple[int, str] | None:
    """Return ``(run id, name)`` of a well-formed run message, else ``None``."""
    if not isinstance(message, dict) or message.get("type") != dispatch.MESSAGE_TYPE:
        return None
    run_id, name = message.get("run"), message.get("name")
    if not isinstance(run_id, int) or isinstance(run_id, bool) or run_id <= 0:
        return None
    if not isinstance(name, str) or not name or len(name) > 200:
        return None
    return run_id, name


def _short(message: object) -> str:
    text = repr(message)
    return text if len(text) <= 200 else text[:200] + "..."


class Heartbeat:
    """A thread that keeps this worker's ``Worker`` row fresh."""

    def __init__(self, name: str, channel: str, interval: float):
        self.name, self.channel, self.interval = name, channel, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sisy-heartbeat", daemon=True)

    def _beat(self) -> None:
        now = timezone.now()
        updated = WorkerRow.objects.filter(name=self.name).update(last_seen=now)
        if not updated:
            WorkerRow.objects.create(
                name=self.name, hostname=socket.gethostname(), pid=os.getpid(),
                channel=self.channel, started_at=now, last_seen=now,
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except DatabaseError as exc:
                logger.warning("Worker %s could not write its heartbeat: %s", self.name, exc)
                tidy_connections()
        connection.close()

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            WorkerRow.objects.filter(name=self.name).update(stopped_at=timezone.now())
        except DatabaseError:
            pass


class Worker:
    """Receive wake-ups on ``channels`` and run the runs they name.

    ``run(stop_event)`` blocks until ``stop_event`` is set; the run in
    progress then finishes before it returns.
    """

    def __init__(self, channels: list[str] | None = None, *, name: str | None = None,
                 concurrency: int = 1, layer_alias: str = "default",
                 poll_interval: float | None = None, manage_connections: bool = True,
                 batch_size: int = 10, background_outcomes: bool = True):
        conf = get_settings()
        #: Close stale database connections around each run, as Django does per request.
        #: Tests that run a worker inside a test transaction pass False.
        self.manage_connections = manage_connections
        self.channels = list(channels or [conf.RUN_TASK_CHANNEL])
        self.name = name or worker_name()
        self.concurrency = max(1, concurrency)
        self.layer_alias = layer_alias
        self.poll_interval = poll_interval or conf.POLL_INTERVAL
        self.stop_event = threading.Event()
        self.processed = 0
        self.batch_size = batch_size
        #: Running mean of a run's duration here (seconds); None before the first run.
        self.seconds_per_run: float | None = None
        #: Whether the last wake-up's run had been taken by another worker.
        self.contended = False
        #: Whether the last batch claim held runs of standing tasks (see claim_batch).
        self._standing = False
        #: ``time.monotonic()`` of the last :meth:`drain` (-inf: never).
        self.last_drain = float("-inf")
        #: Runs this process has claimed and not yet finished (all threads), and the
        #: lock that makes "claim, then remember" one step for the audit below.
        self._held: set[int] = set()
        #: Set after a database error: look for claims whose answer was lost.
        self._audit_claims = False
        self._claims_lock = threading.Lock()
        #: Ids this worker ran lately; their (duplicate or late) wake-ups need no query.
        #: A set for the lookup on every message, a deque to forget the oldest.
        self._recent: set[int] = set()
        self._recent_order: collections.deque[int] = collections.deque()
        #: On PostgreSQL a worker does not wait for the outcome write of a plain
        #: success; the run stays in ``_held`` until it is written.
        #: (``runworker`` passes ``background_outcomes=False``: it has no clean stop.)
        self._outcomes = (OutcomeWriter(on_written=self._written)
                          if background_outcomes and manage_connections
                          and connection.vendor == "postgresql" else None)

    # -- one unit of work, run in a thread --------------------------------------
    def _claim(self, func, *args, **kwargs) -> list:
        with self._claims_lock:
            result = func(*args, **kwargs)
            runs = result if isinstance(result, list) else [result] if result else []
            self._held.update(run.pk for run in runs)
        return runs

    def _run_claimed(self, run, prepared=None) -> None:
        started = time.monotonic()
        try:
            execute(run, manage_connections=self.manage_connections, prepared=prepared,
                    outcomes=self._outcomes)
        finally:
            if not getattr(run, "_sisy_outcome_pending", False):
                self._held.discard(run.pk)
            self.note_duration(time.monotonic() - started)
        self.processed += 1
        self._recent.add(run.pk)
        self._recent_order.append(run.pk)
        if len(self._recent_order) > RECENT_RUNS:
            self._recent.discard(self._recent_order.popleft())

    def note_duration(self, seconds: float) -> None:
        """Add one run's duration to the running mean behind :meth:`claim_limit`."""
        mean = self.seconds_per_run
        if mean is not None:
            seconds = mean + (seconds - mean) * DURATION_WEIGHT
        self.seconds_per_run = seconds

    def claim_limit(self) -> int:
        """How many runs the next batch claim takes: what ends within ``CLAIM_AHEAD``.

        One until this worker has timed a run, then ``batch_size`` for runs of
        5 ms or less, down to one for runs of 50 ms or more.
        """
        mean = self.seconds_per_run
        if mean is None:
            return 1
        if mean * self.batch_size <= CLAIM_AHEAD:
            return self.batch_size
        return max(1, int(CLAIM_AHEAD / mean))

    def _written(self, run) -> None:
        self._held.discard(run.pk)

    def recover_own_claims(self) -> int:
        """Put back runs this worker claimed but is not executing.

        After a lost database connection a claim may have committed without its
        answer reaching us; such a run would stay ``running`` under a worker that
        is alive and heart-beating, so nobody else would ever settle it.
        """
        with self._claims_lock:
            stuck = Run.objects.filter(status=Run.Status.RUNNING, worker=self.name).exclude(
                pk__in=list(self._held))
            tasks = set(stuck.exclude(task=None).values_list("task_id", flat=True))
            count = stuck.update(status=Run.Status.QUEUED, worker="", started_at=None)
            if tasks:  # a claim may have set their running flag (as release() clears it)
                Task.objects.filter(pk__in=tasks).update(running=False)
        if count:
            logger.warning("Worker %s put %d runs it had claimed without knowing back in "
                           "the queue after a database error.", self.name, count)
        return count

    def _tidy_connections(self) -> None:
        if self.manage_connections:
            tidy_connections()

    def handle_message(self, message: object) -> bool:
        """Claim and run the run a message names; False if it was refused or lost."""
        return self._handle(message)[0]

    def _handle(self, message: object) -> tuple[bool, bool]:
        """Handle a wake-up: (whether the named run ran, whether a drain should follow).

        The named run is claimed alone, which is the quickest way to start it,
        and the table is drained after it when :meth:`drain_due` says so. But
        when the last wake-up's run had been taken by another worker (whose
        batches are then taking the runs that these wake-ups name) and this
        worker knows its runs are short (:meth:`claim_limit` above one), the
        named run and a batch of other waiting runs are claimed in one
        statement (:func:`~sisy.execution.claim_wakeup`): the wake-up still
        finds work, and the table is drained only when that batch came back
        full.
        """
        parsed = parse_message(message)
        if parsed is None:
            logger.warning("Worker %s refused a malformed message: %s", self.name, _short(message))
            return False, False
        run_id, name = parsed
        if run_id in self._recent:
            return False, False  # this worker already ran it while draining the table
        self._tidy_connections()
        at = start_at(message)
        early = 0.0 if at is None else at - time.time()
        if not 0 < early <= MAX_EARLY:
            early = 0.0
        limit = self.claim_limit()
        if self.contended and not early and limit > 1:
            with self._claims_lock:
                batch = claim_wakeup(run_id, name, self.channels, self.name, more=limit - 1)
                self._held.update(run.pk for run in batch or ())
            if batch is not None:  # None: its task is running; claim() below records that
                ran = bool(batch) and batch[0].pk == run_id
                self.contended = not ran
                self._run_all(batch)
                return ran, len(batch) - ran >= limit - 1
        # A slot fired ahead is claimed ahead too, so that it starts on the dot.
        claim_time = timezone.now() + timedelta(seconds=early)
        claimed = self._claim(claim, run_id, self.name, name=name, now=claim_time,
                              standing=at is not None)  # a slot's wake-up carries "at"
        self.contended = not claimed
        if not claimed:
            logger.debug("Run %s (%s) was not claimable; another worker has it.", run_id, name)
            return False, False
        prepared = None
        if early:
            prepared = prepare(claimed[0])  # the database work, before the slot
            if self.stop_event.wait(max(0.0, at - time.time())):
                release(claimed, self.name)  # asked to stop before its start: give it back
                self._held.discard(run_id)
                return False, False
        self._run_claimed(claimed[0], prepared)
        return True, bool(early) or self.drain_due(claimed[0], claim_time, time.monotonic())

    def _handle_many(self, messages: list) -> tuple[bool, bool]:
        """Handle wake-ups popped together: (whether any named run ran, whether a drain
        should follow).

        The runs they name are claimed in one statement
        (:func:`~sisy.execution.claim_wakeups`) and run in the order of the
        wake-ups; after wake-ups lost to another worker, with a batch of other
        waiting runs, as :meth:`_handle` does for one. Malformed messages,
        slots fired ahead (``at``) and, when a named run may not start now,
        every message go through :meth:`_handle` one by one.
        """
        named, single = {}, []
        for message in messages:
            parsed = parse_message(message)
            if parsed is None or start_at(message) is not None:
                single.append(message)
            else:
                named[parsed[0]] = (parsed, message)
        if len(named) == 1:
            single += [message for _, message in named.values()]
            named = {}
        ran, drain = self._handle_each(single)
        if not named or self.stop_event.is_set():
            return ran, drain
        self._tidy_connections()
        more = max(0, self.claim_limit() - len(named)) if self.contended else 0
        claimed_at = timezone.now()
        with self._claims_lock:
            batch = claim_wakeups([parsed for parsed, _ in named.values()], self.channels,
                                  self.name, now=claimed_at, more=more)
            self._held.update(run.pk for run in batch or ())
        if batch is None:  # a named run may not start now: claim() records which
            one_ran, one_drain = self._handle_each([message for _, message in named.values()])
            return ran or one_ran, drain or one_drain
        found = [run for run in batch if run.pk in named]
        self.contended = len(found) < len(named)
        done = self._run_all(batch)
        if more and len(batch) - len(found) >= more:
            drain = True  # a full batch: the table may hold more
        elif found:
            drain = drain or self.drain_due(found[0], claimed_at, time.monotonic())
        return ran or any(run.pk in named for run in batch[:done]), drain

    def _handle_each(self, messages: list) -> tuple[bool, bool]:
        """:meth:`_handle` for each message until asked to stop; the popped
        wake-ups left then only delay their runs until a worker polls the table."""
        ran = drain = False
        for message in messages:
            if self.stop_event.is_set():
                return ran, False
            one_ran, one_drain = self._handle(message)
            ran, drain = ran or one_ran, drain or one_drain
        return ran, drain

    def drain_due(self, run, claimed_at: datetime, monotonic_now: float) -> bool:
        """Whether to :meth:`drain` after running ``run``, claimed at ``claimed_at``
        for a wake-up.

        A worker that keeps up finds each run through its own wake-up, and a
        look at the table after it finds nothing: two statements per run that
        take CPU from the producer and the database (a fifth of end-to-end
        throughput on two cores, see "Performance" in the docs). So the worker
        looks only when the run waited more than :data:`BACKLOG_AGE` after it
        was due -- a backlog, which the drain claims in batches -- or when
        it has not looked for :data:`DRAIN_EVERY` seconds, or after a one-shot
        run of a task that forbids overlap, which another run of its task
        may have been waiting for (its wake-up taken by a worker that had to
        leave it queued). Clocks of
        different hosts only shift when that happens: a producer's clock
        ahead of the worker's means fewer drains, behind it more; the poll
        every ``POLL_INTERVAL`` stays.
        """
        if monotonic_now - self.last_drain >= DRAIN_EVERY:
            return True
        if run.exclusive and run.task_id is None:
            return True  # a run of its task may be waiting for this one to end
        return (claimed_at - run.not_before).total_seconds() >= BACKLOG_AGE

    def _run_all(self, runs: list) -> int:
        """Run claimed runs in order; put back those not started when asked to stop.

        The outcomes of runs claimed together are written together, after the
        last of them (:meth:`~sisy.outcomes.OutcomeWriter.gathering`).
        """
        gathering = (self._outcomes.gathering() if self._outcomes is not None and len(runs) > 1
                     else contextlib.nullcontext())
        with gathering:
            for index, run in enumerate(runs):
                if self.stop_event.is_set():
                    release(runs[index:], self.name)
                    self._held.difference_update(run.pk for run in runs[index:])
                    return index
                self._run_claimed(run)
        return len(runs)

    def drain(self, *, exclusive: bool = True, wakeups: bool = True) -> int:
        """Claim and run due queued runs until it has caught up or is asked to stop.

        Runs are claimed up to ``batch_size`` at a time in one statement, as
        many as :meth:`claim_limit` expects to finish within ``CLAIM_AHEAD``
        seconds, so that slow runs are shared by all threads. Runs of
        tasks that forbid overlap (standing tasks, by default) are claimed in
        a batch of their own, no two of one task, before the other runs (which
        fill the rest of the limit, at least one), so that a long backlog of
        one-shot runs does not hold back a slot that is due nor the other way
        round; after a look that found none, the
        next is skipped for :data:`EXCLUSIVE_EVERY` seconds; and while they are
        found, a batch claim that found nothing is not repeated for as long
        (it reads past every one of them queued). Right after a
        wake-up (``exclusive=False``) the first look skips them: the wake-up
        named its run directly. A batch that comes back less than full means
        the worker has caught up: it stops, and takes the runs queued since
        through their wake-ups, several per pop, instead of racing the
        producer with claims of a run or two each. With ``wakeups=False``
        (receiving has been failing: no wake-up will come) it goes on until
        a claim finds nothing.
        """
        done = 0
        self.last_drain = time.monotonic()
        looked = float("-inf")  # when the last look for exclusive runs found none
        emptied = float("-inf")  # when the last batch claim found none
        self._tidy_connections()
        while not self.stop_event.is_set():
            found = []
            limit = self.claim_limit()
            if exclusive and time.monotonic() - looked >= EXCLUSIVE_EVERY:
                found = self._claim(claim_exclusive, self.channels, self.name, limit=limit)
                if not found:
                    looked = time.monotonic()
            exclusive = True  # from the second batch on: a backlog is being drained
            batch = []
            # While a backlog of exclusive runs is drained, a batch claim that found
            # nothing is not repeated for EXCLUSIVE_EVERY seconds: it reads past every
            # exclusive run queued (the index holds all queued runs). The batch fills
            # what the exclusive runs left of the limit, with at least one run, so
            # that a backlog of them does not hold back the others.
            if not found or time.monotonic() - emptied >= EXCLUSIVE_EVERY:
                batch = self._claim(claim_batch, self.channels, self.name,
                                    limit=max(1, limit - len(found)), standing=self._standing)
                if not batch:
                    emptied = time.monotonic()
                self._standing = any(run.task_id is not None for run in batch)
            if not found and not batch:
                break
            done += self._run_all(found + batch)
            if wakeups and not found and len(batch) < limit:
                break  # caught up: runs queued from now on come with wake-ups of their own
        return done

    # -- the loops: one per thread, each with its own layer and Redis clients ---------------
    def _guarded(self, func, *args, **kwargs):
        """Run ``func``; a database outage or a bug is logged and waited out, never fatal."""
        try:
            if self._audit_claims:
                self.recover_own_claims()
                self._audit_claims = False
            return func(*args, **kwargs)
        except DatabaseError as exc:
            self._audit_claims = True
            logger.warning("Worker %s lost the database (%s); retrying.", self.name, exc)
        except Exception:  # the worker must outlive anything
            logger.exception("Worker %s hit an unexpected error; continuing.", self.name)
        tidy_connections()
        self.stop_event.wait(1.0)
        return None

    def _consume_layer(self, channel: str) -> None:
        # Each thread gets its own layer instance: channels-redis keeps per-layer
        # asyncio locks that must not be shared between event loops, and the
        # synchronous client of Sisy's pop is kept on the layer.
        layer = channel_layers.make_backend(self.layer_alias)
        loop = asyncio.new_event_loop()
        backoff = INITIAL_BACKOFF
        receiving = True  # whether the last receive worked
        next_poll = time.monotonic() + self.poll_interval
        try:
            while not self.stop_event.is_set():
                if time.monotonic() >= next_poll:
                    # Look at the table every POLL_INTERVAL even while wake-ups keep
                    # coming: a lost one must not wait for a quiet second. While
                    # receiving fails no wake-up comes, so the drain goes on until
                    # the table is empty.
                    self._guarded(self.drain, wakeups=receiving)
                    next_poll = time.monotonic() + self.poll_interval
                try:
                    # As many wake-ups at once as runs this worker expects to finish
                    # within CLAIM_AHEAD: the others stay in Redis for other workers.
                    messages = self._receive(layer, channel, next_poll - time.monotonic(),
                                             self.claim_limit(), loop)
                except TimeoutError:
                    continue
                except Exception as exc:  # a bad message or a lost Redis must not kill us
                    logger.warning("Worker %s could not receive on %s: %r; retrying in %.1f s.",
                                   self.name, channel, exc, backoff)
                    receiving = False
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    continue
                backoff, receiving = INITIAL_BACKOFF, True
                # Look at the table only after running the run a wake-up named. A
                # wake-up of a run taken already (by this worker's drain or another
                # worker) means the taker is draining; runs queued since have wake-ups
                # of their own, and the poll above finds any that were lost.
                messages = [m for m in messages if not self._ran_lately(m)]
                if messages:
                    handled = self._guarded(self._handle_many, messages)
                    if handled and handled[1]:
                        self._guarded(self.drain, exclusive=False)
        finally:
            _close_loop(loop, layer)
            connection.close()

    @staticmethod
    def _receive(layer, channel: str, timeout: float, count: int = 1,
                 loop: asyncio.AbstractEventLoop | None = None) -> list:
        """Up to ``count`` messages on ``channel`` (at least one); ``TimeoutError`` after
        ``timeout`` seconds without any.

        From channels-redis, Sisy's own pop (:func:`~sisy.dispatch.pop_wakeups`), in
        this thread; from other layers, ``layer.receive`` on ``loop``.
        """
        timeout = max(0.01, timeout)
        if dispatch._batchable(layer, channel):
            messages = dispatch.pop_wakeups(layer, channel, timeout, count)
            if not messages:
                raise TimeoutError
            return messages
        return [loop.run_until_complete(asyncio.wait_for(layer.receive(channel), timeout))]

    def _ran_lately(self, message: object) -> bool:
        parsed = parse_message(message)
        return parsed is not None and parsed[0] in self._recent

    def _consume_local(self) -> None:
        seen = dispatch.local_wakeup.generation
        busy_until = 0.0
        try:
            while not self.stop_event.is_set():
                at = dispatch.local_wakeup.take_next_at()
                if at is not None:
                    early = (at - timezone.now()).total_seconds()
                    if 0 < early <= MAX_EARLY:
                        self.stop_event.wait(early)  # a slot fired ahead: start it on time
                if self._guarded(self.drain):
                    busy_until = time.monotonic() + BUSY_SECONDS
                seen = self._wait_local(seen, self._local_poll(busy_until))
        finally:
            connection.close()

    def _wait_local(self, seen: int, timeout: float) -> int:
        """Wait for an in-process wake-up, up to ``timeout`` seconds; return the generation.

        On SQLite, while busy, it also looks every ``DATA_VERSION_POLL`` seconds
        at ``PRAGMA data_version``, which changes when another connection (a
        web process) commits: a run queued there starts within milliseconds
        instead of at the next look at the table, for a query that reads no
        table.
        """
        if connection.vendor != "sqlite" or timeout > BUSY_POLL:
            return dispatch.local_wakeup.wait(seen, timeout)
        deadline = time.monotonic() + timeout
        version = self._data_version()
        while (left := deadline - time.monotonic()) > 0:
            generation = dispatch.local_wakeup.wait(seen, min(left, DATA_VERSION_POLL))
            if generation != seen or self._data_version() != version:
                return generation
        return dispatch.local_wakeup.generation

    def _data_version(self) -> int | None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA data_version")
                return cursor.fetchone()[0]
        except DatabaseError:
            return None

    def _local_poll(self, busy_until: float) -> float:
        """How long an in-process worker waits before it looks at the table again.

        Runs queued by other processes (a web process) reach it only through
        the table: right after it found work it looks every ``BUSY_POLL``
        seconds, otherwise every ``POLL_INTERVAL``.
        """
        if time.monotonic() < busy_until:
            return min(BUSY_POLL, self.poll_interval)
        return min(self.poll_interval, 1.0)

    def _consumers(self):
        layer = get_channel_layer(self.layer_alias)
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            return [(self._consume_local, ()) for _ in range(self.concurrency)]
        return [(self._consume_layer, (channel,))
                for channel in self.channels for _ in range(self.concurrency)]

    def request_stop(self) -> None:
        self.stop_event.set()
        dispatch.local_wakeup.notify()

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Work until ``stop_event`` (or :meth:`request_stop`) says stop.

        Each consumer runs in its own thread; this thread only waits, so that
        signal handlers run at once.
        """
        if stop_event is not None:
            self.stop_event = stop_event
        heartbeat = Heartbeat(self.name, ",".join(self.channels), get_settings().WORKER_HEARTBEAT)
        heartbeat.start()
        logger.info("Worker %s listening on %s", self.name, ", ".join(self.channels))
        threads = [threading.Thread(target=target, args=args, name=f"sisy-worker-{i}", daemon=True)
                   for i, (target, args) in enumerate(self._consumers())]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                if self.stop_event.wait(0.5):
                    dispatch.local_wakeup.notify()
                    for thread in threads:
                        thread.join()
        finally:
            self.stop_event.set()
            if self._outcomes is not None:
                self._outcomes.close()
            heartbeat.stop()
            tidy_connections()
            logger.info("Worker %s stopped after %d runs", self.name, self.processed)


def _close_loop(loop: asyncio.AbstractEventLoop, layer) -> None:
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    dispatch.close_sync_clients(layer)
    close = getattr(layer, "close_pools", None)
    if close is not None:
        try:
            loop.run_until_complete(close())
        except Exception:  # a broken connection may refuse to close
            pass
    loop.close()
