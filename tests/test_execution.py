"""`.delay()`, the Run ledger, claiming and executing — in-process, both configurations.

Given a registered task, when it is delayed and a worker drains the queue,
expect exactly the recorded outcome.
"""

import datetime
import decimal
import logging
import re
import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import sisy
from sisy import signals
from sisy.exceptions import InvalidArguments, RunCancelled, RunFailed, RunTimeout
from sisy.execution import claim, claim_next, execute
from sisy.models import Run, Task
from sisy.worker import Worker
from tests.testapp import tasks
from tests.testapp.models import Mark

pytestmark = pytest.mark.django_db


def drain(channels=("sisy.run_task",)):
    return Worker(list(channels), name="test-worker", manage_connections=False).drain()


# -- .delay() -----------------------------------------------------------------------------

def test_delay_writes_a_queued_run_with_json_arguments():
    run = tasks.add.delay(2, b=3)
    run.refresh_from_db()
    assert (run.status, run.task_name, run.args, run.kwargs) == (
        "queued", "tests.testapp.tasks.add", [2], {"b": 3})
    assert run.channel == "sisy.run_task"
    assert run.scheduled_for == run.not_before == run.enqueued_at
    assert run.task is None and run.attempt == 1


def test_plain_call_still_runs_inline():
    assert tasks.add(2, 3) == 5
    assert Run.objects.count() == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("x",), {}, r"a: Input should be a valid integer.*\(got 'x'\)"),
        ((), {}, r"missing a required argument: 'a'"),
        ((1, 2, 3), {}, r"too many positional arguments"),
        ((1,), {"c": 2}, r"got an unexpected keyword argument 'c'"),
    ],
)
def test_delay_refuses_bad_arguments_and_writes_nothing(args, kwargs, message):
    with pytest.raises(InvalidArguments, match=message):
        tasks.add.delay(*args, **kwargs)
    assert Run.objects.count() == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (object(), r"\(object\) does not survive JSON"),
        ({1: "a"}, r"has the key 1; JSON objects only have string keys"),
        (float("nan"), r"= nan does not survive JSON"),
        ({1, 2}, r"\(set\) does not survive JSON"),
    ],
)
def test_delay_refuses_values_that_do_not_survive_json(value, message):
    with pytest.raises(InvalidArguments, match=message):
        tasks.echo.delay(value)
    assert Run.objects.count() == 0


def test_typed_arguments_arrive_as_their_types():
    when = timezone.now()
    run = tasks.typed.delay(when, uuid.uuid4(), decimal.Decimal("1.50"))
    assert drain() == 1
    assert run.wait(timeout=1) == ["datetime", "UUID", "Decimal", "1.50"]


class _Int(int):
    pass


class _Str(str):
    pass


def _plain_signatures():
    def scalars(a: int, b: str | None = None, c: float = 1.0, d: bool = False, e=None,
                *rest, k: int = 3):
        pass

    def keyword_needed(a: int, *, k: int):
        pass

    def typed_later(a: int | float, b: bool | int | None = None,
                    when: datetime.datetime | None = None):
        pass

    def nothing():
        pass

    return [scalars, keyword_needed, typed_later, nothing]


_ANY_VALUES = [0, -5, 2 ** 70, 1.5, float("nan"), float("inf"), True, None, "", "5", "é",
               [1], {"a": 1}, decimal.Decimal("1"), _Int(3), _Str("s")]


def _outcome(func, *args):
    try:
        return repr(func(*args))  # repr: the types count too (1 is not True), and nan == nan
    except InvalidArguments as exc:
        return f"InvalidArguments: {exc}"


@pytest.mark.django_db(databases=[])
@pytest.mark.parametrize("func", _plain_signatures(), ids=lambda func: func.__name__)
def test_plain_arguments_skip_pydantic_and_come_out_as_pydantic_gives_them(func):
    """Positional str/int/float/bool/None values for parameters of their very types (or
    none) are stored and passed on as they are; every call, good or garbage, gives the
    same arguments (or the same error) as the path through pydantic, both ways."""
    import itertools
    import json

    from sisy.arguments import ArgumentSpec

    spec = ArgumentSpec(func, task_name="t")
    plain = 0
    for count in range(4):
        for args in itertools.product(_ANY_VALUES, repeat=count):
            dumped = _outcome(spec.dump, args, {})
            assert dumped == _outcome(spec._dump_validated, args, {}), args
            plain += spec._plain(args, {})
            if not dumped.startswith("InvalidArguments"):
                stored = json.loads(json.dumps(spec.dump(args, {})[0]))
                assert _outcome(spec.load, stored, {}) == _outcome(
                    spec._load_validated, stored, {}), args
    # ints 0, -5, 2**70; the finite float 1.5; True; None; strs "", "5", "é"
    assert plain == {"scalars": 3 + 3 * 4 + 3 * 4 * 1, "keyword_needed": 0,
                     "typed_later": 4 + 4 * 5, "nothing": 1}[func.__name__]
    assert _outcome(spec.dump, (1,), {"a": 1}) == _outcome(spec._dump_validated, (1,), {"a": 1})


@pytest.mark.django_db(databases=[])
def test_which_arguments_are_plain():
    from sisy.arguments import ArgumentSpec

    spec = ArgumentSpec(tasks.add.func, task_name="add")
    assert [spec._plain(args, kwargs) for args, kwargs in [
        ((2,), {}), ([2, 3], {}), ((2, 3, 4), {}), ((), {}), ((2,), {"b": 3}), (("2",), {}),
        ((True,), {}), ((_Int(2),), {}), ((2.0,), {}), ("2", {}), ({"a": 2}, {}),
    ]] == [True, True, False, False, False, False, False, False, False, False, False]
    assert spec.dump((True, "3"), {}) == ([1, 3], {})  # through pydantic, converted
    assert spec.load([2, 3], {}) == ((2, 3), {})


def test_using_run_after_defers_the_run():
    before = timezone.now()
    run = tasks.add.using(run_after=timedelta(minutes=5)).delay(1)
    assert run.not_before >= before + timedelta(minutes=5)
    assert drain() == 0
    assert claim_next(["sisy.run_task"], "w", now=run.not_before) is not None


def test_using_refuses_bad_run_after():
    with pytest.raises(sisy.InvalidTaskDefinition,
                       match="must be a datetime or a timedelta, not int"):
        tasks.add.using(run_after=5)
    with pytest.raises(sisy.InvalidTaskDefinition, match="must be timezone-aware"):
        tasks.add.using(run_after=datetime.datetime(2030, 1, 1))


@pytest.mark.django_db(transaction=True)
def test_wake_up_waits_for_the_transaction_to_commit(monkeypatch):
    woken = []
    monkeypatch.setattr("sisy.dispatch.wake", woken.append)
    with transaction.atomic():
        run = tasks.add.delay(1)
        assert woken == []
    assert woken == [run]


@pytest.mark.django_db(transaction=True)
def test_rolled_back_delay_leaves_no_run_and_sends_nothing(monkeypatch):
    woken = []
    monkeypatch.setattr("sisy.dispatch.wake", woken.append)
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.delay(1)
        raise RuntimeError
    assert (Run.objects.count(), woken) == (0, [])


# -- claiming -------------------------------------------------------------------------------

def test_a_run_is_claimed_once():
    run = tasks.add.delay(1)
    first = claim(run.pk, "w1", name=run.task_name)
    assert first is not None and first.status == "running" and first.worker == "w1"
    assert claim(run.pk, "w2", name=run.task_name) is None


@pytest.mark.postgres
def test_a_claimed_run_reads_its_timestamps_as_the_orm_does_with_psycopgs_own_loader(settings):
    """A claim reads its rows' timestamptz values with psycopg's own loader (C, with
    psycopg-binary), not Django's pure-Python subclass, where that gives the same
    values and the very same tzinfo: with USE_TZ = True. Otherwise Django's."""
    import psycopg
    from psycopg.pq import Format

    from sisy.connections import _TIMESTAMPTZ, _timestamp_loader

    connection.ensure_connection()
    own = psycopg.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT)
    assert own.__module__ == "psycopg_binary._psycopg"  # the C loader, installed by the tests
    assert _timestamp_loader(connection, connection.connection) is own
    run = tasks.add.using(run_after=timezone.now() - timedelta(minutes=1)).delay(1)
    claimed = claim(run.pk, "w1", name=run.task_name)
    loaded = Run.objects.get(pk=run.pk)
    fields = [field.attname for field in Run._meta.concrete_fields
              if field.get_internal_type() == "DateTimeField"]
    assert fields == ["scheduled_for", "not_before", "enqueued_at", "sent_at", "started_at",
                      "finished_at"]
    assert [getattr(claimed, name) for name in fields] == [getattr(loaded, name) for name in fields]
    assert {type(getattr(claimed, name).tzinfo) for name in fields[:5]} == {datetime.timezone}
    assert all(getattr(claimed, name).tzinfo is getattr(loaded, name).tzinfo
               for name in fields[:5])
    assert claimed.finished_at is None

    settings.USE_TZ = False  # Django reads naive values: a new connection keeps its loader
    from django.db import connections

    naive = connections.create_connection("default")
    try:
        naive.ensure_connection()
        assert naive.timezone is None
        assert _timestamp_loader(naive, naive.connection) is None
    finally:
        naive.close()


def test_claim_refuses_a_message_whose_name_does_not_match():
    run = tasks.add.delay(1)
    assert claim(run.pk, "w", name="os.system") is None
    run.refresh_from_db()
    assert run.status == "queued"


def test_exclusive_runs_of_one_task_never_run_together():
    task = Task.objects.create(name="solo", schedule="* * * * *", allow_overlap=False)
    now = timezone.now()
    a, b = (Run.objects.create(task=task, task_name="exec.mark", args=["x"], channel="c",
                               scheduled_for=now + timedelta(seconds=i), not_before=now,
                               exclusive=True) for i in range(2))
    assert claim(a.pk, "w1") is not None
    assert claim(b.pk, "w2") is None
    b.refresh_from_db()
    assert b.status == "skipped"
    assert b.error == "Skipped: another run of this task was still running (allow_overlap=False)."


def test_one_shot_runs_of_a_task_that_forbids_overlap_wait_for_each_other():
    """``@sisy.task(allow_overlap=False)``: a run that ``.delay()`` queued while another
    of its task runs stays queued (not skipped), is passed over without hiding the runs
    behind it, and is claimed once the other has ended."""
    from sisy.execution import claim_exclusive

    first, second = tasks.solo_job.delay("a"), tasks.solo_job.delay("b")
    assert (first.exclusive, second.exclusive, first.task_id) == (True, True, None)
    other = tasks.add.delay(1)  # another task's run is not held back
    assert claim(first.pk, "w1") is not None
    assert claim(second.pk, "w2") is None
    second.refresh_from_db()
    assert (second.status, second.error) == ("queued", "")
    now = timezone.now()
    slot = Run.objects.create(
        task=Task.objects.create(name="slot", schedule="* * * * *", allow_overlap=False),
        task_name="exec.mark", args=["slot"], channel="sisy.run_task", scheduled_for=now,
        not_before=now + timedelta(seconds=1), exclusive=True)  # due after "second"
    later = now + timedelta(seconds=2)
    assert [run.pk for run in claim_exclusive(["sisy.run_task"], "w2", now=later)] == [slot.pk]
    assert claim_exclusive(["sisy.run_task"], "w2", now=later) == []  # still waiting
    assert Run.objects.get(pk=second.pk).status == "queued"
    execute(Run.objects.get(pk=first.pk), manage_connections=False)  # "first" ends
    assert [run.pk for run in claim_exclusive(["sisy.run_task"], "w2", now=later)] == [
        second.pk]
    assert Run.objects.get(pk=other.pk).status == "queued"


