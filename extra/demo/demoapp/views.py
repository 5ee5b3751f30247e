from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from demoapp.tasks import greet as greet_task
from sisy.models import Run, Task


def home(request):
    tasks = format_html_join(
        "", "<li>{} <code>{}</code> next: {}</li>",
        ((t, t.schedule, t.next_run or "-") for t in Task.objects.all()),
    )
    runs = format_html_join(
        "", "<li>#{} {} {} {}</li>",
        ((r.pk, r.task_name, r.status, r.result) for r in Run.objects.order_by("-pk")[:10]),
    )
    return HttpResponse(format_html(
        "<!doctype html><title>Sisy demo</title><h1>Sisy demo</h1>"
        "<form method=post action=greet/>"
        "<input type=hidden name=csrfmiddlewaretoken value={}>"
        "<button>greet.delay('world')</button></form>"
        "<h2>Standing tasks</h2><ul>{}</ul><h2>Latest runs</h2><ul>{}</ul>",
        get_token(request), tasks, runs,
    ))


@require_POST
def greet(request):
    greet_task.delay("world")
    return redirect("home")
