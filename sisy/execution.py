"""Claim a run, call its function, and record the outcome.

A worker must win the queued→running transition (a conditional ``UPDATE``)
before it calls anything, so a message delivered twice runs once. A run whose
task does not allow overlap carries ``exclusive=True``; the partial unique
index ``sisy_run_no_overlap`` lets only one such run of a task be running,
and a run that loses that race is recorded as ``skipped``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import random
import time
import traceback
from datetime import datetime, timedelta

from asgiref.sync import async_to_sync
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.utils import timezone
from pydantic_core import PydanticSerializationError, to_jsonable_python

from sisy import signals
from sisy.conf import get_settings
from sisy.connections import (
    ASYNC_COMMIT,
    async_commit_possible,
    execute_write,
    fast_cursor,
    tidy_connections,
)
from sisy.context import TaskContext
from sisy.dispatch import run_message
from sisy.exceptions import UnknownTask
from sisy.legacy import LegacyDefinition
from sisy.models import Run, Task
from sisy.registry import registry

__all__ = [
    "claim", "claim_batch", "claim_exclusive", "claim_next", "claim_wakeup", "release",
    "prepare",
    "execute", "execute_eagerly", "schedule_retry", "finish",
]

logger = logging.getLogger(__name__)

Status = Run.Status


def _skip_overlap(run_id: int, now: datetime) -> None:
    """Record a standing task's slot that came due during a run of the task as skipped.

    A run that ``.delay()`` queued (no ``Task`` row) stays queued instead: it
    waits for its turn, and a worker's look at the table claims it once the
    run before it has ended (:func:`claim_exclusive`).
    """
    Run.objects.filter(pk=run_id, status=Status.QUEUED, task__isnull=False).update(
        status=Status.SKIPPED, finished_at=now,
        error="Skipped: another run of this task was still running (allow_overlap=False).",
    )


@functools.cache
def _columns(model=Run):
    fields = model._meta.concrete_fields
    return [f.attname for f in fields], ", ".join(f.column for f in fields)


def _converters(conn, model=Run) -> list:
    """``(index, column, functions)`` that turn a raw row of ``model`` into field values,
    as the ORM does."""
    cache = conn.__dict__.setdefault("_sisy_converters", {})
    cached = cache.get(model)
    if cached is None:
        cached = []
        for index, field in enumerate(model._meta.concrete_fields):
            col = field.get_col(model._meta.db_table)
            funcs = conn.ops.get_db_converters(col) + field.get_db_converters(conn)
            if funcs:
                cached.append((index, col, funcs))
        cache[model] = cached
    return cached


def _from_rows(cursor_rows, using: str, model=Run) -> list:
    """Build ``model`` instances (``Run`` by default) from raw rows of all its columns,
    through the same converters the ORM uses."""
    names, _ = _columns(model)
    conn = connections[using]
    converters = _converters(conn, model)
    instances = []
    for row in cursor_rows:
        row = list(row)
        for index, col, funcs in converters:
            for func in funcs:
                row[index] = func(row[index], col, conn)
        instances.append(model.from_db(using, names, row))
    return instances


def _claim_sql(where: str, params: list, worker: str, now: datetime,
               using: str = DEFAULT_DB_ALIAS, *, start_tasks: bool = False) -> list[Run]:
    """``UPDATE ... SET status='running' WHERE <where> RETURNING *`` in one round trip.

    ``start_tasks`` (runs of standing tasks, expected): on PostgreSQL the same
    statement sets ``running`` on their tasks (:func:`_start_task`), and
    notes each task's name on its run for :func:`prepare`.
    """
    _, returning = _columns()
    table = Run._meta.db_table
    sql = (f"UPDATE {table} SET status = %s, started_at = %s, worker = %s "
           f"WHERE {where} RETURNING {returning}")
    conn = connections[using]
    start_tasks = start_tasks and conn.vendor == "postgresql"
    if start_tasks:
        sql = (f"WITH claimed AS ({sql}), started AS (UPDATE {Task._meta.db_table} "
               f"SET running = true WHERE id IN (SELECT task_id FROM claimed) "
               f"RETURNING id, name) SELECT claimed.*, started.name FROM claimed "
               f"LEFT JOIN started ON started.id = claimed.task_id")
    with fast_cursor(conn, timestamps=True) as cursor:
        cursor.execute(sql, [Status.RUNNING, now, worker, *params])
        rows = cursor.fetchall()
    if not start_tasks:
        return _from_rows(rows, using)
    runs = _from_rows([row[:-1] for row in rows], using)
    for run, row in zip(runs, rows, strict=True):
        if run.task_id is not None and row[-1] is not None:
            run._sisy_task_name = row[-1]  # its task is marked running: see prepare()
    return runs


def _savepoint():
    """Inside a caller's transaction, a savepoint keeps a lost overlap race recoverable;
    in autocommit (a worker) a single claim ``UPDATE`` is atomic by itself."""
    return transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()


def _skip_locked() -> str:
    """Lock the rows a claim chose, passing over those another worker is claiming."""
    return " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked \
        else ""


def _waiting_sql(channels: list[str], now: datetime, limit: int, *,
                 besides: list[int] = ()) -> tuple[str, list]:
    """The ids of up to ``limit`` due queued runs on ``channels`` that allow overlap
    (other than ``besides``), oldest first, locked (skipping those another worker is
    claiming); and its params."""
    marks = ", ".join(["%s"] * len(channels))
    other = f" AND id NOT IN ({', '.join(['%s'] * len(besides))})" if besides else ""
    sql = (f"SELECT id FROM {Run._meta.db_table} WHERE status = %s AND not_before <= %s "
           f"AND channel IN ({marks}) AND NOT exclusive{other} ORDER BY not_before, id "
           f"LIMIT %s{_skip_locked()}")
    return sql, [Status.QUEUED, now, *channels, *besides, limit]


def claim(run_id: int, worker: str, *, name: str | None = None,
          now: datetime | None = None, standing: bool = False) -> Run | None:
    """Move run ``run_id`` from queued to running for ``worker``; return it or ``None``.

    ``None`` means somebody else claimed it, it is not queued, not due yet,
    its task name is not ``name`` (when given), or another run of its task
    is running and its task forbids overlap (a standing task's slot is then
    recorded as skipped; a one-shot run stays queued for its turn).
    ``standing``: the run is expected to be a standing task's, whose
    ``running`` flag the claim then sets too.
    """
    now = now or timezone.now()
    # The primary key is the only index this may use (see _named_sql): "|| ''" keeps
    # the partial indexes on status and the index on task_name out of the choice.
    where = "id = %s AND status || '' = %s AND not_before <= %s"
    params = [run_id, Status.QUEUED, now]
    if name is not None:
        where += " AND task_name || '' = %s"
        params.append(name)
    try:
        with _savepoint():
            runs = _claim_sql(where, params, worker, now, start_tasks=standing)
    except IntegrityError:
        _skip_overlap(run_id, now)
        return None
    return runs[0] if runs else None


def claim_batch(channels: list[str], worker: str, *, now: datetime | None = None,
                limit: int = 1, standing: bool = False) -> list[Run]:
    """Claim up to ``limit`` due queued runs on ``channels``, oldest first, in one statement.

    Runs of tasks that forbid overlap are left to :func:`claim_exclusive`,
    which keeps two runs of one such task apart. ``standing``: runs of
    standing tasks are expected (the last batch held some); on PostgreSQL
    the statement then sets their tasks' ``running`` flag too, instead of a
    statement per run in :func:`prepare` (it would cost a batch of one-shot
    runs 5-8 % of PostgreSQL's time).
    """
    now = now or timezone.now()
    waiting, params = _waiting_sql(channels, now, limit)
    runs = _claim_sql(f"id IN ({waiting})", params, worker, now, start_tasks=standing)
    # RETURNING keeps no order: run them oldest first, as they were chosen.
    return sorted(runs, key=lambda run: (run.not_before, run.pk))


def claim_wakeup(run_id: int, name: str, channels: list[str], worker: str, *,
                 now: datetime | None = None, more: int = 0) -> list[Run] | None:
    """Claim the run a wake-up names and up to ``more`` other due runs, in one statement.

    The named run is claimed as :func:`claim` would; the others as
    :func:`claim_batch` would (oldest first, none that forbids overlap). When
    the named run is gone -- another worker's batch took it -- the statement
    still takes work that is waiting, instead of leaving one wasted statement
    per wake-up. The named run comes first in the list. ``None`` means the
    named run may not start now (another run of its task is running); claim
    it with :func:`claim`, which records that.
    """
    return claim_wakeups([(run_id, name)], channels, worker, now=now, more=more)


def _named_sql(named: list[tuple[int, str]], now: datetime) -> tuple[str, list]:
    """The ids of the due queued runs ``named`` as ``(id, task name)`` pairs, locked
    (skipping those another worker is claiming); and its params.

    On PostgreSQL the pairs travel as two arrays, and the primary key is the
    only index the statement can use, whatever the table's statistics say.
    Written as ``(id = ... AND task_name = ...) OR ...``, with statistics
    taken while the table was nearly empty (a fresh table; autovacuum has not
    analysed it since a burst), PostgreSQL scanned the whole
    ``sisy_run_queued`` index once per pair: 5.3 ms instead of 0.6 for 8
    wake-ups with 20,000 runs queued.
    """
    table = Run._meta.db_table
    if connection.vendor == "postgresql":
        ids = [run_id for run_id, _ in named]
        # "status || ''" keeps the partial indexes on status out of the planner's choice.
        sql = (f"SELECT id FROM {table} WHERE id = ANY(%s::bigint[]) "
               f"AND task_name = (%s::text[])[array_position(%s::bigint[], id)] "
               f"AND status || '' = %s AND not_before <= %s{_skip_locked()}")
        return sql, [ids, [name for _, name in named], ids, Status.QUEUED, now]
    pairs = " OR ".join(["(id = %s AND task_name = %s)"] * len(named))
    sql = (f"SELECT id FROM {table} WHERE status = %s AND not_before <= %s "
           f"AND ({pairs}){_skip_locked()}")
    return sql, [Status.QUEUED, now, *(value for pair in named for value in pair)]


def claim_wakeups(named: list[tuple[int, str]], channels: list[str], worker: str, *,
                  now: datetime | None = None, more: int = 0) -> list[Run] | None:
    """:func:`claim_wakeup` for several wake-ups: the runs ``named`` as ``(id, task
    name)`` pairs, in that order, then up to ``more`` other due runs, in one statement.

    ``None`` means one of the named runs may not start now (another run of its
    task is running) and nothing was claimed: claim them one by one with
    :func:`claim`, which records that.
    """
    now = now or timezone.now()
    named_sql, params = _named_sql(named, now)
    ids = [run_id for run_id, _ in named]
    sources = [f"SELECT id FROM ({named_sql}) AS named"]
    if more > 0:
        waiting, waiting_params = _waiting_sql(channels, now, more, besides=ids)
        sources.append(f"SELECT id FROM ({waiting}) AS waiting")
        params += waiting_params
    try:
        with _savepoint():
            runs = _claim_sql(f"id IN ({' UNION ALL '.join(sources)})", params, worker, now)
    except IntegrityError:
        return None
    order = {run_id: index for index, run_id in enumerate(ids)}
    return sorted(runs, key=lambda run: (order.get(run.pk, len(ids)), run.not_before, run.pk))


def claim_next(channels: list[str], worker: str, *, now: datetime | None = None) -> Run | None:
    """Claim the oldest due queued run on ``channels`` (the polling path)."""
    now = now or timezone.now()
    runs = claim_batch(channels, worker, now=now, limit=1) or claim_exclusive(
        channels, worker, now=now)
    return runs[0] if runs else None


#: What keeps two runs apart when their task forbids overlap: the task row, or the
#: task's name for one-shot runs (the indexes "sisy_run_no_overlap" and
#: "sisy_run_no_overlap_one_shot").
_OVERLAP_KEY = "task_id, CASE WHEN task_id IS NULL THEN task_name END"


def _none_running(table: str, *, standing: bool = True) -> str:
    """SQL: no run of the task of the ``table`` row is running -- for a one-shot run
    looked up by task name in "sisy_run_no_overlap_one_shot", and (``standing``) for a
    standing task's run by task row in "sisy_run_no_overlap". Its parameters:
    ``Status.RUNNING``, once per test."""
    one_shot = (f"NOT EXISTS (SELECT 1 FROM {table} AS busy WHERE {table}.task_id IS NULL "
                f"AND busy.task_id IS NULL AND busy.task_name = {table}.task_name "
                f"AND busy.status = %s AND busy.exclusive)")
    if not standing:
        return one_shot
    return (f"NOT EXISTS (SELECT 1 FROM {table} AS busy WHERE busy.task_id = "
            f"{table}.task_id AND busy.status = %s AND busy.exclusive) AND {one_shot}")


#: How many of the oldest queued runs that forbid overlap :func:`claim_exclusive`
#: reads per run it may claim: those that other workers are claiming are among them.
EXCLUSIVE_HEAD = 2


def claim_exclusive(channels: list[str], worker: str, *, now: datetime | None = None,
                    limit: int = 1) -> list[Run]:
    """Claim up to ``limit`` due runs of tasks that forbid overlap, each the oldest
    queued run of its task, oldest first (see ``sisy_run_no_overlap``).

    One statement chooses them, claims them and sets their tasks' ``running``
    flag. It reads the oldest queued such runs, those that other workers are
    claiming included, and takes the first of each task among them, passing
    over those another worker is claiming: so no two claims in flight ever
    hold runs of one task (they would wait for each other's commit, and
    claims of several runs each could deadlock), and a task's runs start in
    order. A task that has a run running is passed over: its runs wait for
    that one to end. When one of them may yet not start (a run of its task
    started meanwhile), the statement fails as a whole, and the candidates
    are claimed one by one with :func:`claim`, which records the skip of a
    standing task's slot; a one-shot run whose task has a run running is
    left queued and passed over until that run ends.
    """
    now = now or timezone.now()
    # A worker asks this before each batch it drains: one cheap statement on the
    # "sisy_run_queued_exclusive" index, which holds only queued runs of such tasks.
    marks = ", ".join(["%s"] * len(channels))
    table = Run._meta.db_table
    where = f"status = %s AND exclusive AND not_before <= %s AND channel IN ({marks})"
    params = [Status.QUEUED, now, *channels]
    head = (f"SELECT id, task_id, task_name, not_before FROM {table} WHERE {where} "
            f"ORDER BY not_before, id LIMIT %s")
    firsts = (f"SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY {_OVERLAP_KEY} "
              f"ORDER BY not_before, id) AS nth FROM ({head}) AS head) AS ranked WHERE nth = 1")
    # "status || ''": the firsts are looked up by primary key, not in a partial index.
    # A first whose task has a run running waits for it to end.
    chosen = (f"id IN (SELECT id FROM {table} WHERE id IN ({firsts}) AND status || '' = %s "
              f"AND {_none_running(table)} ORDER BY not_before, id LIMIT %s{_skip_locked()})")
    try:
        with _savepoint():
            runs = _claim_sql(chosen, [*params, EXCLUSIVE_HEAD * limit, Status.QUEUED,
                                       Status.RUNNING, Status.RUNNING, limit],
                              worker, now, start_tasks=True)
    except IntegrityError:
        return _claim_exclusive_one_by_one(where, params, worker, now, limit)
    return sorted(runs, key=lambda run: (run.not_before, run.pk))


def _claim_exclusive_one_by_one(where: str, params: list, worker: str, now: datetime,
                                limit: int) -> list[Run]:
    """:func:`claim_exclusive` after a conflict: candidates claimed one at a time."""
    table = Run._meta.db_table
    # A queued one-shot run whose task has one running waits (see _skip_overlap) and
    # must not hide the runs behind it: it is not a candidate. A standing task's slot
    # is: claim() records its skip.
    choose = (f"SELECT id, task_id, task_name FROM {table} WHERE {where} AND "
              f"{_none_running(table, standing=False)} ORDER BY not_before, id LIMIT %s")
    with fast_cursor(connection) as cursor:
        cursor.execute(choose, [*params, Status.RUNNING, limit + 4])
        candidates = cursor.fetchall()
    runs, keys = [], set()
    for run_id, task_id, task_name in candidates:
        key = (task_id, task_name if task_id is None else None)
        if key in keys:
            continue  # another run of its task was just claimed: it waits for that one
        run = claim(run_id, worker, now=now, standing=True)
        if run is not None:
            runs.append(run)
            keys.add(key)
            if len(runs) == limit:
                break
    return runs


def release(runs: list[Run], worker: str) -> int:
    """Put claimed runs that ``worker`` has not started back in the queue (a clean stop)."""
    released = Run.objects.filter(
        pk__in=[run.pk for run in runs], status=Status.RUNNING, worker=worker
    ).update(status=Status.QUEUED, started_at=None, worker="")
    tasks = {run.task_id for run in runs if run.task_id is not None}
    if tasks:
        Task.objects.filter(pk__in=tasks).update(running=False)
    if released:
        logger.info("Worker %s put %d claimed runs back in the queue.", worker, released)
    return released


def _error_text(exc: BaseException) -> tuple[str, str]:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    text = f"{name}: {exc}\n\n" + "".join(traceback.format_exception(exc))
    return name, text


def _definition_for(run: Run, row_name: str | None = None):
    """The registered definition of ``run``, or the seed-style row it belongs to
    (``row_name``: the name of the run's ``Task`` row, if known without loading it).

    A row made by ``task_with_callable`` has no registered name; its callable
    is found from the row's ``func_info``, which trusted code wrote. The
    message that woke the worker only ever names the run.
    """
    if row_name is None and run.task_id is not None:
        row_name = run.task.name
    if run.task_id is not None and not row_name and run.task.func_info:
        return LegacyDefinition.for_task(run.task, run.task_name)
    if run.task_name in registry:
        return registry.get(run.task_name)
    raise UnknownTask(
        f"No task is registered as {run.task_name!r} in this worker; nothing was run. "
        "Deploy the code that defines it to the workers, or cancel the run."
    )


def _call(definition, run: Run, context: TaskContext | None):
    if isinstance(definition, LegacyDefinition):
        return definition.call(run, run_message(run))
    args, kwargs = definition.arguments.load(run.args, run.kwargs)
    if context is not None:
        args = (context, *args)
    if definition.is_async:
        return async_to_sync(definition.func)(*args, **kwargs)
    return definition.func(*args, **kwargs)


def schedule_retry(run: Run, now: datetime, retries: int, backoff: float) -> Run | None:
    """Queue the next attempt of a failed run if ``retries`` allow; return it.

    The delay is ``backoff * 2 ** (attempt - 1)`` seconds with ±25 % jitter.
    """
    if run.attempt > retries:
        return None
    delay = backoff * 2 ** (run.attempt - 1) * random.uniform(0.75, 1.25)
    not_before = now + timedelta(seconds=delay)
    return Run.objects.create(
        task=run.task, task_name=run.task_name, args=run.args, kwargs=run.kwargs,
        channel=run.channel, scheduled_for=run.scheduled_for, not_before=not_before,
        enqueued_at=now, attempt=run.attempt + 1, retry_of=run, exclusive=run.exclusive,
    )


def retry_policy(run: Run, definition=None, conf=None) -> tuple[int, float]:
    """``(retries, retry_backoff)`` for a run: its Task row's, else its definition's,
    with ``SISY["TASKS"]`` overrides on top. An unknown one-shot gets no retries."""
    conf = conf or get_settings()
    if run.task is not None:
        retries, backoff = run.task.retries, run.task.retry_backoff
    else:
        if definition is None and run.task_name in registry:
            definition = registry.get(run.task_name)
        retries, backoff = ((definition.retries, definition.retry_backoff)
                            if definition is not None else (0, 1.0))
    overrides = conf.overrides_for(run.task_name)
    return overrides.get("retries", retries), overrides.get("retry_backoff", backoff)


_OUTCOME_FIELDS = ("status", "result", "error", "error_type", "finished_at", "started_at")


def _outcome_values(run: Run) -> list:
    """The :data:`_OUTCOME_FIELDS` of ``run`` as get_db_prep_save() gives them on
    PostgreSQL, cheaper."""
    result = None if run.result is None else json.dumps(run.result)
    return [run.status, result, run.error, run.error_type, run.finished_at, run.started_at]


@functools.cache
def _outcome_sql(standing: bool = False) -> tuple[str, str]:
    """The outcome ``UPDATE``, and the same committing with ``synchronous_commit = off``.

    ``standing``: for a run of a standing task on PostgreSQL, the statement
    also clears the ``running`` flag of the task, as a second statement did
    (:func:`_clearing_running`).
    """
    fields = [Run._meta.get_field(name) for name in _OUTCOME_FIELDS]
    assignments = ", ".join(f"{f.column} = %s" for f in fields)
    table = Run._meta.db_table
    where = "WHERE id = %s AND status = %s AND worker = %s"
    statements = (f"UPDATE {table} SET {assignments} {where}",
                  f"UPDATE {table} SET {assignments} "
                  f"FROM {ASYNC_COMMIT} {where}")
    if not standing:
        return statements
    return tuple(_clearing_running(f"{update} RETURNING id") for update in statements)


def _clearing_running(update: str) -> str:
    """``update`` (an outcome ``UPDATE ... RETURNING id``), which also clears the
    ``running`` flag of the tasks whose ids are its last parameter (an array), in the
    same statement; it returns the ids of the runs it stored, as ``update`` does."""
    return (f"WITH stored AS ({update}), idle AS (UPDATE {Task._meta.db_table} "
            f"SET running = false WHERE id = ANY(%s::bigint[])) SELECT id FROM stored")


def _store_outcome(run: Run, *, durable: bool, using: str = DEFAULT_DB_ALIAS) -> int:
    """``UPDATE`` the run's outcome if it is still ours; return the rows changed.

    Outside a transaction on PostgreSQL, ``durable=False`` commits it without
    waiting for the disk (``synchronous_commit = off``): half the cost of a
    run in the profile. If the database server crashes before the write
    reaches the disk, the run is found ``running`` by a worker that no longer
    heart-beats it and is settled as lost (retried when the task allows) —
    visible, never silent.
    """
    conn = connections[using]
    if conn.vendor == "postgresql":
        values = _outcome_values(run)
    else:
        values = [Run._meta.get_field(name).get_db_prep_save(getattr(run, name), conn)
                  for name in _OUTCOME_FIELDS]
    standing = run.task_id is not None and conn.vendor == "postgresql"
    sql, async_sql = _outcome_sql(standing)
    params = [*values, run.pk, Status.RUNNING, run.worker, *([[run.task_id]] if standing else [])]
    _, count = execute_write(conn, sql, params, durable=durable, async_sql=async_sql)
    return count


#: How long a worker keeps trying to store an outcome while the database is away.
OUTCOME_RETRY_SECONDS = 60.0


def _with_database_retries(func, *, what: str, seconds: float = OUTCOME_RETRY_SECONDS):
    """Call ``func``; while the database connection fails, reconnect and try again.

    The body of a run has already executed when its outcome is written, so a
    lost connection (a database restart, a killed backend) must not lose it.
    """
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return func()
        except (OperationalError, InterfaceError) as exc:
            if connection.in_atomic_block or time.monotonic() >= deadline:
                raise
            logger.warning("Could not store %s (%s); retrying in %.1f s.", what, exc, delay)
            tidy_connections()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def store_outcome(run: Run) -> bool:
    """Write the outcome already set on ``run``; False if it was no longer ours (lost worker)."""
    done = _with_database_retries(
        lambda: _store_outcome(run, durable=get_settings().DURABLE_RESULTS),
        what=f"the outcome of run {run.pk}")
    if not done:
        logger.warning("Run %s was settled by someone else while %s ran it.", run.pk, run.worker)
    return bool(done)


#: The most outcomes :func:`store_outcomes` writes in one statement.
OUTCOMES_PER_STATEMENT = 100


def _outcomes_sql(count: int, *, durable: bool, standing: bool = False) -> str:
    """One ``UPDATE ... FROM (VALUES ...)`` storing ``count`` outcomes (PostgreSQL).

    ``standing``: the statement also clears the ``running`` flag of the tasks
    whose ids are its last parameter (:func:`_clearing_running`).
    """
    row = "(%s::bigint, %s::text, %s::jsonb, %s::text, %s::text, %s::timestamptz, " \
          "%s::timestamptz, %s::text)"
    names = ("id", *_OUTCOME_FIELDS, "worker")
    sources = f"(VALUES {', '.join([row] * count)}) AS v({', '.join(names)})"
    if not durable:
        sources += f", {ASYNC_COMMIT}"
    assignments = ", ".join(f"{Run._meta.get_field(name).column} = v.{name}"
                            for name in _OUTCOME_FIELDS)
    update = (f"UPDATE {Run._meta.db_table} AS r SET {assignments} FROM {sources} "
              f"WHERE r.id = v.id AND r.status = %s AND r.worker = v.worker RETURNING r.id")
    return _clearing_running(update) if standing else update


def store_outcomes(runs: list[Run]) -> set[int]:
    """Write the outcomes already set on ``runs`` (PostgreSQL), in as few statements as
    :data:`OUTCOMES_PER_STATEMENT` allows; return the ids that were still ours."""
    if len(runs) == 1:
        return {runs[0].pk} if store_outcome(runs[0]) else set()
    conn = connections[DEFAULT_DB_ALIAS]
    durable = get_settings().DURABLE_RESULTS or not async_commit_possible(conn)
    written: set[int] = set()
    for start in range(0, len(runs), OUTCOMES_PER_STATEMENT):
        chunk = runs[start:start + OUTCOMES_PER_STATEMENT]
        params = []
        for run in chunk:
            params += [run.pk, *_outcome_values(run), run.worker]
        params.append(Status.RUNNING)
        tasks = [run.task_id for run in chunk if run.task_id is not None]
        if tasks:
            params.append(tasks)
        sql = _outcomes_sql(len(chunk), durable=durable, standing=bool(tasks))

        def write(sql=sql, params=params):
            with fast_cursor(conn) as cursor:
                cursor.execute(sql, params)
                return {row[0] for row in cursor.fetchall()}

        written |= _with_database_retries(write, what=f"the outcomes of {len(chunk)} runs")
    for run in runs:
        if run.pk not in written:
            logger.warning("Run %s was settled by someone else while %s ran it.",
                           run.pk, run.worker)
    return written


def finish(run: Run, status: str, *, result=None, error: str = "", error_type: str = "",
           now: datetime | None = None) -> bool:
    """Store the outcome of a running run; False if it was no longer ours (lost worker)."""
    now = now or timezone.now()
    run.status, run.result, run.error, run.error_type, run.finished_at = (
        status, result, error, error_type, now)
    done = store_outcome(run)  # on PostgreSQL, it clears Task.running too
    if run.task_id is not None and connections[DEFAULT_DB_ALIAS].vendor != "postgresql":
        Task.objects.filter(pk=run.task_id).update(running=False)
    return done


def _settle(run: Run, definition, context: TaskContext | None, status: str,
            outcomes=None, **outcome) -> None:
    """Store the outcome, queue a retry if the policy allows, and send ``run_finished``.

    A plain success whose ``run_finished`` has no receivers goes to
    ``outcomes`` (an :class:`~sisy.outcomes.OutcomeWriter`), if given, so that
    the worker need not wait for the write; but not that of a task that
    forbids overlap: its next run must not find this one still running. That
    one is written by the worker before it claims more, with the rest of its
    batch when it was claimed in one (:meth:`~sisy.outcomes.OutcomeWriter.hold`).
    """
    now = timezone.now()
    if context is not None:
        context.flush_progress()
        context.save_userdata()
    if (outcomes is not None and status == Status.SUCCEEDED
            and not signals.run_finished.has_listeners(definition)):
        run.status, run.result, run.finished_at = status, outcome.get("result"), now
        if not run.exclusive:
            outcomes.put(run)
            return
        if outcomes.hold(run):
            return
    finish(run, status, now=now, **outcome)
    if status == Status.FAILED and definition is not None:
        retries, backoff = retry_policy(run, definition)
        retry = schedule_retry(run, now, retries, backoff)
        if retry is not None:
            logger.info("Run %s will be retried as run %s at %s",
                        run.pk, retry.pk, retry.not_before)
    signals.run_finished.send(sender=definition, run=run, status=status)


def _start_task(run: Run) -> str | None:
    """Set ``running`` on the standing task of ``run``; on PostgreSQL, return the
    name of the task's row, and load the row onto ``run.task`` in the same
    statement when the run will need it (a context, or a seed-style row).

    ``Task.running`` is bookkeeping for people (the admin, ``sisy_list``); the
    runs hold the truth. On PostgreSQL it is committed as outcomes are
    (``DURABLE_RESULTS``), and cleared by the statement that stores the
    run's outcome (:func:`_outcome_sql`). Read apart and written in two more
    durable statements, it made a worker drain a backlog of runs of standing
    tasks at a fifteenth of the rate of one-shot runs.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql":
        Task.objects.filter(pk=run.task_id).update(running=True)
        return None
    registered = registry.get(run.task_name) if run.task_name in registry else None
    load = registered is None or registered.takes_context
    returning = f"RETURNING {_columns(Task)[1] if load else 'name'}"
    update, where = f"UPDATE {Task._meta.db_table} SET running = true", "WHERE id = %s"
    row, _ = execute_write(
        conn, f"{update} {where} {returning}", [run.task_id],
        durable=get_settings().DURABLE_RESULTS,
        async_sql=f"{update} FROM {ASYNC_COMMIT} {where} {returning}")
    if row is None:
        raise Task.DoesNotExist("Task matching query does not exist.")
    if not load:
        return row[0]
    run.task = _from_rows([row], DEFAULT_DB_ALIAS, Task)[0]
    return run.task.name


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare` found for a run: its definition and context, or the error."""

    definition: object | None = None
    context: TaskContext | None = None
    error: BaseException | None = None


def prepare(run: Run) -> Prepared:
    """Do the database work that comes before calling a claimed run's function.

    A worker that claimed a run ahead of its slot prepares it while it waits,
    so that at the slot only the call is left.
    """
    try:
        row_name = run.__dict__.pop("_sisy_task_name", None)  # marked by its claim
        if run.task_id is not None and row_name is None:
            row_name = _start_task(run)
        definition = _definition_for(run, row_name)
        context = TaskContext(definition, run, run.task) if definition.takes_context else None
    except BaseException as exc:  # reported as the run's failure by execute()
        return Prepared(error=exc)
    return Prepared(definition, context)


def execute(run: Run, *, manage_connections: bool = True,
            prepared: Prepared | None = None, outcomes=None) -> Run:
    """Call the function of a claimed (running) run and record the outcome.

    Never raises for anything the task does: exceptions, ``sys.exit()``,
    ``KeyboardInterrupt`` and results that are not JSON become a ``failed``
    run with the error and traceback. Workers pass ``manage_connections=True``
    so stale database connections are closed around each run, as Django does
    around each request, and may pass an :class:`~sisy.outcomes.OutcomeWriter`
    as ``outcomes`` to have plain successes stored from its thread.
    """
    if manage_connections:
        tidy_connections()
    prepared = prepared or prepare(run)
    definition, context = prepared.definition, prepared.context
    # A run claimed in a batch waited for the ones before it; it starts now.
    run.started_at = timezone.now()
    try:
        if prepared.error is not None:
            raise prepared.error
        signals.run_started.send(sender=definition, run=run)
        value = _call(definition, run, context)
        try:
            result = to_jsonable_python(value)
        except PydanticSerializationError as exc:
            raise TypeError(
                f"Task '{run.task_name}' returned {type(value).__name__}, which cannot be "
                f"stored as JSON ({exc}). Return plain data (dict, list, str, numbers)."
            ) from None
    except BaseException as exc:  # a task must never take the worker down
        error_type, error = _error_text(exc)
        logger.warning("Run %s of %s failed: %s", run.pk, run.task_name, error_type)
        # Settled inside the except block, so that run_finished receivers see the
        # exception in sys.exc_info() (logger.exception, error reporters).
        _settle(run, definition, context, Status.FAILED, error=error, error_type=error_type)
    else:
        _settle(run, definition, context, Status.SUCCEEDED, outcomes, result=result)
    if manage_connections:
        tidy_connections()
    return run


def execute_eagerly(run: Run) -> Run:
    """``SISY["EAGER"]``: claim and execute a just-queued run in the calling process."""
    claimed = claim(run.pk, "eager", now=max(timezone.now(), run.not_before))
    if claimed is None:
        run.refresh_from_db()
        return run
    execute(claimed, manage_connections=False)
    run.refresh_from_db()
    return run