def _slot(task: Task, seconds_ago: float, label: str = "slot") -> Run:
    """A due queued run of ``task`` (a standing task that forbids overlap)."""
    now = timezone.now()
    return Run.objects.create(
        task=task, task_name="exec.mark", args=[label], channel="sisy.run_task",
        scheduled_for=now - timedelta(seconds=seconds_ago),
        not_before=now - timedelta(seconds=seconds_ago), exclusive=True)


def test_runs_that_forbid_overlap_are_claimed_in_a_batch_no_two_of_one_task():
    """The oldest run of each task, up to ``limit``, in one statement; a task's later
    run (standing or one-shot) stays queued for its turn, not skipped."""
    from sisy.execution import claim_exclusive

    a, b = (Task.objects.create(name=name, schedule="* * * * *", allow_overlap=False)
            for name in ("a", "b"))
    a1, a2, b1 = _slot(a, 30), _slot(a, 20), _slot(b, 10)
    solo1, solo2 = tasks.solo_job.delay("1"), tasks.solo_job.delay("2")
    with CaptureQueriesContext(connection) as queries:
        claimed = claim_exclusive(["sisy.run_task"], "w", limit=10)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 1
    assert [run.pk for run in claimed] == [a1.pk, b1.pk, solo1.pk]  # oldest first
    assert {run.status for run in claimed} == {"running"}
    assert list(Run.objects.filter(pk__in=[a2.pk, solo2.pk]).values_list(
        "status", "error")) == [("queued", ""), ("queued", "")]
    # The limit counts the oldest due runs, before the later runs of a task are left out.
    Run.objects.filter(pk__in=[run.pk for run in claimed]).delete()
    c = Task.objects.create(name="c", schedule="* * * * *", allow_overlap=False)
    c1 = _slot(c, 5)
    assert [run.pk for run in claim_exclusive(["sisy.run_task"], "w", limit=1)] == [a2.pk]
    assert [run.pk for run in claim_exclusive(["sisy.run_task"], "w", limit=2)] == [
        c1.pk, solo2.pk]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_no_run_is_claimed_while_an_older_run_of_its_task_is_being_claimed():
    """Two claims in flight never hold runs of one task: they would wait for each
    other's commit, and two batch claims could deadlock (A holds X's run and waits for
    Y's, B holds Y's and waits for X's). Nor does a task's later run start first."""
    from sisy.execution import claim_exclusive

    x, y = (Task.objects.create(name=name, schedule="* * * * *", allow_overlap=False)
            for name in ("x", "y"))
    x1, x2, y1 = _slot(x, 30), _slot(x, 20), _slot(y, 10)
    locked, release = threading.Event(), threading.Event()

    def other_claim():  # another worker's claim of x1, not yet committed
        try:
            with transaction.atomic():
                list(Run.objects.select_for_update().filter(pk=x1.pk))
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    other = threading.Thread(target=other_claim)
    other.start()
    try:
        assert locked.wait(10)
        claimed = claim_exclusive(["sisy.run_task"], "w", limit=10)
    finally:
        release.set()
        other.join(10)
    assert [run.pk for run in claimed] == [y1.pk]
    assert Run.objects.get(pk=x2.pk).status == "queued"
    assert [run.pk for run in claim_exclusive(["sisy.run_task"], "w", limit=10)] == [x1.pk]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_workers_draining_slots_of_the_same_tasks_together_run_each_task_in_order(caplog):
    """Three workers drain a backlog of three tasks (forbidding overlap) with 40 slots
    each, at once: every slot runs, none is skipped, and each task's slots start in
    order (with claims one at a time, a worker could take a task's next slot while the
    slot before it was being claimed; with batch claims, two could deadlock)."""
    tasks_ = [Task.objects.create(name=f"t{i}", schedule="* * * * *", allow_overlap=False)
              for i in range(3)]
    for slot in range(40):
        for task in tasks_:
            _slot(task, 100 - slot, f"{task.name}-{slot}")

    def drain(name):
        worker = Worker(name=name)
        worker.seconds_per_run = 0.001  # short runs: ten per batch
        try:
            while worker.drain(wakeups=False):
                pass
        finally:
            worker._outcomes.close(timeout=10)
            connection.close()

    with caplog.at_level(logging.WARNING, logger="sisy"):
        workers = [threading.Thread(target=drain, args=(f"w{i}",)) for i in range(3)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(60)
    assert [record.getMessage() for record in caplog.records] == []
    assert set(Run.objects.values_list("status", flat=True)) == {"succeeded"}
    for task in tasks_:
        slots = list(Run.objects.filter(task=task).order_by("started_at")
                     .values_list("scheduled_for", flat=True))
        assert len(slots) == 40 and slots == sorted(slots)


def _busy_queue():
    """Runs that forbid overlap, some of tasks that have a run running:
    ``(late, free1, free2, other1, waiting)``."""
    busy, free, other = (Task.objects.create(name=name, schedule="* * * * *",
                                             allow_overlap=False)
                         for name in ("busy", "free", "other"))
    running = _slot(busy, 60, "running")
    assert claim(running.pk, "w0") is not None
    blocker = tasks.solo_job.delay("blocker")
    assert claim(blocker.pk, "w0") is not None
    waiting = tasks.solo_job.delay("waiting")
    return (_slot(busy, 40), _slot(free, 30), _slot(free, 20), _slot(other, 10), waiting)


def test_a_batch_of_runs_that_forbid_overlap_passes_over_tasks_with_a_run_running():
    """A queued run whose task has a run running waits for that run to end: not
    claimed, not skipped, and it does not hold back the runs behind it."""
    from sisy.execution import claim_exclusive

    late, free1, free2, other1, waiting = _busy_queue()
    claimed = claim_exclusive(["sisy.run_task"], "w", limit=5)
    assert [run.pk for run in claimed] == [free1.pk, other1.pk]
    statuses = dict(Run.objects.values_list("pk", "status"))
    assert [statuses[run.pk] for run in (late, free2, waiting)] == ["queued"] * 3
    Run.objects.filter(status="running", worker="w0").update(status="succeeded")
    assert [run.pk for run in claim_exclusive(["sisy.run_task"], "w", limit=5)] == [
        late.pk, waiting.pk]


def test_a_batch_of_runs_that_forbid_overlap_falls_back_to_one_by_one_on_a_conflict(
        monkeypatch):
    """When another worker's run of a chosen task starts between the batch's choice and
    its claim, the statement fails as a whole: each candidate is then claimed alone, up
    to ``limit``, the conflicting slot recorded as skipped, the waiting one-shot left
    queued, and no second run of a task claimed."""
    from sisy import execution

    late, free1, free2, other1, waiting = _busy_queue()
    claim_sql = execution._claim_sql

    def conflict_first(*args, **kwargs):  # the race, as the batch statement meets it
        monkeypatch.setattr(execution, "_claim_sql", claim_sql)
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(execution, "_claim_sql", conflict_first)
    claimed = execution.claim_exclusive(["sisy.run_task"], "w", limit=5)
    assert [run.pk for run in claimed] == [free1.pk, other1.pk]
    statuses = dict(Run.objects.values_list("pk", "status"))
    assert [statuses[run.pk] for run in (late, free2, waiting)] == [
        "skipped", "queued", "queued"]
    assert Run.objects.get(pk=late.pk).error == (
        "Skipped: another run of this task was still running (allow_overlap=False).")
    free1.refresh_from_db()
    assert free1.status == "running"


def test_a_run_that_forbids_overlap_is_chosen_claimed_and_its_task_marked_at_once():
    """One statement on PostgreSQL; when the oldest may not start (another run of its
    task is running), that one is passed over (it waits) and the next is claimed."""
    from sisy.execution import claim_exclusive

    now = timezone.now()
    busy, free = (Task.objects.create(name=name, schedule="* * * * *", allow_overlap=False)
                  for name in ("busy", "free"))
    running, waiting, other = (
        Run.objects.create(task=task, task_name="tests.testapp.tasks.add", args=[i],
                           channel="sisy.run_task", scheduled_for=now + timedelta(seconds=i),
                           not_before=now - timedelta(seconds=10 - i), exclusive=True)
        for i, task in enumerate((busy, busy, free)))
    with CaptureQueriesContext(connection) as queries:
        [first] = claim_exclusive(["sisy.run_task"], "w1")
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    postgres = connection.vendor == "postgresql"
    assert first.pk == running.pk and first.status == "running"
    assert [sql.split()[0] for sql in statements] == ["WITH" if postgres else "UPDATE"]
    assert Task.objects.get(pk=busy.pk).running is postgres  # elsewhere: prepare() sets it
    [second] = claim_exclusive(["sisy.run_task"], "w2")  # "waiting" may not start
    assert second.pk == other.pk
    waiting.refresh_from_db()
    assert (waiting.status, waiting.error) == ("queued", "")
    with CaptureQueriesContext(connection) as queries:
        execute(second, manage_connections=False)  # its task is marked: no statement for it
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == (1 if postgres else 4), statements
    assert (Task.objects.get(pk=free.pk).running, Run.objects.get(pk=other.pk).result) == (
        False, 2)
    assert claim_exclusive(["sisy.run_task"], "w3") == []  # "waiting": "running" runs


def test_a_wakeup_claims_its_run_first_and_a_batch_of_waiting_runs_in_one_statement():
    from sisy.execution import claim_wakeup

    older, named, newer, later = (tasks.add.delay(i) for i in range(4))
    task = Task.objects.create(name="solo", schedule="* * * * *", allow_overlap=False)
    exclusive = Run.objects.create(task=task, task_name="exec.mark", args=["x"],
                                   channel="sisy.run_task", scheduled_for=timezone.now(),
                                   not_before=timezone.now(), exclusive=True)
    with CaptureQueriesContext(connection) as queries:
        claimed = claim_wakeup(named.pk, named.task_name, ["sisy.run_task"], "w", more=2)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert [sql.split()[0] for sql in statements] == ["UPDATE"]  # the test's transaction aside
    assert [run.pk for run in claimed] == [named.pk, older.pk, newer.pk]
    assert {run.status for run in claimed} == {"running"}
    assert {r.pk: r.status for r in Run.objects.all()} == {
        older.pk: "running", named.pk: "running", newer.pk: "running",
        later.pk: "queued", exclusive.pk: "queued"}
    # Its run taken already: the wake-up still takes the work that waits, not the exclusive run.
    assert [r.pk for r in claim_wakeup(named.pk, named.task_name, ["sisy.run_task"], "w2",
                                       more=5)] == [later.pk]
    assert claim_wakeup(named.pk, named.task_name, ["sisy.run_task"], "w2", more=5) == []


def test_a_wakeup_claims_nothing_by_a_wrong_name_and_gives_way_to_a_running_exclusive_run():
    from sisy.execution import claim_wakeup

    run = tasks.add.delay(1)
    assert claim_wakeup(run.pk, "os.system", ["sisy.run_task"], "w") == []
    assert Run.objects.get(pk=run.pk).status == "queued"
    task = Task.objects.create(name="solo", schedule="* * * * *", allow_overlap=False)
    now = timezone.now()
    a, b = (Run.objects.create(task=task, task_name="exec.mark", args=["x"],
                               channel="sisy.run_task", scheduled_for=now + timedelta(seconds=i),
                               not_before=now, exclusive=True) for i in range(2))
    assert claim(a.pk, "w1") is not None
    # b may not start while a runs: None, and nothing of the batch was claimed either.
    assert claim_wakeup(b.pk, "exec.mark", ["sisy.run_task"], "w2", more=5) is None
    assert {r.pk: r.status for r in Run.objects.all()} == {
        run.pk: "queued", a.pk: "running", b.pk: "queued"}


def test_after_a_wakeup_lost_to_another_worker_a_wakeup_also_claims_waiting_runs(monkeypatch):
    first, second, third = (tasks.mark.delay(f"w{i}") for i in range(3))
    Run.objects.filter(pk=first.pk).update(status="running", worker="other")
    worker = Worker(name="w", manage_connections=False, background_outcomes=False)
    message = {"type": "sisy.run", "run": first.pk, "name": "exec.mark"}
    assert worker._handle(message) == (False, False)  # before any timing: the one-by-one path
    assert worker.contended and Run.objects.get(pk=second.pk).status == "queued"
    worker.seconds_per_run = 0.0
    # Short runs from here on, whatever the machine's load makes them take: the batch
    # sizes below follow from claim_limit(), which a slow run would lower.
    monkeypatch.setattr(worker, "note_duration", lambda seconds: None)
    # The last wake-up's run was taken by another worker, and so is this one's: this worker
    # runs what waits. A batch that was not full means the table holds no more: no drain.
    with CaptureQueriesContext(connection) as queries:
        assert worker._handle(message) == (False, False)
    assert sum("AS named" in q["sql"] for q in queries.captured_queries) == 1
    assert sorted(Mark.objects.values_list("token", flat=True)) == ["w1", "w2"]
    assert worker.contended
    more = [tasks.mark.delay(f"m{i}") for i in range(worker.batch_size + 1)]
    assert worker._handle({"type": "sisy.run", "run": more[0].pk, "name": "exec.mark"}) == (
        True, True)  # a full batch: the table may hold more, so a drain follows
    assert Run.objects.filter(status="queued").count() == 1
    # Its own run found: back to the quickest start, the named run claimed alone.
    assert not worker.contended
    last = tasks.mark.delay("last")
    with CaptureQueriesContext(connection) as queries:
        assert worker._handle({"type": "sisy.run", "run": last.pk, "name": "exec.mark"}) == (
            True, True)
    assert not any("AS named" in q["sql"] for q in queries.captured_queries)


def test_after_a_wakeup_the_worker_drains_only_when_behind_or_after_a_while():
    from sisy.worker import BACKLOG_AGE, DRAIN_EVERY

    worker = Worker(name="w", manage_connections=False, background_outcomes=False)
    first = tasks.mark.delay("first")
    # Never looked at the table yet: a drain follows the first wake-up.
    assert worker._handle({"type": "sisy.run", "run": first.pk, "name": "exec.mark"}) == (
        True, True)
    worker.drain()
    # Just drained, and this run was claimed as soon as it was due: no drain.
    fresh = tasks.mark.delay("fresh")
    with CaptureQueriesContext(connection) as queries:
        assert worker._handle({"type": "sisy.run", "run": fresh.pk, "name": "exec.mark"}) == (
            True, False)
    assert len([q for q in queries.captured_queries if "UPDATE" in q["sql"]]) == 2  # claim, outcome
    # A run due a while ago: the worker is behind, so it drains (a lost wake-up's run waits).
    lost, late = tasks.mark.delay("lost"), tasks.mark.delay("late")
    Run.objects.filter(pk=late.pk).update(not_before=timezone.now() - timedelta(seconds=1))
    assert worker._handle({"type": "sisy.run", "run": late.pk, "name": "exec.mark"}) == (
        True, True)
    assert worker.drain() == 1 and Run.objects.get(pk=lost.pk).status == "succeeded"
    # A one-shot run of a task that forbids overlap: a run of its task may be waiting
    # for it (its wake-up taken by a worker that had to leave it queued), so a drain
    # follows, which starts that run as soon as this one has ended.
    worker.last_drain = time.monotonic()
    first, waiting = tasks.solo_job.delay("first"), tasks.solo_job.delay("waiting")
    assert worker._handle({"type": "sisy.run", "run": first.pk, "name": "exec.solo"}) == (
        True, True)
    assert Run.objects.get(pk=waiting.pk).status == "queued"
    assert worker.drain() == 1 and Run.objects.get(pk=waiting.pk).result == "waiting"
    # drain_due() itself, with the times given.
    now = timezone.now()
    run = Run(not_before=now)
    worker.last_drain = 0.0
    assert worker.drain_due(run, now, DRAIN_EVERY / 2) is False
    assert worker.drain_due(run, now + timedelta(seconds=BACKLOG_AGE), 0.0) is True
    assert worker.drain_due(run, now, DRAIN_EVERY) is True
    # A producer whose clock runs ahead of the worker's: a negative wait, no drain.
    assert worker.drain_due(run, now - timedelta(seconds=5), 0.0) is False


# -- executing ------------------------------------------------------------------------------

def test_success_records_result_timing_and_worker():
    run = tasks.add.delay(2, 3)
    drain()
    run.refresh_from_db()
    assert (run.status, run.result, run.worker, run.error) == ("succeeded", 5, "test-worker", "")
    assert run.enqueued_at <= run.started_at <= run.finished_at
    assert run.wait(timeout=0) == 5


def test_failure_records_type_message_and_traceback():
    run = tasks.fail.delay("bad input")
    drain()
    run.refresh_from_db()
    assert (run.status, run.error_type) == ("failed", "ValueError")
    assert run.error.startswith("ValueError: bad input\n\nTraceback (most recent call last):")
    assert 'raise ValueError(message)' in run.error
    expected = r"Run \d+ of task 'testapp.fail' failed: ValueError: bad input"
    with pytest.raises(RunFailed, match=expected) as info:
        run.wait(timeout=0)
    assert info.value.error_type == "ValueError"
    assert "raise ValueError(message)" in info.value.remote_traceback


@pytest.mark.parametrize(
    ("task", "error_start"),
    [
        (tasks.calls_exit, "SystemExit: 3"),
        (tasks.raises_interrupt, "KeyboardInterrupt: from a task"),
        (tasks.returns_object,
         "TypeError: Task 'exec.not_json' returned object, which cannot be stored as JSON"),
    ],
)
def test_hostile_task_bodies_fail_the_run_not_the_worker(task, error_start):
    run = task.delay()
    worker = Worker(["sisy.run_task"], name="w", manage_connections=False)
    assert worker.drain() == 1
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error.startswith(error_start)
    follow_up = tasks.add.delay(1, 1)
    assert worker.drain() == 1
    assert follow_up.wait(timeout=0) == 2


def test_async_task_functions_run():
    run = tasks.async_add.delay(2, 5)
    drain()
    assert run.wait(timeout=0) == 7


def test_context_progress_and_userdata():
    row = Task.objects.create(name="with-progress", schedule="* * * * *", userdata={"seen": 1})
    now = timezone.now()
    run = Run.objects.create(task=row, task_name="exec.progress", kwargs={"steps": 4},
                             channel="sisy.run_task", scheduled_for=now, not_before=now)
    drain()
    run.refresh_from_db()
    assert run.result == {"attempt": 1, "run": run.pk}
    assert (run.progress_done, run.progress_total, run.progress_note) == (4, 4, "step 4")
    row.refresh_from_db()
    assert row.userdata == {"seen": 2}
    assert row.running is False


@pytest.mark.parametrize("steps, total, writes, saved", [
    (0, None, 0, (0, None, "")),        # no progress reported: no query at all
    (3, 3, 2, (3, 3, "step 3")),        # the first and the final step; nothing left to flush
    (3, 10, 2, (3, 10, "step 3")),      # the first step, then the folded ones when it ends
])
def test_progress_is_written_at_the_end_only_when_a_call_was_folded(steps, total, writes, saved):
    run = tasks.with_progress.delay(steps=steps, total=total)
    claimed = claim(run.pk, "w")
    with CaptureQueriesContext(connection) as queries:
        execute(claimed, manage_connections=False)
    progress = [q["sql"] for q in queries.captured_queries if '"progress_done"' in q["sql"]]
    assert len(progress) == writes, progress
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert (run.progress_done, run.progress_total, run.progress_note) == saved


@pytest.mark.postgres
@pytest.mark.parametrize("name, args, reads_row", [
    ("exec.task_running", [], True),   # takes a context: the Task row comes back at once
    ("tests.testapp.tasks.add", [2, 3], False),  # needs the row's name only
])
def test_a_standing_task_run_is_marked_and_settled_in_two_statements(name, args, reads_row):
    """On PostgreSQL the run's ``Task`` row is marked running (and read, when the run
    needs it) in one statement, and cleared by the statement that stores the outcome."""
    row = Task.objects.create(name=f"standing-{name}", schedule="* * * * *")
    now = timezone.now()
    run = Run.objects.create(task=row, task_name=name, args=args, channel="sisy.run_task",
                             scheduled_for=now, not_before=now)
    claimed = claim(run.pk, "w")
    with CaptureQueriesContext(connection) as queries:
        execute(claimed, manage_connections=False)
    statements = [q["sql"] for q in queries.captured_queries if "sisy_task" in q["sql"]
                  or "sisy_run" in q["sql"]]
    returning = statements[0].split("RETURNING ")[1]
    assert statements[0].startswith('UPDATE sisy_task SET running = true WHERE id = ')
    assert ("userdata" in returning) is reads_row and "name" in returning
    assert statements[-1].startswith("WITH stored AS (UPDATE sisy_run SET status = ")
    assert "UPDATE sisy_task SET running = false" in statements[-1]
    body = statements[1:-1]  # the task body's own query, and nothing else
    assert [sql.split(",")[0] for sql in body] == (
        ['SELECT "sisy_task"."id"'] if reads_row else []), statements
    run.refresh_from_db()
    row.refresh_from_db()
    assert (run.status, run.result, row.running) == (
        "succeeded", True if reads_row else 5, False)


@pytest.mark.postgres
def test_a_standing_task_run_of_a_deleted_task_fails_and_says_so():
    row = Task.objects.create(name="standing-gone", schedule="* * * * *")
    now = timezone.now()
    run = Run.objects.create(task=row, task_name="tests.testapp.tasks.add", args=[1],
                             channel="sisy.run_task", scheduled_for=now, not_before=now)
    claimed = claim(run.pk, "w")
    Task.objects.filter(pk=row.pk).delete()  # the run keeps its copy of the task id
    execute(claimed, manage_connections=False)
    run.refresh_from_db()
    assert (run.status, run.error_type) == ("failed", "sisy.models.Task.DoesNotExist")
    assert run.error.startswith("sisy.models.Task.DoesNotExist: Task matching query does not "
                                "exist.")


def test_inline_call_with_context_gets_an_inline_context():
    assert tasks.with_progress(steps=2) == {"attempt": 1, "run": None}


def test_retries_are_new_visible_attempts():
    first = tasks.flaky.delay("flaky-1")
    later = timezone.now() + timedelta(seconds=10)  # past every backoff
    executed = 0
    while (run := claim_next(["sisy.run_task"], "w", now=later)) is not None:
        execute(run, manage_connections=False)
        executed += 1
    attempts = list(Run.objects.filter(task_name="exec.flaky").order_by("attempt"))
    assert executed == 3
    assert [(r.attempt, r.status) for r in attempts] == [
        (1, "failed"), (2, "failed"), (3, "succeeded")]
    assert [r.retry_of_id for r in attempts] == [None, first.pk, attempts[1].pk]
    assert attempts[1].not_before >= attempts[0].finished_at  # retry_backoff=0
    assert attempts[2].result == "third time lucky"
    assert Mark.objects.filter(token="flaky-1").count() == 3


def test_unknown_task_name_fails_without_running_anything():
    now = timezone.now()
    run = Run.objects.create(task_name="os.system", args=["echo pwned"], channel="sisy.run_task",
                             scheduled_for=now, not_before=now)
    drain()
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error.startswith(
        "sisy.exceptions.UnknownTask: No task is registered as 'os.system' in this worker; "
        "nothing was run.")


def test_signals_are_sent_around_the_run():
    seen = []

    def started(sender, run, **kwargs):
        seen.append(("started", sender.name, run.status))

    def finished(sender, run, status, **kwargs):
        seen.append(("finished", sender.name, status))

    signals.run_started.connect(started)
    signals.run_finished.connect(finished)
    try:
        tasks.add.delay(1)
        drain()
    finally:
        signals.run_started.disconnect(started)
        signals.run_finished.disconnect(finished)
    assert seen == [("started", "tests.testapp.tasks.add", "running"),
                    ("finished", "tests.testapp.tasks.add", "succeeded")]


# -- wait() ---------------------------------------------------------------------------------

def test_wait_times_out_with_a_timeout_error():
    run = tasks.add.delay(1)
    with pytest.raises(TimeoutError, match=r"is still queued after 0.05 s"):
        run.wait(timeout=0.05)
    with pytest.raises(RunTimeout):
        run.wait(timeout=0)


def test_wait_on_a_cancelled_run_raises():
    run = tasks.add.delay(1)
    Run.objects.filter(pk=run.pk).update(status="cancelled", error="cancelled by an operator")
    with pytest.raises(RunCancelled, match="was cancelled: cancelled by an operator"):
        run.wait(timeout=0)


# -- malformed messages ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "message",
    [
        None, "sisy.run", 42, [], {}, {"run": 1, "name": "x"},
        {"type": "other", "run": 1, "name": "x"},
        {"type": "sisy.run", "run": "1", "name": "tests.testapp.tasks.add"},
        {"type": "sisy.run", "run": True, "name": "tests.testapp.tasks.add"},
        {"type": "sisy.run", "run": -5, "name": "tests.testapp.tasks.add"},
        {"type": "sisy.run", "run": 1, "name": 7},
        {"type": "sisy.run", "run": 1, "name": "x" * 5000},
        {1: "int key", "type": "sisy.run"},
    ],
)
def test_malformed_messages_are_refused_and_change_nothing(message, caplog):
    run = tasks.add.delay(1)
    assert Worker(name="w", manage_connections=False).handle_message(message) is False
    run.refresh_from_db()
    assert run.status == "queued"
    assert "refused a malformed message" in caplog.text


