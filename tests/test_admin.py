"""The admin as the operator's console: pages, actions, the progress endpoint, permissions.

Given tasks and runs in each state, when an operator (or a view-only staff
user) uses the admin, expect the page to say what the row is and why, and
actions to change exactly what they say — and nothing without permission.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from sisy.models import Run, Task, task_with_callable
from sisy.sync import sync_tasks

pytestmark = pytest.mark.django_db

TASKS = "/admin/sisy/task/"
RUNS = "/admin/sisy/run/"


@pytest.fixture(autouse=True)
def synced():
    Task.objects.all().delete()
    sync_tasks()


@pytest.fixture
def operator(client):
    user = User.objects.create_superuser("operator", "op@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def viewer(client):
    """Staff with the view permissions only."""
    user = User.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label="sisy", codename__startswith="view_"))
    client.force_login(user)
    return client


def code_task(name="reports.daily") -> Task:
    return Task.objects.get(name=name)


def seed_task(label="seed row") -> Task:
    task = task_with_callable("tests.testapp.tasks.seed_counter", label=label,
                              schedule="*/10 * * * *")
    task.save()
    return task


def make_run(task=None, status="succeeded", **fields) -> Run:
    now = timezone.now()
    defaults = {
        "task": task, "task_name": task.name or task.label if task else "tests.testapp.tasks.add",
        "channel": "sisy.run_task", "scheduled_for": now, "not_before": now, "status": status,
    }
    defaults.update(fields)
    return Run.objects.create(**defaults)


def act(client, url, action, objs, follow=True):
    return client.post(url, {"action": action, "_selected_action": [o.pk for o in objs]},
                       follow=follow)


def text_of(response) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.content.decode()))


# -- task pages --------------------------------------------------------------------------

def test_task_list_shows_names_sources_switches_and_last_run(operator, sisy_settings):
    sisy_settings(TASKS={"reports.weekly": {"enabled": True, "schedule": "0 8 * * *"}})
    daily = code_task()
    started = timezone.now() - timedelta(seconds=3)
    make_run(daily, status="failed", started_at=started,
             finished_at=started + timedelta(seconds=1.5))
    Task.objects.filter(name="tests.testapp.tasks.every_five_minutes").update(paused=True)
    seed_task()
    page = text_of(operator.get(TASKS))
    for expected in ("reports.daily", "seed row", "0 7 * * *", "*/10 * * * *",
                     "paused by an operator", "on in settings", "✔ on",
                     ">failed</a> 1.50 s", "never"):
        assert expected in page, expected
    assert re.search(r"field-schedule_source\">settings<", page)  # reports.weekly
    assert re.search(r"field-schedule_source\">code<", page)
    assert re.search(r"field-schedule_source\">database<", page)


def test_task_page_lists_the_next_slots_and_says_where_to_change_code_fields(operator):
    daily = code_task()
    page = text_of(operator.get(f"{TASKS}{daily.pk}/change/"))
    slots = re.findall(r"<time datetime='([^']+)'>", page)
    assert len(slots) == 5
    assert all(s.endswith("07:00:00+00:00") for s in slots)
    assert "come from code (@sisy.periodic name='reports.daily'): change them there" in page
    assert 'name="schedule"' not in page  # owned by code: read-only
    assert 'name="paused"' in page  # the operator's switch stays editable


def test_a_database_rows_schedule_is_editable_and_settings_owned_fields_are_not(
        operator, sisy_settings):
    row = seed_task()
    page = text_of(operator.get(f"{TASKS}{row.pk}/change/"))
    assert 'name="schedule"' in page and "its fields are edited here" in page
    sisy_settings(TASKS={"reports.*": {"schedule": "0 9 * * *"}})
    page = text_of(operator.get(f"{TASKS}{code_task().pk}/change/"))
    assert "SISY['TASKS'] in settings overrides schedule" in page


def test_run_now_queues_a_run_of_the_task(operator):
    daily, seed = code_task(), seed_task()
    response = act(operator, TASKS, "run_now", [daily, seed])
    assert "Queued 2 runs." in text_of(response)
    assert set(Run.objects.values_list("task_id", "task_name", "status")) == {
        (daily.pk, "reports.daily", "queued"), (seed.pk, "seed row", "queued")}


def test_run_now_on_an_orphaned_task_is_refused_with_a_message(operator):
    daily = code_task()
    Task.objects.filter(pk=daily.pk).update(orphaned=True)
    page = text_of(act(operator, TASKS, "run_now", [daily]))
    assert ("Task reports.daily is orphaned: its code definition is gone, so no worker can "
            "run it.") in page
    assert not Run.objects.exists()


def test_pause_survives_sync_and_resume_schedules_again(operator):
    daily = code_task()
    assert "Paused 1 task." in text_of(act(operator, TASKS, "pause", [daily]))
    daily.refresh_from_db()
    assert (daily.paused, daily.next_run) == (True, None)
    sync_tasks()
    sync_tasks()
    daily.refresh_from_db()
    assert (daily.paused, daily.next_run) == (True, None)
    assert "Resumed 1 task." in text_of(act(operator, TASKS, "resume", [daily]))
    daily.refresh_from_db()
    assert daily.paused is False
    assert daily.next_run is not None and (daily.next_run.hour, daily.next_run.minute) == (7, 0)


def test_tasks_cannot_be_added_in_the_admin(operator):
    assert operator.get(f"{TASKS}add/").status_code == 403


# -- run pages --------------------------------------------------------------------------

def test_run_list_shows_duration_attempt_worker_and_filters(operator):
    daily = code_task()
    start = timezone.now() - timedelta(minutes=2)
    make_run(daily, status="failed", attempt=2, worker="host:1:abc", started_at=start,
             finished_at=start + timedelta(seconds=75))
    make_run(None, status="queued")
    page = text_of(operator.get(RUNS))
    assert "1:15 min" in page and "host:1:abc" in page and 'field-attempt">2<' in page
    failed = text_of(operator.get(RUNS, {"status__exact": "failed"}))
    assert "reports.daily" in failed and "sisy-queued" not in failed
    by_task = text_of(operator.get(RUNS, {"task_name": "tests.testapp.tasks.add"}))
    assert "sisy-queued" in by_task and "host:1:abc" not in by_task


def test_run_page_shows_arguments_result_and_a_readable_traceback(operator):
    ok = make_run(None, args=[1, 2], kwargs={"b": 3}, result={"sum": 6})
    page = text_of(operator.get(f"{RUNS}{ok.pk}/change/"))
    assert '"b": 3' in page and '"sum": 6' in page and "<progress value='1' max='1'" in page
    error = ('ValueError: boom\n\nTraceback (most recent call last):\n  File "x.py", line 1, '
             'in f\nValueError: boom\n')
    bad = make_run(None, status="failed", error=error, error_type="ValueError")
    page = operator.get(f"{RUNS}{bad.pk}/change/").content.decode()
    assert "<strong>ValueError: boom</strong>" in page
    assert ("<pre class='sisy-traceback'>Traceback (most recent call last):\n  File "
            "&quot;x.py&quot;, line 1, in f\nValueError: boom</pre>") in page


def test_a_running_run_has_a_progress_bar_that_polls_its_endpoint(operator):
    run = make_run(None, status="running", progress_done=3, progress_total=10,
                   progress_note="invoices", started_at=timezone.now())
    page = operator.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert "<progress value='3' max='10' data-sisy-progress>30%</progress>" in page
    url = f"{RUNS}{run.pk}/progress/"
    assert f'const url = "{url}"' in page.replace("\\u002D", "-").replace("\\u002F", "/")
    assert operator.get(url).json() == {
        "id": run.pk, "status": "running", "finished": False, "done": 3, "total": 10,
        "percent": 30, "note": "invoices", "text": "3/10 invoices", "duration": "—"}
    Run.objects.filter(pk=run.pk).update(progress_done=10, status="succeeded",
                                         finished_at=run.started_at + timedelta(seconds=2))
    assert operator.get(url).json() | {"duration": None} == {
        "id": run.pk, "status": "succeeded", "finished": True, "done": 10, "total": 10,
        "percent": 100, "note": "invoices", "text": "10/10 invoices", "duration": None}


def test_the_progress_endpoint_needs_a_staff_login(client):
    run = make_run(None, status="running")
    response = client.get(f"{RUNS}{run.pk}/progress/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_retry_failed_runs_queues_a_new_attempt_and_leaves_others(operator):
    failed = make_run(code_task(), status="failed", attempt=1, args=[1])
    done = make_run(None, status="succeeded")
    page = text_of(act(operator, RUNS, "retry", [failed, done]))
    assert "Queued a retry of 1 failed run." in page
    assert "1 run was not failed and was left alone." in page
    retry = Run.objects.get(retry_of=failed)
    assert (retry.status, retry.attempt, retry.args, retry.task_name) == (
        "queued", 2, [1], "reports.daily")


def test_cancel_queued_runs_only(operator):
    queued = make_run(None, status="queued")
    running = make_run(None, status="running")
    page = text_of(act(operator, RUNS, "cancel", [queued, running]))
    assert "Cancelled 1 queued run." in page
    assert "1 run was not queued (running or finished) and was left alone." in page
    queued.refresh_from_db()
    running.refresh_from_db()
    assert (queued.status, queued.error) == ("cancelled", "Cancelled in the admin by operator.")
    assert running.status == "running"


# -- permissions --------------------------------------------------------------------------

def test_a_view_only_staff_user_sees_everything_but_cannot_act(viewer):
    daily = code_task()
    failed = make_run(daily, status="failed", error="E: x\n\ntrace")
    queued = make_run(None, status="queued", progress_total=4, progress_done=1)
    for url in (TASKS, f"{TASKS}{daily.pk}/change/", RUNS, f"{RUNS}{failed.pk}/change/",
                f"{RUNS}{queued.pk}/change/"):
        assert viewer.get(url).status_code == 200, url
    assert viewer.get(f"{RUNS}{queued.pk}/progress/").json()["done"] == 1
    for url in (TASKS, RUNS):
        page = viewer.get(url).content.decode()
        assert 'name="action"' not in page  # no actions offered
    assert 'name="paused"' not in viewer.get(f"{TASKS}{daily.pk}/change/").content.decode()
    # Posting the actions anyway changes nothing.
    for url, action, objs in ((TASKS, "run_now", [daily]), (TASKS, "pause", [daily]),
                              (RUNS, "retry", [failed]), (RUNS, "cancel", [queued])):
        act(viewer, url, action, objs)
    daily.refresh_from_db()
    queued.refresh_from_db()
    assert daily.paused is False and queued.status == "queued"
    assert Run.objects.count() == 2
    assert viewer.post(f"{TASKS}{daily.pk}/change/", {"paused": "on"}).status_code == 403


def test_the_change_permission_is_what_allows_the_actions(client):
    user = User.objects.create_user("ops", "o@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(
        content_type__app_label="sisy", codename__in=["view_task", "change_task", "view_run"]))
    client.force_login(user)
    daily = code_task()
    assert "Queued 1 run." in text_of(act(client, TASKS, "run_now", [daily]))
    run = Run.objects.get()
    # change_task does not allow acting on runs.
    act(client, RUNS, "cancel", [run])
    run.refresh_from_db()
    assert run.status == "queued"
    user.user_permissions.add(Permission.objects.get(codename="change_run"))
    client.force_login(User.objects.get(pk=user.pk))
    assert "Cancelled 1 queued run." in text_of(act(client, RUNS, "cancel", [run]))


def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get(TASKS)
    assert response.status_code == 302 and "/login/" in response["Location"]
