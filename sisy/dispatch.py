"""Queue runs and send their wake-up messages.

The database is the queue: ``enqueue`` writes a queued ``Run`` row, and after
the surrounding transaction commits a message ``{"type": "sisy.run", "run":
id, "name": name}`` wakes a worker. A lost message only delays a run: idle
workers poll the table and the scheduler sends stale wake-ups again.

A lone wake-up to channels-redis is sent by the calling thread itself, with
one pipelined round trip of a synchronous Redis client; a stream of them
(``.delay()`` in a loop) goes to one background thread per process
(:class:`Sender`), which sends them in batches, so that ``.delay()`` in a
loop does not pay for a round trip or a new Redis connection per call. With
the in-memory layer, which only reaches the same process and is not
thread-safe, wake-ups go to in-process workers through :data:`local_wakeup`
instead.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models.base import ModelState
from django.utils import timezone
from redis.exceptions import ResponseError

from sisy.conf import get_settings
from sisy.connections import execute_write
from sisy.models import Run

__all__ = ["enqueue", "wake", "wake_many", "run_message", "Sender", "local_wakeup"]

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "sisy.run"
#: Seconds by which a standing slot's wake-up jumps the channel's queue.
SLOT_PRIORITY = 30.0
#: The sender thread sends a stream of wake-ups at most this often (seconds),
#: unless LINGER_BATCH of them are waiting.
LINGER = 0.01
LINGER_BATCH = 100
#: The longest a caller waits for Redis when it sends a lone wake-up itself (seconds),
#: to connect and then for the answer; past it the sender thread takes over.
INLINE_TIMEOUT = 0.1
#: After a lone wake-up could not be sent inline, the sender thread sends every
#: wake-up for this many seconds (callers do not wait on a Redis that is down).
INLINE_PAUSE = 5.0


def run_message(run: Run, now: datetime | None = None) -> dict:
    """The wake-up message for a run: its id and registered name, nothing importable.

    A run fired ahead of its slot also carries ``at``, its ``not_before`` as a
    UNIX timestamp: the worker waits until then and starts it on time.
    """
    message = {"type": MESSAGE_TYPE, "run": run.pk, "name": run.task_name}
    if run.not_before is not None and run.not_before > (now or timezone.now()):
        message["at"] = run.not_before.timestamp()
    return message


class LocalWakeup:
    """Wakes workers that run in this process (the embedded mode)."""

    def __init__(self):
        self._condition = threading.Condition()
        self._generation = 0
        #: The earliest future ``not_before`` announced (a slot fired ahead), or None.
        self.next_at: datetime | None = None

    def notify(self, at: datetime | None = None) -> None:
        with self._condition:
            self._generation += 1
            if at is not None and at > timezone.now():
                self.next_at = at if self.next_at is None else min(self.next_at, at)
            self._condition.notify_all()

    def take_next_at(self) -> datetime | None:
        """Return and forget the earliest announced future start."""
        with self._condition:
            at, self.next_at = self.next_at, None
            return at

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
    """Sends wake-ups: a lone one from the calling thread, streams in batches from a
    background thread.

    A wake-up that comes alone -- nothing waiting, nothing sent in the last
    :data:`LINGER` seconds -- to channels-redis is sent at once by the
    calling thread (:meth:`send_inline`): one pipelined round trip, as
    Celery's ``.delay()`` makes. Left to the thread, it waited for the
    thread to get the GIL, which a caller that goes on computing (a view
    rendering its response) holds for up to the interpreter's 5 ms switch
    interval. Otherwise ``send()`` only appends to a list and returns; the
    thread takes everything waiting, groups it by channel, and sends each
    group at once. For channels-redis that is one ``ZADD`` of many members
    (the layer's own serialisation and key layout, one round trip per batch
    instead of four per message), sent with a synchronous client: the
    thread's CPU per wake-up in a ``.delay()`` loop was a third lower than
    through the layer's asyncio connections. Other layers, and
    process-specific ``!`` channels, get ``layer.send`` per message on an
    event loop the thread makes when it first needs one.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._waiting: list[tuple[object, str, dict]] = []
        self._busy = False
        self._thread: threading.Thread | None = None
        self._pid = None
        self._last_warning = 0.0
        #: ``time.monotonic()`` of the last send, inline or by the thread.
        self._last_sent = float("-inf")
        #: Until this ``time.monotonic()``, after a failed inline send, nothing goes inline.
        self._inline_paused_until = float("-inf")

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._waiting, self._busy = [], False
            self._thread = threading.Thread(target=self._loop, name="sisy-sender", daemon=True)
            self._thread.start()

    def send(self, layer, messages: Iterable[tuple[str, dict]]) -> None:
        """Send messages now if they come alone, else queue them for the sender thread."""
        messages = list(messages)
        if self.send_inline(layer, messages):
            return
        with self._condition:
            self._ensure_thread()
            was_empty = not self._waiting
            self._waiting.extend((layer, channel, message) for channel, message in messages)
            # Wake the thread only when it has something new to decide: it waits
            # for a first message, or lingers until LINGER_BATCH are waiting.
            if was_empty or len(self._waiting) >= LINGER_BATCH:
                self._condition.notify_all()

    def send_inline(self, layer, messages: list[tuple[str, dict]]) -> bool:
        """Send ``messages`` from this thread if they come alone; whether it did.

        Only to channels-redis, only when nothing is waiting for the thread or
        being sent and nothing was sent in the last :data:`LINGER` seconds (the
        messages after it, a stream, go to the thread in batches), and not for
        :data:`INLINE_PAUSE` seconds after an inline send failed. The caller
        waits at most :data:`INLINE_TIMEOUT` seconds to connect and as long
        for the answer; when Redis fails it or is slower, the messages go to
        the thread, which may send them a second time: a wake-up that comes
        twice starts its run once.
        """
        now = time.monotonic()
        # Looked at without the lock first: in a stream this is the common, cheap answer.
        if (not self._alone(now) or not messages
                or not all(_batchable(layer, channel) for channel, _ in messages)):
            return False
        with self._condition:
            if not self._alone(now):
                return False
            self._last_sent = now
        try:
            for (_, channel), group in _grouped((layer, c, m) for c, m in messages):
                _zadd_many(layer, channel, group, inline=True)
        except Exception as exc:
            with self._condition:
                self._inline_paused_until = time.monotonic() + INLINE_PAUSE
            logger.debug("Could not send a wake-up inline (%r); the sender thread sends it.", exc)
            return False
        return True

    def _alone(self, now: float) -> bool:
        """Whether a message sent at ``now`` may go inline: nothing waiting or being sent,
        nothing sent in the last LINGER seconds, inline sends not paused."""
        return not (self._waiting or self._busy or now - self._last_sent < LINGER
                    or now < self._inline_paused_until)

    def _loop(self) -> None:
        loop = None
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._waiting)
                # A stream of wake-ups (``.delay()`` in a loop) is sent at most
                # every LINGER seconds, so that the thread does not contend for
                # the GIL with the caller once per message.
                linger = self._last_sent + LINGER - time.monotonic()
                if linger > 0:
                    self._condition.wait_for(lambda: len(self._waiting) >= LINGER_BATCH, linger)
                batch, self._waiting, self._busy = self._waiting, [], True
                self._last_sent = time.monotonic()
            for (layer, channel), messages in _grouped(batch):
                try:
                    if _batchable(layer, channel):
                        _zadd_many(layer, channel, messages)
                    else:
                        loop = loop or asyncio.new_event_loop()
                        loop.run_until_complete(_send_each(layer, channel, messages))
                except ChannelFull:
                    # Workers are busy and already have plenty of wake-ups; they poll the table.
                    logger.debug("Channel %s is full; runs stay queued for polling workers.",
                                 channel)
                except Exception as exc:  # never let the sender thread die
                    self._warn(exc)
            with self._condition:
                self._busy = False
                self._condition.notify_all()

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            logger.warning(
                "Could not send Sisy wake-up messages (%r); the runs stay queued and are "
                "picked up by polling workers or sent again by the scheduler.", exc,
            )

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds until every queued message has been handled."""
        with self._condition:
            if self._thread is None or self._pid != os.getpid():
                return True
            return self._condition.wait_for(
                lambda: not self._waiting and not self._busy, timeout=timeout)


def _grouped(batch: Iterable[tuple[object, str, dict]]) -> list[tuple[tuple, list[dict]]]:
    """``(layer, channel, message)`` triples as ``((layer, channel), messages)`` pairs,
    in order."""
    groups: dict[tuple[int, str], tuple[tuple, list[dict]]] = {}
    for layer, channel, message in batch:
        groups.setdefault((id(layer), channel), ((layer, channel), []))[1].append(message)
    return list(groups.values())


async def _send_each(layer, channel: str, messages: list[dict]) -> None:
    """Send ``messages`` one by one through ``layer.send`` (a layer Sisy cannot batch for)."""
    for message in messages:
        await layer.send(channel, message)


def _batchable(layer, channel: str) -> bool:
    """Whether Sisy may read and write ``channel`` of ``layer`` with its own Redis commands."""
    try:
        from channels_redis.core import RedisChannelLayer
    except ImportError:  # pragma: no cover - channels-redis is a dependency
        return False
    return (isinstance(layer, RedisChannelLayer) and "!" not in channel
            and all(hasattr(layer, a) for a in ("prefix", "expiry", "consistent_hash", "hosts",
                                                "serialize", "deserialize", "connection")))


def _shard(layer, channel: str, *, blocking: bool):
    """The synchronous client (:func:`_sync_client`) of the Redis host that holds
    ``channel``'s wake-ups.

    With several ``hosts``, channels-redis writes an ordinary channel's
    messages to each host in turn, and its receivers block on one host after
    the other. Sisy keeps a channel on the host its name hashes to (as
    channels-redis does for a process's own channels), so that a worker
    blocked there gets its wake-ups at once.
    """
    return _sync_client(layer, layer.consistent_hash(channel), blocking=blocking)


#: Whether the Redis server answers ``BZMPOP`` (Redis 7+); False after it refused once.
_bzmpop = True
#: The longest a worker blocks in one Redis pop (seconds; Redis 6+ takes fractions) ...
MAX_BLOCK = 2.0
#: ... and how much longer its client waits for the answer before it gives up.
BLOCK_MARGIN = 3.0


def pop_wakeups(layer, channel: str, timeout: float, count: int = 1) -> list:
    """Take up to ``count`` messages of a channels-redis channel in one round trip.

    Waits up to ``timeout`` seconds (at most :data:`MAX_BLOCK`) for the first;
    returns ``[]`` if none came. ``layer.receive`` makes four round trips per
    message (a clean-up script,
    the pop, a backup copy before it returns, and removing that copy) so that
    a receiver cancelled half-way loses nothing. A lost wake-up only delays a
    run until a worker polls the table, so a Sisy worker pops and is done: one
    ``BZPOPMIN``, or for several one ``BZMPOP`` (Redis 7; on Redis 6 a worker
    pops one at a time). Messages are read the way ``layer.receive`` reads
    them (the lowest score first, the layer's own deserialisation), from the
    channel's own host (:func:`_shard`).

    It blocks the calling thread, with a synchronous client of its own
    (:func:`_sync_client`): a worker's thread has nothing else to do while it
    waits, and an event loop's round of ``run_until_complete`` per pop made a
    lone run start 0.1-0.15 ms later.
    """
    global _bzmpop
    client = _shard(layer, channel, blocking=True)
    key, timeout = layer.prefix + channel, min(max(0.01, timeout), MAX_BLOCK)
    if count > 1 and _bzmpop:
        try:
            result = client.bzmpop(timeout, 1, [key], min=True, count=count)
        except ResponseError as exc:
            if "unknown command" not in str(exc).lower():
                raise
            _bzmpop = False
        else:
            return [] if result is None else [layer.deserialize(member)
                                              for member, _ in result[1]]
    result = client.bzpopmin(key, timeout=timeout)
    return [] if result is None else [layer.deserialize(result[1])]


def _queue_zadd(pipe, layer, channel: str, messages: list[dict]) -> None:
    """Queue on ``pipe`` (sync or asyncio) the commands that add many messages to a
    channels-redis channel the way ``layer.send`` stores one.

    Drop expired messages, add the new ones, trim the channel to its capacity
    (oldest first: a wake-up only says "look at the table", so the newest are
    as good as any) and refresh its expiry.
    """
    key = layer.prefix + channel
    now = time.time()
    capacity = layer.get_capacity(channel)
    # Receivers pop the lowest score first: a standing slot's wake-up (it has "at")
    # goes ahead of one-shot wake-ups that may be waiting, stale or not.
    ahead = now - min(SLOT_PRIORITY, layer.expiry / 2)
    pipe.zremrangebyscore(key, min=0, max=int(now) - int(layer.expiry))
    pipe.zadd(key, {layer.serialize(m): ahead if "at" in m else now
                    for m in messages[-capacity:]})
    pipe.zremrangebyrank(key, 0, -capacity - 1)
    pipe.expire(key, int(layer.expiry))


def _zadd_many(layer, channel: str, messages: list[dict], *, inline: bool = False) -> None:
    """Add many messages to a channels-redis channel in one pipelined round trip, with a
    synchronous client (:func:`_sync_client`): the caller's short-timeout one
    (``inline``), or else the one with the long timeouts a worker's pop has."""
    with _shard(layer, channel, blocking=not inline).pipeline(transaction=False) as pipe:
        _queue_zadd(pipe, layer, channel, messages)
        pipe.execute()


_sync_clients_lock = threading.Lock()


def _sync_client(layer, index: int, *, blocking: bool = False):
    """A synchronous redis-py client for host ``index`` of a channels-redis ``layer``.

    Built from the same host settings as channels-redis's own pools (an
    ``address`` URL, Sentinel, or connection keywords), with one try per
    command (a caller's wake-up goes to the sender thread on a failure, the
    thread logs its own, a worker retries its pop after a pause). For a
    caller's wake-up, its connect and read timeouts are
    :data:`INLINE_TIMEOUT` (the host's own, if shorter); for a worker's pop
    and the sender thread's batches (``blocking``) they are the longest
    block, :data:`MAX_BLOCK`, plus :data:`BLOCK_MARGIN` (the host's own, if
    longer), so that an idle worker's pop is never cut short by its own
    socket. One of each per layer and host, kept on the layer; redis-py's pool
    is thread-safe and opens new connections after a fork.
    """
    clients = layer.__dict__.get("_sisy_sync_clients")
    client = clients.get((index, blocking)) if clients else None
    if client is not None:
        return client
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel, SentinelConnectionPool

    host = dict(layer.hosts[index])
    if "address" in host:
        pool = redis.ConnectionPool.from_url(host.pop("address"), **host)
    elif "master_name" in host:
        master, sentinels = host.pop("master_name"), host.pop("sentinels")
        pool = SentinelConnectionPool(
            master, Sentinel(sentinels, sentinel_kwargs=host.pop("sentinel_kwargs", None)), **host)
    else:
        pool = redis.ConnectionPool(**host)
    for option in ("socket_timeout", "socket_connect_timeout"):
        given = pool.connection_kwargs.get(option)
        pool.connection_kwargs[option] = (max(given or 0, MAX_BLOCK + BLOCK_MARGIN) if blocking
                                          else min(given or INLINE_TIMEOUT, INLINE_TIMEOUT))
    pool.connection_kwargs["retry"] = Retry(NoBackoff(), 0)
    with _sync_clients_lock:
        clients = layer.__dict__.setdefault("_sisy_sync_clients", {})
        return clients.setdefault((index, blocking), redis.Redis(connection_pool=pool))


def close_sync_clients(layer) -> None:
    """Close the connections of the clients :func:`_sync_client` made for ``layer``."""
    with _sync_clients_lock:
        clients = layer.__dict__.pop("_sisy_sync_clients", {})
    for client in clients.values():
        client.connection_pool.disconnect()


sender = Sender()
atexit.register(sender.flush)


def wake_many(runs: Iterable[Run], *, layer_alias: str = "default") -> None:
    """Send the wake-up message of each run (now, not on commit)."""
    runs = list(runs)
    if not runs:
        return
    layer = get_channel_layer(layer_alias)
    now = timezone.now()
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        local_wakeup.notify(at=min(run.not_before or now for run in runs))
        return
    sender.send(layer, ((run.channel, run_message(run, now)) for run in runs))


def wake(run: Run) -> None:
    wake_many([run])


def _not_before(run_after: datetime | timedelta | None, now: datetime) -> datetime:
    if run_after is None:
        return now
    if isinstance(run_after, timedelta):
        return now + run_after
    return run_after


#: Columns a new one-shot run gets from ``.delay()``; every other column starts
#: as a constant (below) or NULL.
_INSERT_FIELDS = ("task_name", "args", "kwargs", "channel", "scheduled_for", "not_before",
                  "enqueued_at", "sent_at", "exclusive")
_INSERT_CONSTANTS = {"status": Run.Status.QUEUED, "attempt": 1, "error": "", "error_type": "",
                     "worker": "", "progress_done": 0, "progress_note": ""}


@functools.cache
def _insert_plan():
    """The fields passed per call, and an ``INSERT ... RETURNING id`` of just those columns."""
    fields = [Run._meta.get_field(name) for name in _INSERT_FIELDS]
    constants = [(Run._meta.get_field(name).column, value)
                 for name, value in _INSERT_CONSTANTS.items()]
    columns = ", ".join([f.column for f in fields] + [column for column, _ in constants])
    literals = ", ".join(f"'{value}'" if isinstance(value, str) else str(int(value))
                         for _, value in constants)
    marks = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {Run._meta.db_table} ({columns}) VALUES ({marks}, {literals}) RETURNING id"
    return fields, sql


@functools.cache
def _fresh_run_state() -> dict:
    """The attributes of a new ``Run()`` that ``.delay()`` does not set (all immutable)."""
    state = dict(Run().__dict__)
    del state["_state"]
    for name in _INSERT_FIELDS:
        del state[Run._meta.get_field(name).attname]
    return state


def _new_run(**values) -> Run:
    """``Run(**values)`` for the :data:`_INSERT_FIELDS`, without the ORM's per-field
    ``__init__`` (a tenth of ``.delay()``; no ``pre_init``/``post_init`` signals)."""
    run = Run.__new__(Run)
    run.__dict__.update(_fresh_run_state())
    run.__dict__.update(values)
    run._state = ModelState()
    return run


def _insert(run: Run, *, durable: bool, using: str = DEFAULT_DB_ALIAS) -> Run:
    """Write a new one-shot ``run`` with one ``INSERT ... RETURNING id``.

    ``.delay()`` is a hot path: this skips the ORM's per-call query
    compilation, and passes only the nine values a new run does not share
    with every other new run (the rest are constants in the statement).
    Model save signals are not sent for Run rows.
    """
    conn = connections[using]
    if not conn.features.can_return_columns_from_insert:
        run.save(using=using, force_insert=True)
        return run
    fields, sql = _insert_plan()
    if conn.vendor == "postgresql":  # what the fields' get_db_prep_save() would give, cheaper
        values = [run.task_name, json.dumps(run.args), json.dumps(run.kwargs), run.channel,
                  run.scheduled_for, run.not_before, run.enqueued_at, run.sent_at, run.exclusive]
    else:
        values = [f.get_db_prep_save(getattr(run, f.attname), conn) for f in fields]
    (run.pk,), _ = execute_write(conn, sql, values, durable=durable, preparable=True)
    run._state.adding, run._state.db = False, using
    return run


def enqueue(definition, args: tuple, kwargs: dict) -> Run:
    """Validate, write a queued ``Run`` and wake a worker once the transaction commits.

    Bad arguments raise :class:`~sisy.exceptions.InvalidArguments` here, in the
    caller, and nothing is written. With ``SISY["EAGER"] = True`` the run is
    executed inline before this returns.
    """
    json_args, json_kwargs = definition.arguments.dump(args, kwargs)
    conf = get_settings()
    overrides = conf.overrides_for(definition.name) if conf.TASKS else {}
    now = timezone.now()
    not_before = _not_before(definition.run_after, now)
    run = _insert(_new_run(
        task_name=definition.name,
        args=json_args,
        kwargs=json_kwargs,
        channel=overrides.get("channel") or definition.channel or conf.RUN_TASK_CHANNEL,
        scheduled_for=not_before,
        not_before=not_before,
        enqueued_at=now,
        sent_at=now if not_before <= now else None,
        exclusive=not overrides.get("allow_overlap", definition.allow_overlap),
    ), durable=conf.DURABLE_ENQUEUE)
    if conf.EAGER:
        from sisy.execution import execute_eagerly

        execute_eagerly(run)
        return run
    if not_before <= now:
        transaction.on_commit(lambda: wake(run))
    return run