def test_message_for_a_finished_run_does_not_run_it_again():
    run = tasks.mark.delay("once")
    worker = Worker(name="w", manage_connections=False)
    message = {"type": "sisy.run", "run": run.pk, "name": "exec.mark"}
    assert worker.handle_message(message) is True
    assert worker.handle_message(message) is False
    assert Mark.objects.filter(token="once").count() == 1


def test_message_with_an_unregistered_name_runs_nothing():
    run = tasks.mark.delay("never")
    worker = Worker(name="w", manage_connections=False)
    assert worker.handle_message({"type": "sisy.run", "run": run.pk, "name": "os.system"}) is False
    assert Mark.objects.filter(token="never").count() == 0
    assert Run.objects.get(pk=run.pk).status == "queued"


# -- eager mode -----------------------------------------------------------------------------

def test_eager_mode_runs_inline_through_validation_and_ledger(settings):
    settings.SISY = {"EAGER": True}
    run = tasks.add.delay(4, 5)
    assert (run.status, run.result, run.worker) == ("succeeded", 9, "eager")
    with pytest.raises(InvalidArguments):
        tasks.add.delay("nope")
    assert Run.objects.count() == 1


def test_eager_mode_records_failures(settings):
    settings.SISY = {"EAGER": True}
    run = tasks.fail.delay("eager boom")
    assert run.status == "failed"
    with pytest.raises(RunFailed, match="ValueError: eager boom"):
        run.wait(timeout=0)


