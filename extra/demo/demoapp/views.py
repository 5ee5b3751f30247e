"""The demo's pages: a home page that polls ``state/`` and buttons that queue runs."""

from datetime import timedelta

from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from demoapp.models import Plant
from demoapp.tasks import greet, long_job
from sisy.conf import get_settings
from sisy.models import Run, Task, task_with_callable
from sisy.sources import explain

LATEST_RUNS = 15


@require_GET
def home(request):
    return render(request, "demoapp/home.html")


@require_POST
def start_long_job(request):
    run = long_job.delay(steps=20)  # .delay() from a view: returns the queued Run at once
    return JsonResponse({"run": run.pk})


@require_POST
def start_greet(request):
    run = greet.delay("world")
    return JsonResponse({"run": run.pk})


@require_POST
def start_greet_later(request):
    # using(run_after=...) returns a copy of the task whose .delay() waits this long.
    run = greet.using(run_after=timedelta(seconds=10)).delay("later")
    return JsonResponse({"run": run.pk})


@require_POST
def add_basil(request):
    """The 2017 API at run time: a standing task that calls a method of one model object."""
    basil = Plant.objects.create(name=f"Basil {Plant.objects.count()}")
    task = task_with_callable(basil.water, label=f"Water {basil}", schedule="* * * * * */20")
    task.save()  # the unsaved Task starts once it is saved
    return JsonResponse({"task": task.pk})


@require_GET
def state(request):
    """Everything the home page shows, as JSON (the page asks every 500 ms).

    ``?watch=<run id>`` adds that run as ``watched`` (the long job's progress bar).
    """
    watched = Run.objects.filter(pk=request.GET.get("watch") or None).first()
    return JsonResponse({
        "watched": _run(watched) if watched else None,
        "tasks": [_task(row) for row in Task.objects.all()],
        "runs": [_run(run) for run in Run.objects.order_by("-pk")[:LATEST_RUNS]],
        "plants": [
            {"name": p.name, "waterings": p.waterings, "last_watered": _iso(p.last_watered)}
            for p in Plant.objects.all()
        ],
    })


def _task(row):
    info = explain(row, get_settings())
    return {
        "name": str(row),
        "schedule": row.schedule,
        "source": info.schedule_source,
        "enabled": info.switched_on,
        "why": info.why,
        "next_run": _iso(row.next_run) if info.switched_on else None,
        "last_run": _iso(row.last_run),
    }


def _run(run):
    duration = run.duration
    return {
        "id": run.pk,
        "task": run.task_name,
        "status": run.status,
        "scheduled_for": _iso(run.scheduled_for),
        "duration": None if duration is None else round(duration.total_seconds(), 3),
        "result": run.result,
        "error": run.error.partition("\n")[0],
        "progress": {"done": run.progress_done, "total": run.progress_total,
                     "note": run.progress_note},
    }


def _iso(value):
    return value.isoformat() if value else None