# -- command-line input ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sisy_worker", "--concurrency", "0"], "--concurrency must be 1 or more, not 0."),
        (["sisy_worker", "--channel", "bad!name"],
         "--channel 'bad!name' is not a valid Sisy channel; "
         "use a plain name such as sisy.run_task."),
        (["sisy_run", "--concurrency", "-1"], "--concurrency must be 1 or more, not -1."),
    ],
)
def test_worker_commands_refuse_bad_options(argv, message):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=re.escape(message)):
        call_command(*argv)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_non_durable_enqueue_writes_the_row_and_leaks_no_setting(sisy_settings):
    sisy_settings(DURABLE_ENQUEUE=False)
    run = tasks.add.delay(1, 2)
    assert Run.objects.get(pk=run.pk).args == [1, 2]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        assert cursor.fetchone() == ("on",)
    with transaction.atomic():  # the caller's transaction decides: no SET LOCAL inside it
        tasks.add.delay(3)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('synchronous_commit')")
            assert cursor.fetchone() == ("on",)
    assert Run.objects.count() == 2
    # Outcomes are stored without waiting for the disk by default (DURABLE_RESULTS=False).
    assert drain() == 2
    assert sorted(Run.objects.values_list("status", "result")) == [
        ("succeeded", 3), ("succeeded", 3)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        assert cursor.fetchone() == ("on",)


def _redis_layer(settings, **config):
    """The test's Redis channel layer with ``config`` on top (its own prefix, say)."""
    from channels.layers import channel_layers, get_channel_layer

    layers = {"default": {**settings.CHANNEL_LAYERS["default"]}}
    layers["default"]["CONFIG"] = {**layers["default"]["CONFIG"], **config}
    settings.CHANNEL_LAYERS = layers
    channel_layers.backends.pop("default", None)
    return get_channel_layer()


def _receive_all(layer, channel: str) -> list[dict]:
    """Every message ``channel`` holds, through the layer's own ``receive``."""
    import asyncio

    async def receive_all():
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(layer.receive(channel), 0.5))
            except TimeoutError:
                return got

    return asyncio.run(receive_all())


@pytest.mark.redis
def test_batched_wake_ups_are_ordinary_channels_redis_messages_trimmed_to_capacity(settings):

    from sisy.dispatch import run_message, sender

    layer = _redis_layer(settings, capacity=5, prefix="sisy-batch-test")
    runs = [Run(pk=i, task_name="tests.testapp.tasks.add", channel="sisy.batch")
            for i in range(1, 9)]
    sender.send(layer, ((run.channel, run_message(run)) for run in runs))
    assert sender.flush(timeout=5)

    received = _receive_all(layer, "sisy.batch")
    assert sorted(m["run"] for m in received) == [4, 5, 6, 7, 8]
    assert all(m["type"] == "sisy.run" and m["name"] == "tests.testapp.tasks.add"
               for m in received)


def _zcard(layer, channel: str) -> int:
    """How many messages ``channel`` holds, read with a client of its own."""
    import redis

    host = layer.hosts[layer.consistent_hash(channel)]
    client = redis.Redis.from_url(host["address"])
    try:
        return client.zcard(layer.prefix + channel)
    finally:
        client.close()


@pytest.mark.redis
def test_a_lone_wake_up_is_sent_by_the_caller_and_a_stream_by_the_sender_thread(
        settings, monkeypatch):
    """The first wake-up is in Redis when ``send()`` returns, without the thread; one
    that follows within LINGER waits for the thread's batch; a process-specific channel
    (not Sisy's own commands) always goes through the thread."""
    import asyncio

    from sisy import dispatch

    monkeypatch.setattr(dispatch, "LINGER", 1.0)
    layer = _redis_layer(settings, prefix="sisy-inline-test")
    asyncio.run(layer.flush())  # nothing left from an earlier run of this test
    sender = dispatch.Sender()
    message = {"type": "sisy.run", "run": 1, "name": "x"}
    began = time.monotonic()
    sender.send(layer, [("sisy.inline", message)])
    assert (_zcard(layer, "sisy.inline"), sender._thread) == (1, None)
    sender.send(layer, [("sisy.inline", {**message, "run": 2})])
    waiting = [m["run"] for _, _, m in sender._waiting]
    queued_at_once = _zcard(layer, "sisy.inline")
    assert time.monotonic() - began < 1.0, "too slow to tell a lingering thread from none"
    assert (waiting, queued_at_once, sender._thread.is_alive()) == ([2], 1, True)
    assert sender.flush(timeout=5)
    assert _zcard(layer, "sisy.inline") == 2
    assert not dispatch._batchable(layer, "sisy.inline!abc")
    assert sender.send_inline(layer, [("sisy.inline!abc", message)]) is False
    assert sender.send_inline(layer, []) is False
    # The thread sends Sisy's channels with its synchronous client and a '!' channel
    # through the layer's own send, on an event loop of its own.
    own = asyncio.run(layer.new_channel("sisy.inline"))
    sender.send(layer, [(own, {**message, "run": 3}), ("sisy.inline", {**message, "run": 4})])
    assert sender.flush(timeout=5)
    assert [m["run"] for m in _receive_all(layer, own)] == [3]
    assert sorted(m["run"] for m in _receive_all(layer, "sisy.inline")) == [1, 2, 4]
    assert (0, True) in layer.__dict__["_sisy_sync_clients"]


@pytest.mark.redis
def test_a_wake_up_drops_expired_messages_keeps_the_newest_and_refreshes_the_expiry(
        settings, monkeypatch):
    """Sent by the caller and by the sender thread alike, wake-ups are stored as
    channels-redis stores a message: expired messages go, the channel keeps its newest
    ``capacity`` messages, and the key lives ``expiry`` seconds from the last send."""
    import asyncio

    import redis

    from sisy import dispatch

    monkeypatch.setattr(dispatch, "LINGER", 1.0)
    layer = _redis_layer(settings, prefix="sisy-store-test", capacity=3, expiry=30)
    asyncio.run(layer.flush())  # nothing left from an earlier run of this test
    client = redis.Redis.from_url(layer.hosts[0]["address"])
    key = layer.prefix + "sisy.store"
    client.zadd(key, {b"expired long ago": 1.0})
    sender = dispatch.Sender()

    def message(i):
        return ("sisy.store", {"type": "sisy.run", "run": i, "name": "x"})

    assert sender.send_inline(layer, [message(1)]) is True
    assert client.zcard(key) == 1  # the expired message dropped
    sender.send(layer, [message(i) for i in range(2, 7)])  # within LINGER: the thread
    assert sender._thread is not None and sender.flush(timeout=5)

    assert client.zcard(key) == 3 and 28 <= client.ttl(key) <= 30
    # The newest three; the messages of one batch share a score.
    assert sorted(m["run"] for m in _receive_all(layer, "sisy.store")) == [4, 5, 6]
    client.close()


@pytest.mark.redis
@pytest.mark.parametrize("server", ["silent", "refusing"])
def test_a_caller_waits_at_most_the_inline_timeout_for_a_redis_that_fails_it(settings,
                                                                              server):
    """A Redis that accepts and never answers, or refuses connections: the caller's
    ``send()`` gives up after INLINE_TIMEOUT at most, hands the wake-up to the thread,
    and for INLINE_PAUSE seconds sends nothing inline (returns at once)."""
    import socket

    from sisy import dispatch

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if server == "silent":
        listener.listen(8)  # the kernel accepts connections; nobody ever answers
    else:
        listener.close()  # nothing listens: connections are refused
    layer = _redis_layer(settings, prefix="sisy-inline-down",
                         hosts=[{"address": f"redis://127.0.0.1:{port}/0", "socket_timeout": 5}])
    sender = dispatch.Sender()
    message = {"type": "sisy.run", "run": 1, "name": "x"}
    try:
        began = time.monotonic()
        sender.send(layer, [("sisy.down", message)])
        first = time.monotonic() - began
        paused = sender._inline_paused_until - time.monotonic()
        queued = [m for _, _, m in sender._waiting] or sender._busy
        began = time.monotonic()
        assert sender.send_inline(layer, [("sisy.down", {**message, "run": 2})]) is False
        second = time.monotonic() - began
    finally:
        listener.close()
    assert first < dispatch.INLINE_TIMEOUT + 0.9  # not the host's own 5 s, nor retries
    if server == "silent":
        assert first >= dispatch.INLINE_TIMEOUT * 0.9
    assert dispatch.INLINE_PAUSE - 1 < paused <= dispatch.INLINE_PAUSE
    assert queued and sender._thread.is_alive()
    assert second < 0.05  # paused: no attempt at all


def test_sisys_redis_clients_are_built_like_channels_redis_pools_with_their_own_timeouts():
    """An address URL, a host and port (channels-redis's tuple form), and Sentinel: the
    same pools channels-redis builds, synchronous, one try per command. A caller's waits
    at most INLINE_TIMEOUT (or the host's own timeout, if shorter); a worker's blocking
    pop's and the sender thread's, at least MAX_BLOCK + BLOCK_MARGIN (or the host's own,
    if longer). One
    of each per layer and host. Nothing connects."""
    import redis
    from channels_redis.core import RedisChannelLayer
    from redis.sentinel import SentinelConnectionPool

    from sisy import dispatch

    layer = RedisChannelLayer(hosts=[
        {"address": "redis://127.0.0.1:6390/3?socket_timeout=10", "password": "pw"},
        ("127.0.0.1", 6391),
        {"master_name": "mymaster", "sentinels": [("127.0.0.1", 26390)], "socket_timeout": 0.05},
    ])
    clients = [dispatch._sync_client(layer, index) for index in range(3)]
    pools = [client.connection_pool for client in clients]
    assert [type(pool) for pool in pools] == [redis.ConnectionPool, redis.ConnectionPool,
                                              SentinelConnectionPool]
    kwargs = [pool.connection_kwargs for pool in pools]
    assert [(k.get("port"), k.get("db"), k.get("password")) for k in kwargs[:2]] == [
        (6390, 3, "pw"), (6391, None, None)]
    assert [(k["socket_timeout"], k["socket_connect_timeout"]) for k in kwargs] == [
        (dispatch.INLINE_TIMEOUT, dispatch.INLINE_TIMEOUT)] * 2 + [(0.05, dispatch.INLINE_TIMEOUT)]
    assert [k["retry"].get_retries() for k in kwargs] == [0, 0, 0]
    assert dispatch._sync_client(layer, 0) is clients[0]

    blocking = [dispatch._sync_client(layer, index, blocking=True) for index in range(3)]
    kwargs = [client.connection_pool.connection_kwargs for client in blocking]
    longest = dispatch.MAX_BLOCK + dispatch.BLOCK_MARGIN
    assert [(k["socket_timeout"], k["socket_connect_timeout"]) for k in kwargs] == [
        (10.0, longest), (longest, longest), (longest, longest)]
    assert [k["retry"].get_retries() for k in kwargs] == [0, 0, 0]
    assert [(k.get("port"), k.get("db")) for k in kwargs[:2]] == [(6390, 3), (6391, None)]
    assert dispatch._sync_client(layer, 2, blocking=True) is blocking[2]
    assert not {id(client) for client in blocking} & {id(client) for client in clients}
    dispatch.close_sync_clients(layer)
    assert dispatch._sync_client(layer, 0) is not clients[0]


def test_a_redis_host_that_cannot_be_built_leaves_the_wake_up_to_the_sender_thread(caplog):
    """Garbage in the layer's host settings: ``send()`` neither raises nor loses the
    wake-up: the thread takes it (and logs that it could not send it)."""
    from channels_redis.core import RedisChannelLayer

    from sisy import dispatch

    layer = RedisChannelLayer(hosts=[{"address": "not a url"}])
    sender = dispatch.Sender()
    message = {"type": "sisy.run", "run": 1, "name": "x"}
    with caplog.at_level(logging.WARNING, logger="sisy.dispatch"):
        sender.send(layer, [("sisy.garbage", message)])
        queued = [m for _, _, m in sender._waiting] or sender._busy
        assert sender.flush(timeout=5)
    assert queued and sender._inline_paused_until > time.monotonic()
    assert "Could not send Sisy wake-up messages" in caplog.text


@pytest.mark.redis
@pytest.mark.parametrize("bzmpop", [True, False], ids=["redis7", "redis6-fallback"])
def test_a_worker_pops_wake_ups_in_the_layers_order_up_to_its_count(settings, monkeypatch,
                                                                    bzmpop):
    """Sisy's own pop reads what layer.send wrote, lowest score first, and nothing else:
    up to ``count`` in one round trip (BZMPOP), or one at a time where the server has none."""
    import asyncio

    from sisy import dispatch
    from sisy.worker import Worker

    monkeypatch.setattr(dispatch, "_bzmpop", bzmpop)
    layer = _redis_layer(settings, prefix="sisy-pop-test")

    async def scenario():
        await layer.flush()
        for i in range(1, 7):
            await layer.send("sisy.pop", {"type": "sisy.run", "run": i, "name": "x"})
        got = [Worker._receive(layer, "sisy.pop", 1.0, count) for count in (1, 3, 5)]
        rest = []
        while sum(map(len, got)) + len(rest) < 6:
            rest += Worker._receive(layer, "sisy.pop", 1.0, 5)
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            Worker._receive(layer, "sisy.pop", 0.2, 5)
        waited = time.monotonic() - began
        # Nothing was left behind: no backup copies, no other keys.
        keys = await layer.connection(0).keys("sisy-pop-test*")
        await layer.flush()
        return got, rest, waited, keys

    got, rest, waited, keys = asyncio.run(scenario())
    if bzmpop:
        assert [[m["run"] for m in batch] for batch in got] == [[1], [2, 3, 4], [5, 6]]
    else:
        assert [[m["run"] for m in batch] for batch in got] == [[1], [2], [3]]
    assert [m["run"] for m in rest] == ([] if bzmpop else [4, 5, 6])
    assert all(m == {"type": "sisy.run", "run": m["run"], "name": "x"}
               for batch in [*got, rest] for m in batch)
    assert 0.15 < waited < 1.0
    assert keys == []


@pytest.mark.redis
def test_with_several_redis_hosts_a_channels_wake_ups_are_written_and_popped_on_one_host(
        settings):
    """channels-redis spreads a channel's messages over its ``hosts`` in turn and its
    receivers cycle through them, blocking on each in turn. Sisy keeps each channel on
    the host its name hashes to, for both its sends and its pops, so that a worker
    blocked on a channel gets its wake-ups at once, whatever host holds the channel."""
    import asyncio
    from urllib.parse import urlsplit, urlunsplit

    from sisy.dispatch import run_message, sender
    from sisy.worker import Worker

    first = settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]
    parts = urlsplit(first["address"])
    second = {**first, "address": urlunsplit(parts._replace(
        path="/14" if parts.path != "/14" else "/15"))}
    layer = _redis_layer(settings, hosts=[first, second], prefix="sisy-shard-test")
    channels = ["sisy.one", "sisy.two", "default", "sisy.h", "sisy.a", "sisy.b"]
    assert [layer.consistent_hash(channel) for channel in channels] == [1, 0, 0, 0, 1, 1]

    async def scenario():
        await layer.flush()
        popped = {}
        for round_ in range(3):
            runs = [Run(pk=10 * round_ + i + 1, task_name="x", channel=channel)
                    for i, channel in enumerate(channels)]
            sender.send(layer, ((run.channel, run_message(run)) for run in runs))
            for channel in channels:
                try:
                    messages = Worker._receive(layer, channel, 0.5, 5)
                except TimeoutError:
                    messages = []
                popped.setdefault(channel, []).extend(m["run"] for m in messages)
        keys = [await layer.connection(index).keys("sisy-shard-test*") for index in (0, 1)]
        return popped, keys

    popped, keys = asyncio.run(scenario())
    assert popped == {channel: [i + 1, i + 11, i + 21] for i, channel in enumerate(channels)}
    assert keys == [[], []]


@pytest.mark.redis
def test_a_redis_without_bzmpop_is_remembered_and_the_worker_pops_one_at_a_time(settings,
                                                                                monkeypatch):
    """Redis 6 answers BZMPOP with "unknown command": the pop falls back to BZPOPMIN
    for good; any other error reaches the caller."""
    import asyncio

    import redis
    from redis.exceptions import ResponseError

    from sisy import dispatch

    monkeypatch.setattr(dispatch, "_bzmpop", True)
    layer = _redis_layer(settings, prefix="sisy-pop6-test")
    errors = iter(["ERR unknown command 'BZMPOP', with args beginning with: ",
                   "WRONGTYPE Operation against a key holding the wrong kind of value"])

    def refusing_bzmpop(self, *args, **kwargs):
        raise ResponseError(next(errors))

    async def scenario():
        monkeypatch.setattr(redis.Redis, "bzmpop", refusing_bzmpop)
        await layer.flush()
        for i in (1, 2):
            await layer.send("sisy.pop6", {"type": "sisy.run", "run": i, "name": "x"})
        first = dispatch.pop_wakeups(layer, "sisy.pop6", 1.0, 5)
        remembered = dispatch._bzmpop
        second = dispatch.pop_wakeups(layer, "sisy.pop6", 1.0, 5)  # no BZMPOP asked
        dispatch._bzmpop = True
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            dispatch.pop_wakeups(layer, "sisy.pop6", 1.0, 5)
        await layer.flush()
        return first, remembered, second

    first, remembered, second = asyncio.run(scenario())
    assert ([m["run"] for m in first], remembered, [m["run"] for m in second]) == (
        [1], False, [2])


def test_wake_ups_popped_together_claim_their_runs_in_one_statement_in_their_order():
    worker = Worker(name="w", manage_connections=False, background_outcomes=False)
    worker.seconds_per_run, worker.last_drain = 0.0, time.monotonic()  # no drain is due
    first, second, third, unnamed = (tasks.mark.delay(f"t{i}") for i in range(4))
    messages = [{"type": "sisy.run", "run": run.pk, "name": "exec.mark"}
                for run in (third, first, second)]
    with CaptureQueriesContext(connection) as queries:
        assert worker._handle_many(messages) == (True, False)
    claims = [q["sql"] for q in queries.captured_queries if "AS named" in q["sql"]]
    assert len(claims) == 1 and "AS waiting" not in claims[0]
    assert list(Mark.objects.order_by("id").values_list("token", flat=True)) == ["t2", "t0", "t1"]
    assert Run.objects.get(pk=unnamed.pk).status == "queued"  # not named, not contended
    assert not worker.contended
    # Garbage, a wrong name, a duplicate and runs another worker took: the garbage is
    # refused, nothing is claimed by the wrong name, and the lost wake-ups make the
    # worker contended (the next batch also takes waiting runs).
    taken = tasks.mark.delay("taken")
    Run.objects.filter(pk=taken.pk).update(status="running", worker="other")
    garbage = [{"type": "sisy.run", "run": "1; DROP TABLE", "name": "x"}, ["garbage"]]
    named = [{"type": "sisy.run", "run": unnamed.pk, "name": "os.system"},
             {"type": "sisy.run", "run": taken.pk, "name": "exec.mark"},
             {"type": "sisy.run", "run": taken.pk, "name": "exec.mark"}]
    assert worker._handle_many(garbage + named) == (False, False)
    assert Run.objects.get(pk=unnamed.pk).status == "queued"
    assert Run.objects.get(pk=taken.pk).worker == "other"
    assert worker.contended
    later = [tasks.mark.delay(f"later-{i}") for i in range(3)]
    messages = [{"type": "sisy.run", "run": run.pk, "name": "exec.mark"} for run in later[:2]]
    assert worker._handle_many(messages) == (True, False)
    # The named two first, then what waits (the one by the wrong name, and later[2]).
    assert list(Mark.objects.order_by("id").values_list("token", flat=True))[3:] == [
        "later-0", "later-1", "t3", "later-2"]
    assert not worker.contended


def test_wake_ups_popped_by_a_stopping_worker_leave_their_runs_queued():
    worker = Worker(name="w", manage_connections=False, background_outcomes=False)
    runs = [tasks.mark.delay(f"s{i}") for i in range(3)]
    messages = [{"type": "sisy.run", "run": run.pk, "name": "exec.mark"} for run in runs]
    worker.stop_event.set()
    with CaptureQueriesContext(connection) as queries:
        assert worker._handle_many(messages[:1] + [{"at": 1.0, **messages[1]}, messages[2]]) == (
            False, False)
    assert not [q for q in queries.captured_queries if "UPDATE" in q["sql"]]
    assert set(Run.objects.values_list("status", "worker")) == {("queued", "")}


def test_wake_ups_popped_together_with_a_run_that_may_not_start_go_one_by_one():
    worker = Worker(name="w", manage_connections=False, background_outcomes=False)
    task = Task.objects.create(name="solo", schedule="* * * * *", allow_overlap=False)
    now = timezone.now()
    running, blocked = (Run.objects.create(task=task, task_name="exec.mark", args=[f"x{i}"],
                                           channel="sisy.run_task", not_before=now,
                                           scheduled_for=now + timedelta(seconds=i),
                                           exclusive=True) for i in range(2))
    Run.objects.filter(pk=running.pk).update(status="running", worker="other")
    free = tasks.mark.delay("free")
    messages = [{"type": "sisy.run", "run": run.pk, "name": "exec.mark"}
                for run in (blocked, free)]
    assert worker._handle_many(messages) == (True, True)  # the first wake-up: a drain follows
    assert {r.pk: r.status for r in Run.objects.all()} == {
        running.pk: "running", blocked.pk: "skipped", free.pk: "succeeded"}
    assert list(Mark.objects.values_list("token", flat=True)) == ["free"]


def test_a_worker_skips_the_drain_after_a_wake_up_of_a_run_it_already_ran():
    worker = Worker(name="w", manage_connections=False)
    run = tasks.add.delay(1, 1)
    assert worker.drain() == 1
    assert worker._ran_lately({"type": "sisy.run", "run": run.pk, "name": run.task_name})
    assert not worker._ran_lately({"type": "sisy.run", "run": run.pk + 1, "name": "x"})
    assert not worker._ran_lately({"type": "sisy.run", "run": "1"})
    assert not worker._ran_lately(["garbage"])


def test_a_drain_claims_as_many_runs_as_end_within_claim_ahead():
    worker = Worker(name="w", manage_connections=False, batch_size=10)
    assert worker.claim_limit() == 1  # nothing timed yet
    worker.note_duration(0.001)
    assert (worker.seconds_per_run, worker.claim_limit()) == (0.001, 10)
    worker.note_duration(0.051)  # one slow run moves the mean by a fifth of the gap
    assert (round(worker.seconds_per_run, 6), worker.claim_limit()) == (0.011, 4)
    for _ in range(20):
        worker.note_duration(0.5)
    assert worker.claim_limit() == 1
    runs = [tasks.mark.delay(f"slow-{i}") for i in range(3)]
    with CaptureQueriesContext(connection) as queries:
        assert worker.drain() == 3
    claims = [q["sql"] for q in queries if "RETURNING" in q["sql"] and "LIMIT" in q["sql"]
              and "NOT exclusive" in q["sql"]]  # batch claims (not the looks for exclusive runs)
    assert len(claims) == 4  # one run per claim, and a last one that finds none
    assert all(Run.objects.get(pk=r.pk).status == "succeeded" for r in runs)


def test_a_stopping_worker_puts_claimed_runs_it_has_not_started_back():
    runs = [tasks.mark.delay(f"stop-{i}") for i in range(5)]
    worker = Worker(name="stopper", manage_connections=False)
    worker.seconds_per_run = 0.0  # short runs: the drain claims all five at once
    original = worker._run_claimed

    def run_one_then_stop(run):
        original(run)
        worker.stop_event.set()

    worker._run_claimed = run_one_then_stop
    assert worker.drain() == 1
    statuses = [Run.objects.get(pk=r.pk).status for r in runs]
    assert statuses == ["succeeded", "queued", "queued", "queued", "queued"]
    assert set(Run.objects.filter(status="queued").values_list("worker", flat=True)) == {""}


def test_after_a_database_error_a_worker_requeues_claims_it_never_heard_back_about():
    lost, held = tasks.add.delay(1), tasks.add.delay(2)
    worker = Worker(name="auditor", manage_connections=False)
    # The claim of `lost` committed but its answer never arrived; `held` is in hand.
    Run.objects.filter(pk=lost.pk).update(status="running", worker="auditor")
    worker._claim(claim, held.pk, "auditor")
    assert worker.recover_own_claims() == 1
    assert Run.objects.get(pk=lost.pk).status == "queued"
    assert Run.objects.get(pk=held.pk).status == "running"


def test_a_message_fired_ahead_is_started_at_its_slot_not_before():
    slot = timezone.now() + timedelta(milliseconds=200)
    run = tasks.add.using(run_after=slot).delay(1)
    worker = Worker(name="w", manage_connections=False)
    message = {"type": "sisy.run", "run": run.pk, "name": run.task_name, "at": slot.timestamp()}
    assert worker.handle_message(message) is True
    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.started_at >= slot


@pytest.mark.parametrize("at", ["soon", None, True, float("nan")])
def test_a_malformed_at_is_ignored(at):
    run = tasks.add.delay(1)
    message = {"type": "sisy.run", "run": run.pk, "name": run.task_name, "at": at}
    assert Worker(name="w", manage_connections=False).handle_message(message) is True


def test_a_run_claimed_ahead_goes_back_when_the_worker_stops_before_its_slot():
    slot = timezone.now() + timedelta(milliseconds=500)
    run = tasks.add.using(run_after=slot).delay(1)
    worker = Worker(name="w", manage_connections=False)
    worker.stop_event.set()
    message = {"type": "sisy.run", "run": run.pk, "name": run.task_name, "at": slot.timestamp()}
    assert worker.handle_message(message) is False
    run.refresh_from_db()
    assert (run.status, run.worker, run.started_at) == ("queued", "", None)


def test_a_due_standing_slot_is_not_held_back_by_a_backlog_of_one_shot_runs():
    backlog = [tasks.mark.delay(f"backlog-{i}") for i in range(25)]
    row = Task.objects.create(name="slot-task", schedule="* * * * *", allow_overlap=False)
    now = timezone.now()
    slot = Run.objects.create(task=row, task_name="exec.mark", args=["slot"],
                              channel="sisy.run_task", scheduled_for=now, not_before=now,
                              exclusive=True)
    order = []
    worker = Worker(name="w", manage_connections=False)
    original = worker._run_claimed

    def record(run, prepared=None):
        order.append(run.pk)
        original(run, prepared)

    worker._run_claimed = record
    assert worker.drain(exclusive=False) == 26
    assert order.index(slot.pk) <= 10  # after at most one batch, not after all 25
    assert order[-1] == backlog[-1].pk


@pytest.mark.postgres
def test_once_a_batch_held_runs_of_standing_tasks_the_next_claims_mark_their_tasks():
    """The first batch of runs of standing tasks (that allow overlap) sets each task's
    ``running`` flag in a statement of its own; the claims after it set the flags of
    their whole batch, and the flags are cleared once the runs are done."""
    now = timezone.now()
    runs = [Run.objects.create(
        task=Task.objects.create(name=f"free-{i}", schedule="* * * * *"),
        task_name="exec.mark", args=[f"free-{i}"], channel="sisy.run_task",
        scheduled_for=now, not_before=now) for i in range(25)]
    worker = Worker(name="w", manage_connections=False)
    worker.seconds_per_run = 0.001  # short runs: ten per batch
    with CaptureQueriesContext(connection) as queries:
        assert worker.drain() == 25
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    marks = [sql for sql in statements if sql.startswith("UPDATE sisy_task SET running")]
    batches = [sql.split()[0] for sql in statements if "NOT exclusive" in sql]
    assert len(marks) == 10
    assert batches == ["UPDATE", "WITH", "WITH"]  # 10, 10, 5 runs: caught up
    assert Run.objects.filter(pk__in=[run.pk for run in runs], status="succeeded").count() == 25
    assert not Task.objects.filter(running=True).exists()


def _slots_that_forbid_overlap(count: int) -> list[Run]:
    """``count`` due runs of ``exec.mark``, each of a standing task of its own that forbids
    overlap, as the scheduler queues them."""
    now = timezone.now()
    return [Run.objects.create(
        task=Task.objects.create(name=f"slot-{i}", schedule="* * * * *", allow_overlap=False),
        task_name="exec.mark", args=[f"slot-{i}"], channel="sisy.run_task", scheduled_for=now,
        not_before=now, exclusive=True) for i in range(count)]


@pytest.mark.parametrize("every, looks", [(3600, 2), (0, 5)])
def test_a_draining_worker_looks_for_runs_that_forbid_overlap_at_most_every_so_often(
        monkeypatch, every, looks):
    """Before a batch only if its last look found one, or found none EXCLUSIVE_EVERY ago."""
    monkeypatch.setattr("sisy.worker.EXCLUSIVE_EVERY", every)
    backlog = [tasks.mark.delay(f"backlog-{i}") for i in range(45)]
    slots = _slots_that_forbid_overlap(2)
    worker = Worker(name="w", manage_connections=False)
    worker.seconds_per_run = 0.001  # short runs: ten per batch
    calls, order = [], []
    claim_, run_claimed = worker._claim, worker._run_claimed
    monkeypatch.setattr(worker, "_claim", lambda func, *a, **k: calls.append(
        func.__name__) or claim_(func, *a, **k))
    monkeypatch.setattr(worker, "_run_claimed", lambda run, prepared=None: order.append(
        run.pk) or run_claimed(run, prepared))
    assert worker.drain() == 47
    # Both slots are found by a look before a batch; a look that found some looks again.
    assert order[:2] == [slots[0].pk, slots[1].pk]
    assert calls.count("claim_exclusive") == looks
    assert calls.count("claim_batch") == 5  # 10 + 10 + 10 + 10 + 5: caught up
    assert sorted(order) == sorted(run.pk for run in backlog + slots)


def test_runs_that_forbid_overlap_and_the_others_share_a_drain(monkeypatch):
    """Runs that forbid overlap come first in each batch, the others fill what they left
    of the limit, and at least one of the others rides along with each batch of them."""
    slots = _slots_that_forbid_overlap(4)
    backlog = [tasks.mark.delay(f"backlog-{i}") for i in range(3)]
    worker = Worker(name="w", manage_connections=False)
    worker.seconds_per_run = 0.02  # two per batch (CLAIM_AHEAD 50 ms)
    monkeypatch.setattr(worker, "note_duration", lambda seconds: None)
    order = []
    run_claimed = worker._run_claimed
    monkeypatch.setattr(worker, "_run_claimed", lambda run, prepared=None: order.append(
        run.pk) or run_claimed(run, prepared))
    assert worker.claim_limit() == 2
    assert worker.drain() == 7
    s, b = [run.pk for run in slots], [run.pk for run in backlog]
    assert order == [s[0], s[1], b[0], s[2], s[3], b[1], b[2]]


@pytest.mark.parametrize("every, batches", [(3600, 2), (0, 5)])
def test_while_runs_that_forbid_overlap_are_drained_an_empty_batch_claim_waits(
        monkeypatch, every, batches):
    """A batch claim reads past every queued run that forbids overlap: once one found
    nothing, the next is skipped for EXCLUSIVE_EVERY while such runs are found one by
    one (the last, which finds nothing of either kind, ends the drain)."""
    monkeypatch.setattr("sisy.worker.EXCLUSIVE_EVERY", every)
    slots = _slots_that_forbid_overlap(4)
    worker = Worker(name="w", manage_connections=False)
    worker.seconds_per_run = 1.0  # long runs: claimed one at a time
    calls = []
    claim_ = worker._claim
    monkeypatch.setattr(worker, "_claim", lambda func, *a, **k: calls.append(
        func.__name__) or claim_(func, *a, **k))
    assert worker.drain() == 4
    assert calls.count("claim_exclusive") == 5
    assert calls.count("claim_batch") == batches
    assert set(Run.objects.filter(pk__in=[run.pk for run in slots]).values_list(
        "status", flat=True)) == {"succeeded"}


def test_a_drain_stops_once_a_batch_comes_back_less_than_full(monkeypatch):
    """It has caught up: runs queued from then on are taken through their wake-ups,
    several per pop, not by claims of a run or two racing the producer."""
    first = [tasks.mark.delay(f"first-{i}") for i in range(5)]
    worker = Worker(name="w", manage_connections=False)
    worker.seconds_per_run = 0.001  # short runs: ten per batch
    later, budget = [], [5]
    run_claimed = worker._run_claimed

    def run_and_enqueue(run, prepared=None):
        run_claimed(run, prepared)
        if budget[0] > 0:  # a producer keeps going
            budget[0] -= 1
            later.append(tasks.mark.delay(f"later-{len(later)}"))

    monkeypatch.setattr(worker, "_run_claimed", run_and_enqueue)
    assert worker.drain() == 5
    assert set(Run.objects.filter(status="succeeded").values_list("pk", flat=True)) == {
        run.pk for run in first}
    assert set(Run.objects.filter(status="queued").values_list("pk", flat=True)) == {
        run.pk for run in later}
    # While receiving fails no wake-up comes: it goes on until a claim finds nothing.
    budget[0] = 3
    assert worker.drain(wakeups=False) == 8
    assert len(later) == 8 and not Run.objects.filter(status="queued").exists()
    # A batch of one is full while the worker has not timed a run: it goes on until empty.
    budget[0] = 0
    more = [tasks.mark.delay(f"more-{i}") for i in range(3)]
    worker.seconds_per_run = None
    assert worker.claim_limit() == 1
    assert worker.drain() == 3
    assert set(Run.objects.filter(pk__in=[run.pk for run in more]).values_list(
        "status", flat=True)) == {"succeeded"}


@pytest.mark.django_db(transaction=True)
def test_a_busy_worker_still_looks_at_the_table_every_poll_interval(monkeypatch):
    """A lost wake-up is found by the poll even when other messages never stop coming."""
    import asyncio
    import threading

    class BusyLayer:
        async def receive(self, channel):
            await asyncio.sleep(0.01)
            return {"type": "sisy.run", "run": 10**9, "name": "not.this"}

    monkeypatch.setattr("sisy.worker.channel_layers.make_backend", lambda alias: BusyLayer())
    # A standing task's slot (exclusive) whose wake-up is lost: the layer never delivers it.
    row = Task.objects.create(name="busy-slot", schedule="* * * * *", allow_overlap=False)
    now = timezone.now()
    run = Run.objects.create(task=row, task_name="tests.testapp.tasks.add", args=[2, 2],
                             channel="sisy.run_task", scheduled_for=now, not_before=now,
                             exclusive=True)
    worker = Worker(name="busy", poll_interval=0.2)
    thread = threading.Thread(target=worker._consume_layer, args=("sisy.run_task",))
    thread.start()
    try:
        assert run.wait(timeout=5) == 4
    finally:
        worker.stop_event.set()
        thread.join(timeout=5)


@pytest.mark.django_db(transaction=True)
def test_while_receiving_fails_the_poll_drains_until_the_table_is_empty(monkeypatch, caplog):
    """No wake-up comes while the layer is away: the poll's drain does not stop when
    it has caught up, as it does while wake-ups come."""
    import threading

    class BrokenLayer:
        async def receive(self, channel):
            raise ConnectionError("Redis is away")

    monkeypatch.setattr("sisy.worker.channel_layers.make_backend", lambda alias: BrokenLayer())
    monkeypatch.setattr("sisy.worker.MAX_BACKOFF", 0.1)
    worker = Worker(name="cut-off", poll_interval=0.05)
    drains = []
    drain = worker.drain
    monkeypatch.setattr(worker, "drain", lambda **kw: drains.append(kw) or drain(**kw))
    thread = threading.Thread(target=worker._consume_layer, args=("sisy.run_task",))
    thread.start()
    try:
        run = tasks.add.delay(2, 3)
        assert run.wait(timeout=5) == 5
    finally:
        worker.stop_event.set()
        thread.join(timeout=5)
        if worker._outcomes is not None:
            worker._outcomes.close(timeout=5)  # and its connection
    assert {"wakeups": False} in drains
    assert "could not receive on sisy.run_task: ConnectionError('Redis is away')" in caplog.text


@pytest.mark.redis
def test_a_standing_slot_wake_up_jumps_the_queue_of_one_shot_wake_ups(settings):
    import asyncio

    from sisy.dispatch import sender

    layer = _redis_layer(settings, prefix="sisy-prio-test")
    asyncio.run(layer.flush())  # nothing left from an earlier run of this test
    one_shots = [("sisy.prio", {"type": "sisy.run", "run": i, "name": "x"}) for i in range(5)]
    sender.send(layer, one_shots)
    assert sender.flush(timeout=5)
    sender.send(layer, [("sisy.prio", {"type": "sisy.run", "run": 99, "name": "slot",
                                       "at": 1.0})])
    assert sender.flush(timeout=5)

    async def first_two():
        return [await layer.receive("sisy.prio"), await layer.receive("sisy.prio")]

    first, second = asyncio.run(first_two())
    assert first["run"] == 99  # sent last, received first
    assert second["run"] in range(5)  # the one-shots of one batch share a score


# -- the hot paths: .delay()'s INSERT, claims and outcome writes --------------------------

def test_delay_returns_the_run_exactly_as_stored():
    run = tasks.add.delay(4, b=5)
    stored = Run.objects.get(pk=run.pk)
    for field in Run._meta.concrete_fields:
        assert getattr(run, field.attname) == getattr(stored, field.attname), field.name
    assert not run._state.adding and run._state.db == "default"


def test_hot_statements_show_in_captured_queries():
    """Under DEBUG or CaptureQueriesContext they go through Django's cursor like any query."""

    with CaptureQueriesContext(connection) as queries:
        tasks.add.delay(1, 2)
        assert drain() == 1
    statements = [query["sql"].split(" ", 2)[:2] for query in queries.captured_queries]
    assert ["INSERT", "INTO"] in statements
    assert statements.count(["UPDATE", "sisy_run"]) >= 2  # the claim and the outcome
    assert Run.objects.get().result == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_wake_ups_claimed_together_are_found_by_primary_key_whatever_the_statistics():
    """Statistics taken while the table was empty, then thousands of runs queued (a
    burst before autovacuum analyses the table): the runs named by wake-ups popped
    together are still looked up by primary key, not by scanning the queue's index,
    and a wake-up naming a run with the wrong task name claims nothing."""
    from sisy.execution import claim_wakeups

    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Run._meta.db_table}")
    with transaction.atomic():
        runs = [tasks.mark.delay(f"t{i}") for i in range(3000)]
    named = [(run.pk, run.task_name) for run in runs[1500:1507]]
    wrong = runs[1507]
    with CaptureQueriesContext(connection) as queries:
        claimed = claim_wakeups(named + [(wrong.pk, "os.system")], ["sisy.run_task"], "w")
    [sql] = [q["sql"] for q in queries.captured_queries if "AS named" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "sisy_run_pkey" in plan and "sisy_run_queued" not in plan, plan
    assert [run.pk for run in claimed] == [pk for pk, _ in named]
    assert Run.objects.get(pk=wrong.pk).status == "queued"
    assert Run.objects.filter(status="running").count() == 7
    # A lone wake-up's claim, too; and one with the wrong name claims nothing.
    lone = runs[2000]
    with CaptureQueriesContext(connection) as queries:
        assert claim(lone.pk, "w", name="os.system") is None
        assert claim(lone.pk, "w", name=lone.task_name).pk == lone.pk
    for query in queries.captured_queries:
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + query["sql"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "sisy_run_pkey" in plan and "sisy_run_queued" not in plan, plan
        assert "sisy_run_task_name" not in plan, plan
    assert Run.objects.filter(status="running").count() == 8


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_hands_plain_successes_to_its_outcome_writer():
    """Successes are written from the writer thread; failures before the worker goes on."""

    import sisy.backends  # noqa: F401  its receivers listen to its own tasks only

    assert not signals.run_finished.has_listeners(tasks.add)
    ok = [tasks.add.delay(i, 1) for i in range(5)]
    bad = tasks.fail.delay("no")
    worker = Worker(["sisy.run_task"], name="bg")
    assert worker._outcomes is not None
    assert worker.drain() == 6
    assert Run.objects.get(pk=bad.pk).status == "failed"  # stored by the worker itself
    assert worker._outcomes.flush(timeout=10)
    assert sorted(Run.objects.filter(pk__in=[r.pk for r in ok]).values_list(
        "status", "result", "worker")) == [("succeeded", i + 1, "bg") for i in range(5)]
    assert worker._held == set()
    # A run whose outcome is still being written is not put back by the claims audit.
    run = tasks.add.delay(7)
    [claimed] = worker._claim(claim, run.pk, "bg")
    with transaction.atomic():
        # The writer's UPDATE of this row waits for our lock until the block ends.
        Run.objects.select_for_update().get(pk=run.pk)
        worker._run_claimed(claimed)
        assert worker._held == {run.pk}
        assert worker.recover_own_claims() == 0
    assert worker._outcomes.flush(timeout=10)
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert worker._held == set()
    worker._outcomes.close(timeout=10)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        assert cursor.fetchone() == ("on",)


def _spy_on_store_outcomes(monkeypatch) -> list[list[int]]:
    """The runs of each ``store_outcomes()`` call from now on, by primary key."""
    from sisy import execution

    calls = []
    real = execution.store_outcomes

    def spy(runs):
        calls.append(sorted(run.pk for run in runs))
        return real(runs)

    monkeypatch.setattr(execution, "store_outcomes", spy)
    return calls


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_writes_the_outcomes_of_a_claimed_batch_together_after_its_last_run(
        monkeypatch):
    """Each statement commits, and a commit costs as much as the write: a batch's
    outcomes wait for its last run (at most CLAIM_AHEAD) and go in one statement."""
    statements = _spy_on_store_outcomes(monkeypatch)
    runs = [tasks.mark.delay(f"b{i}", sleep=0.005) for i in range(4)]
    worker = Worker(["sisy.run_task"], name="bg")
    worker.seconds_per_run = 0.005  # short runs: claimed ten at a time
    assert worker.claim_limit() == 10
    assert worker.drain() == 4
    assert worker._outcomes.flush(timeout=10)
    # Without gathering, the writer takes the first outcome while the second run sleeps.
    assert statements == [sorted(run.pk for run in runs)]
    assert list(Run.objects.order_by("pk").values_list("status", "worker")) == [
        ("succeeded", "bg")] * 4
    assert worker._held == set()
    # A run claimed alone is handed over at once.
    lone = tasks.mark.delay("lone")
    worker._run_all(worker._claim(claim, lone.pk, "bg"))
    assert worker._outcomes.flush(timeout=10)
    assert statements[1:] == [[lone.pk]]
    worker._outcomes.close(timeout=10)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_standing_runs_outcomes_go_to_the_writer_unless_their_task_forbids_overlap(
        monkeypatch):
    """A standing task's run that may overlap is written by the writer thread with the
    rest of its batch, its task's ``running`` flag cleared by the same statement; those
    of tasks that forbid overlap (standing or one-shot) are written by the worker's
    thread, together at the end of their batch, before it claims more (the next run of a
    task must not find the last still running)."""
    from sisy import execution

    events = []
    store_outcomes = execution.store_outcomes
    monkeypatch.setattr(execution, "store_outcomes", lambda runs: events.append(
        (threading.current_thread().name, sorted(run.pk for run in runs)))
        or store_outcomes(runs))
    now = timezone.now()
    free = [Task.objects.create(name=f"free-{i}", schedule="* * * * *") for i in range(2)]
    solo = [Task.objects.create(name=f"solo-{i}", schedule="* * * * *", allow_overlap=False)
            for i in range(2)]
    runs = [Run.objects.create(task=row, task_name="tests.testapp.tasks.add", args=[i],
                               channel="sisy.run_task", scheduled_for=now, not_before=now,
                               exclusive=row in solo)
            for i, row in enumerate([*free, *solo])]
    one_shot, solo_one_shot = tasks.add.delay(7), tasks.solo_job.delay("8")
    worker = Worker(["sisy.run_task"], name="bg")
    worker.seconds_per_run = 0.001  # short runs: claimed ten at a time
    claim_ = worker._claim
    monkeypatch.setattr(worker, "_claim", lambda func, *a, **k: events.append(
        func.__name__) or claim_(func, *a, **k))
    assert worker.drain() == 6
    assert worker._outcomes.flush(timeout=10)
    main = threading.current_thread().name
    assert [event for event in events if event[0] != "sisy-outcomes"] == [
        "claim_exclusive", "claim_batch", (main, [runs[2].pk, runs[3].pk, solo_one_shot.pk]),
        "claim_exclusive", "claim_batch"]
    assert ("sisy-outcomes", sorted([runs[0].pk, runs[1].pk, one_shot.pk])) in events
    assert set(Run.objects.values_list("status", "result")) == {
        ("succeeded", 0), ("succeeded", 1), ("succeeded", 2), ("succeeded", 3),
        ("succeeded", 7), ("succeeded", "8")}
    assert list(Task.objects.filter(running=True)) == []
    assert worker._held == set()
    worker._outcomes.close(timeout=10)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_gathered_outcomes_are_handed_over_when_the_block_ends_even_by_an_error():
    import threading

    from sisy.execution import claim_batch
    from sisy.outcomes import OutcomeWriter

    for i in range(3):
        tasks.add.delay(i)
    first, second, third = claim_batch(["sisy.run_task"], "w", limit=3)
    for run in (first, second, third):
        run.status, run.result, run.finished_at = "succeeded", run.pk, timezone.now()
    writer = OutcomeWriter()
    with pytest.raises(RuntimeError, match="in the middle"), writer.gathering():
        writer.put(first)
        with writer.gathering():  # nested: one batch, handed over by the outer block
            writer.put(second)
        other = threading.Thread(target=writer.put, args=(third,))  # not this thread's
        other.start()
        other.join()
        assert writer.flush(timeout=10)
        assert dict(Run.objects.values_list("pk", "status")) == {
            first.pk: "running", second.pk: "running", third.pk: "succeeded"}
        raise RuntimeError("in the middle")
    assert writer.flush(timeout=10)
    assert set(Run.objects.values_list("status", flat=True)) == {"succeeded"}
    # Closed while a block gathers (a worker stopping): the block's end writes them itself.
    late = tasks.add.delay(1)
    [claimed] = claim_batch(["sisy.run_task"], "w", limit=1)
    claimed.status, claimed.result, claimed.finished_at = "succeeded", 9, timezone.now()
    with writer.gathering():
        writer.put(claimed)
        writer.close(timeout=10)
        assert Run.objects.get(pk=late.pk).status == "running"
    assert Run.objects.get(pk=late.pk).status == "succeeded"
    with pytest.raises(RuntimeError, match="This OutcomeWriter is closed."):
        writer.put(first)


def test_without_postgresql_or_connection_care_outcomes_are_written_in_line():
    assert Worker(name="w", manage_connections=False)._outcomes is None
    assert Worker(name="w", background_outcomes=False)._outcomes is None
    expected = connection.vendor == "postgresql"
    assert (Worker(name="w")._outcomes is not None) is expected


@pytest.mark.django_db(transaction=True)
def test_an_embedded_worker_notices_other_connections_commits_by_data_version():
    import sqlite3

    if connection.vendor != "sqlite":
        pytest.skip("PRAGMA data_version is SQLite's; PostgreSQL workers are woken by Redis")
    worker = Worker(name="w", manage_connections=False)
    before = worker._data_version()
    tasks.add.delay(1)  # this connection's own commit does not count
    assert worker._data_version() == before
    other = sqlite3.connect(connection.settings_dict["NAME"])
    try:
        other.execute("UPDATE sisy_run SET progress_note = 'touched'")
        other.commit()
    finally:
        other.close()
    assert worker._data_version() != before


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_outcomes_waiting_together_are_written_in_one_statement(sisy_settings):
    from sisy.execution import claim_batch, store_outcomes

    for i in range(3):
        tasks.add.delay(i)
    runs = claim_batch(["sisy.run_task"], "w", limit=3)
    assert len(runs) == 3
    Run.objects.filter(pk=runs[1].pk).update(worker="someone-else")  # settled by another
    now = timezone.now()
    for run, result in zip(runs, (10, None, {"a": [1]}), strict=True):
        run.status, run.result, run.finished_at = "succeeded", result, now
    with CaptureQueriesContext(connection) as queries:
        written = store_outcomes(runs)
    assert written == {runs[0].pk, runs[2].pk}
    assert len(queries.captured_queries) == 1
    assert sorted(Run.objects.values_list("pk", "status", "result", "worker")) == [
        (runs[0].pk, "succeeded", 10, "w"),
        (runs[1].pk, "running", None, "someone-else"),
        (runs[2].pk, "succeeded", {"a": [1]}, "w"),
    ]
    assert Run.objects.get(pk=runs[0].pk).finished_at == now
    # The same through psycopg's own cursor (nothing captures queries), durable or not.
    for durable in (False, True):
        sisy_settings(DURABLE_RESULTS=durable)
        more = [tasks.add.delay(i) for i in range(2)]
        claimed = claim_batch(["sisy.run_task"], "w", limit=2)
        for run in claimed:
            run.status, run.result, run.finished_at = "succeeded", run.pk, now
        assert store_outcomes(claimed) == {run.pk for run in more}
        assert sorted(Run.objects.filter(pk__in=[r.pk for r in more]).values_list(
            "status", "result")) == sorted(("succeeded", r.pk) for r in more)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        assert cursor.fetchone() == ("on",)


# -- the run table's indexes ----------------------------------------------------------------

def test_a_one_shot_run_is_only_in_the_indexes_every_run_needs():
    """Partial indexes keep a queue write cheap: a one-shot run has no task, no
    retry and no finish time, so only the id, name and status indexes hold it."""
    if connection.vendor == "postgresql":
        sql = "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s"
    else:
        sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [Run._meta.db_table])
        indexes = {name: " WHERE " in (definition or "") for name, definition in cursor}
    indexes.pop("sisy_run_pkey", None)  # PostgreSQL's primary key; SQLite's is the table
    assert indexes == {
        "sisy_run_task_name": False,
        "sisy_run_queued": True, "sisy_run_queued_exclusive": True,
        "sisy_run_running": True, "sisy_run_by_task": True,
        "sisy_run_finished": True, "sisy_run_retries": True,
        "sisy_run_one_per_slot": True, "sisy_run_no_overlap": True,
        "sisy_run_no_overlap_one_shot": True,
    }


@pytest.mark.postgres
def test_lookups_by_task_retry_finish_time_and_exclusivity_use_the_partial_indexes():
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    plans = {
        "sisy_run_by_task": Run.objects.filter(task_id__in=[1, 2]).order_by(),
        "sisy_run_retries": Run.objects.filter(retry_of_id=1).order_by(),
        "sisy_run_finished": Run.objects.filter(finished_at__lt=timezone.now()).order_by(),
        "sisy_run_queued_exclusive": Run.objects.filter(
            status="queued", exclusive=True, not_before__lte=timezone.now(),
        ).order_by("not_before", "id"),
    }
    for index, queryset in plans.items():
        assert index in queryset.explain(), (index, queryset.explain())


# -- prepared statements ----------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_hot_statements_are_prepared_only_when_the_connection_asks_for_it(sisy_settings):
    """``.delay()``'s INSERT follows ``OPTIONS["prepare_threshold"]``: Django's default
    (None) prepares nothing, so PgBouncer in transaction mode keeps working. The
    worker's claims and outcome writes are never prepared: a plan kept from when the
    queue table was small would read the whole table once it has grown."""
    from sisy.execution import claim_batch, claim_exclusive, store_outcomes

    def prepared() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements ORDER BY statement")
            return [" ".join(row[0].split()[:4]) for row in cursor.fetchall()]

    def one_cycle():  # the insert, both claims, and both ways of writing outcomes
        made = [tasks.add.delay(i) for i in range(3)]
        assert claim_exclusive(["sisy.run_task"], "w") == []
        claimed = claim_batch(["sisy.run_task"], "w", limit=3)
        for run in claimed:
            run.status, run.result, run.finished_at = "succeeded", run.pk, timezone.now()
        written = store_outcomes(claimed[:1]) | store_outcomes(claimed[1:])
        assert written == {run.pk for run in made}

    one_cycle()
    assert prepared() == []
    connection.connection.prepare_threshold = 0  # what OPTIONS={"prepare_threshold": 0} sets
    try:
        one_cycle()
        one_cycle()
        assert prepared() == ["INSERT INTO sisy_run (task_name,"]
        assert Run.objects.filter(status="succeeded").count() == 9
    finally:
        connection.close()  # a new connection gets the settings' threshold back

