"""Sisy in Django's admin: the operator's console for tasks and runs.

Tasks show where each value comes from (code, settings or the database),
whether they may fire and why, and their next slots; an operator can run a
task now, pause it (a pause survives every sync) and resume it. Runs show
their arguments, result, traceback and a live progress bar; failed runs can
be retried and queued runs cancelled. Every action needs the model's change
permission, so a view-only staff user sees everything and changes nothing.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import ngettext

from sisy.conf import get_settings
from sisy.models import Run, Task
from sisy.sources import explain
from sisy.sync import CODE_FIELDS

__all__ = ["TaskAdmin", "RunAdmin", "run_task_now", "retry_run", "cancel_run"]

#: How many upcoming slots the task page lists.
NEXT_FIRES = 5

#: Fields no operator edits: bookkeeping written by the scheduler and workers.
_BOOKKEEPING = ("name", "source", "orphaned", "running", "last_run", "next_run", "func_info",
                "created_at", "modified_at")


def _duration(delta) -> str:
    if delta is None:
        return "—"
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d} min"


def _pretty_json(value) -> str:
    return format_html("<pre class='sisy-json'>{}</pre>",
                       json.dumps(value, indent=2, sort_keys=True, default=str))


# -- actions as plain functions (tests and other code can call them) ----------------------

def run_task_now(task: Task, *, now=None) -> Run:
    """Queue one run of ``task`` at once (outside its schedule); refuse an orphaned task."""
    from sisy.dispatch import wake

    if task.orphaned:
        raise ValueError(
            f"Task {task} is orphaned: its code definition is gone, so no worker can run it. "
            "Deploy the code that defines it, or delete the task."
        )
    now = now or timezone.now()
    conf = get_settings()
    overrides = conf.overrides_for(task.name) if task.name else {}
    run = Run.objects.create(
        task=task, task_name=task.name or task.label or str(task),
        channel=overrides.get("channel") or task.channel or conf.RUN_TASK_CHANNEL,
        scheduled_for=now, not_before=now, enqueued_at=now, sent_at=now,
        exclusive=not overrides.get("allow_overlap", task.allow_overlap),
    )
    transaction.on_commit(lambda: wake(run))
    return run


def retry_run(run: Run, *, now=None) -> Run:
    """Queue a new attempt of a failed run now; return it."""
    from sisy.dispatch import wake

    if run.status != Run.Status.FAILED:
        raise ValueError(f"Run {run.pk} is {run.status}; only failed runs can be retried.")
    now = now or timezone.now()
    retry = Run.objects.create(
        task=run.task, task_name=run.task_name, args=run.args, kwargs=run.kwargs,
        channel=run.channel, scheduled_for=run.scheduled_for, not_before=now, enqueued_at=now,
        sent_at=now, attempt=run.attempt + 1, retry_of=run, exclusive=run.exclusive,
    )
    transaction.on_commit(lambda: wake(retry))
    return retry


def cancel_run(run: Run, *, reason: str = "Cancelled in the admin.", now=None) -> bool:
    """Cancel ``run`` if it is still queued; False if a worker took it (or it finished) first."""
    now = now or timezone.now()
    return bool(Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
        status=Run.Status.CANCELLED, finished_at=now, error=reason))


# -- tasks ---------------------------------------------------------------------------------

class SourceFilter(admin.SimpleListFilter):
    title = "switched on"
    parameter_name = "switch"

    def lookups(self, request, model_admin):
        return [("on", "on"), ("paused", "paused"), ("off", "off"), ("orphaned", "orphaned")]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "on":
            return queryset.filter(enabled=True, paused=False, orphaned=False)
        if value == "paused":
            return queryset.filter(paused=True)
        if value == "off":
            return queryset.filter(enabled=False)
        if value == "orphaned":
            return queryset.filter(orphaned=True)
        return queryset


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("display_name", "label", "schedule", "schedule_source", "switch",
                    "next_run", "last_run_status")
    list_display_links = ("display_name",)
    list_filter = (SourceFilter, "source")
    search_fields = ("name", "label")
    actions = ("run_now", "pause", "resume")
    fieldsets = (
        (None, {"fields": ("name", "label", "where", "switch", "paused", "enabled")}),
        ("Schedule", {"fields": ("schedule", "timezone", "schedule_source", "upcoming",
                                 "start_running", "end_running", "wait_for_schedule",
                                 "iterations", "catch_up", "start_deadline")}),
        ("Running", {"fields": ("allow_overlap", "retries", "retry_backoff", "channel",
                                "running", "last_run", "next_run", "last_run_status")}),
        ("Data", {"fields": ("userdata", "func_info", "source", "orphaned",
                             "created_at", "modified_at")}),
    )

    def has_add_permission(self, request):
        # Rows come from code (@sisy.periodic) or from task_with_callable().
        return False

    def get_readonly_fields(self, request, obj=None):
        computed = ("where", "switch", "schedule_source", "upcoming", "last_run_status")
        owned = ()
        if obj is not None and obj.source == Task.Source.CODE:
            owned = CODE_FIELDS
        elif obj is not None and obj.name:
            owned = tuple(get_settings().overrides_for(obj.name))
        return (*computed, *_BOOKKEEPING, *owned)

    # -- columns --------------------------------------------------------------------

    @admin.display(description="task", ordering="name")
    def display_name(self, obj: Task) -> str:
        return obj.name or obj.label or f"Task {obj.pk}"

    @admin.display(description="schedule from")
    def schedule_source(self, obj: Task) -> str:
        return explain(obj).schedule_source

    @admin.display(description="fires?")
    def switch(self, obj: Task) -> str:
        info = explain(obj)
        icon = "✔" if info.switched_on else "✘"
        return format_html("<span class='sisy-switch sisy-{}'>{} {}</span>",
                           "on" if info.switched_on else "off", icon, info.why)

    @admin.display(description="latest run")
    def last_run_status(self, obj: Task) -> str:
        run = obj.runs.order_by("-scheduled_for", "-id").first()
        if run is None:
            return "never"
        url = reverse("admin:sisy_run_change", args=[run.pk])
        return format_html("<a href='{}' class='sisy-status sisy-{}'>{}</a> {}", url,
                           run.status, run.status, _duration(run.duration))

    @admin.display(description="where to change it")
    def where(self, obj: Task) -> str:
        overrides = get_settings().overrides_for(obj.name) if obj.name else {}
        notes = []
        if obj.source == Task.Source.CODE:
            notes.append(f"Schedule and options come from code (@sisy.periodic "
                         f"name={obj.name!r}): change them there; sync re-applies them.")
        else:
            notes.append("A database row (task_with_callable, a data migration): its fields "
                         "are edited here.")
        if overrides:
            keys = ", ".join(sorted(overrides))
            notes.append(f"SISY['TASKS'] in settings overrides {keys}; settings win over "
                         "code, the database and a pause.")
        notes.append("Pause and resume are the operator's: they survive every sync.")
        return format_html("<ul class='sisy-where'>{}</ul>",
                           format_html_join("", "<li>{}</li>", ((n,) for n in notes)))

    @admin.display(description=f"next {NEXT_FIRES} slots")
    def upcoming(self, obj: Task) -> str:
        if obj.pk is None:
            return "—"
        slots, after = [], timezone.now()
        try:
            for _ in range(NEXT_FIRES):
                slot = obj.next_slot(after)
                if slot is None:
                    break
                slots.append(slot)
                after = slot
        except Exception as exc:  # an invalid schedule: show why instead of failing the page
            return format_html("<span class='errornote'>{}</span>", exc)
        if not slots:
            return "no slot left (end_running has passed)"
        tz = obj.get_timezone()
        return format_html("<ol class='sisy-upcoming'>{}</ol>", format_html_join(
            "", "<li><time datetime='{}'>{}</time></li>",
            ((s.isoformat(), s.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")) for s in slots)))

    # -- actions --------------------------------------------------------------------

    @admin.action(description="Run now", permissions=["change"])
    def run_now(self, request, queryset):
        queued = 0
        for task in queryset:
            try:
                run_task_now(task)
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                queued += 1
        if queued:
            self.message_user(request, ngettext(
                "Queued %d run.", "Queued %d runs.", queued) % queued, messages.SUCCESS)

    @admin.action(description="Pause (survives sync)", permissions=["change"])
    def pause(self, request, queryset):
        count = queryset.update(paused=True, next_run=None, modified_at=timezone.now())
        self.message_user(request, ngettext(
            "Paused %d task.", "Paused %d tasks.", count) % count, messages.SUCCESS)

    @admin.action(description="Resume", permissions=["change"])
    def resume(self, request, queryset):
        now = timezone.now()
        count = 0
        for task in queryset.filter(paused=True):
            task.paused = False
            task.next_run = task.first_slot(now) if task.is_switched_on() else None
            task.save(update_fields=["paused", "next_run", "modified_at"])
            count += 1
        self.message_user(request, ngettext(
            "Resumed %d task.", "Resumed %d tasks.", count) % count, messages.SUCCESS)


# -- runs ----------------------------------------------------------------------------------

@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "task_name", "colored_status", "scheduled_for", "started_at",
                    "run_duration", "attempt", "worker", "progress_bar")
    list_filter = ("status", "task_name")
    search_fields = ("task_name", "worker", "error")
    date_hierarchy = "scheduled_for"
    list_select_related = ("task",)
    actions = ("retry", "cancel")
    fields = ("task_name", "task", "colored_status", "progress_bar", "progress_note",
              "scheduled_for", "not_before", "enqueued_at", "started_at", "finished_at",
              "run_duration", "attempt", "retry_of", "worker", "channel", "exclusive",
              "args_json", "kwargs_json", "result_json", "error_type", "traceback")
    readonly_fields = fields
    change_form_template = "admin/sisy/run/change_form.html"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # Runs are a ledger: nobody edits one, the actions below change them.
        return False

    def has_retry_permission(self, request):
        return request.user.has_perm("sisy.change_run")

    def has_cancel_permission(self, request):
        return request.user.has_perm("sisy.change_run")

    def get_urls(self):
        extra = [path("<path:object_id>/progress/", self.admin_site.admin_view(self.progress),
                      name="sisy_run_progress")]
        return extra + super().get_urls()

    def progress(self, request, object_id):
        """``GET .../progress/``: the run's status and progress as JSON (polled by the page)."""
        if not self.has_view_permission(request):
            return JsonResponse({"error": "permission denied"}, status=403)
        run = get_object_or_404(Run, pk=object_id)
        return JsonResponse(_progress_payload(run))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        extra_context["progress_url"] = reverse("admin:sisy_run_progress", args=[object_id])
        return super().change_view(request, object_id, form_url, extra_context)

    # -- columns --------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def colored_status(self, obj: Run) -> str:
        return format_html("<span class='sisy-status sisy-{}' data-sisy-status>{}</span>",
                           obj.status, obj.status)

    @admin.display(description="duration")
    def run_duration(self, obj: Run) -> str:
        return _duration(obj.duration)

    @admin.display(description="progress")
    def progress_bar(self, obj: Run) -> str:
        payload = _progress_payload(obj)
        if payload["total"]:
            bar = format_html("<progress value='{}' max='{}' data-sisy-progress>{}%</progress>",
                              payload["done"], payload["total"], payload["percent"])
        elif obj.status == Run.Status.SUCCEEDED:
            bar = mark_safe("<progress value='1' max='1' data-sisy-progress>100%</progress>")
        elif obj.finished:
            return "—"
        else:  # indeterminate until the task reports a total
            bar = mark_safe("<progress data-sisy-progress></progress>")
        return format_html("{} <span data-sisy-progress-text>{}</span>", bar, payload["text"])

    @admin.display(description="args")
    def args_json(self, obj: Run) -> str:
        return _pretty_json(obj.args)

    @admin.display(description="kwargs")
    def kwargs_json(self, obj: Run) -> str:
        return _pretty_json(obj.kwargs)

    @admin.display(description="result")
    def result_json(self, obj: Run) -> str:
        return _pretty_json(obj.result) if obj.status == Run.Status.SUCCEEDED else "—"

    @admin.display(description="error and traceback")
    def traceback(self, obj: Run) -> str:
        if not obj.error:
            return "—"
        message, _, trace = obj.error.partition("\n\n")
        return format_html("<p class='sisy-error'><strong>{}</strong></p>"
                           "<pre class='sisy-traceback'>{}</pre>", message, trace.rstrip())

    # -- actions --------------------------------------------------------------------

    @admin.action(description="Retry failed runs", permissions=["retry"])
    def retry(self, request, queryset):
        failed = list(queryset.filter(status=Run.Status.FAILED))
        for run in failed:
            retry_run(run)
        skipped = queryset.count() - len(failed)
        self.message_user(request, ngettext(
            "Queued a retry of %d failed run.", "Queued retries of %d failed runs.",
            len(failed)) % len(failed), messages.SUCCESS if failed else messages.WARNING)
        if skipped:
            self.message_user(request, ngettext(
                "%d run was not failed and was left alone.",
                "%d runs were not failed and were left alone.", skipped) % skipped,
                messages.WARNING)

    @admin.action(description="Cancel queued runs", permissions=["cancel"])
    def cancel(self, request, queryset):
        reason = f"Cancelled in the admin by {request.user.get_username()}."
        cancelled = sum(cancel_run(run, reason=reason) for run in queryset)
        skipped = queryset.count() - cancelled
        self.message_user(request, ngettext(
            "Cancelled %d queued run.", "Cancelled %d queued runs.", cancelled) % cancelled,
            messages.SUCCESS if cancelled else messages.WARNING)
        if skipped:
            self.message_user(request, ngettext(
                "%d run was not queued (running or finished) and was left alone.",
                "%d runs were not queued (running or finished) and were left alone.",
                skipped) % skipped, messages.WARNING)


def _progress_payload(run: Run) -> dict:
    done, total = run.progress_done, run.progress_total
    percent = round(100 * done / total) if total else None
    text = f"{done}/{total}" if total else (f"{done}" if done else "")
    if run.progress_note:
        text = f"{text} {run.progress_note}".strip()
    return {
        "id": run.pk, "status": run.status, "finished": run.finished,
        "done": done, "total": total, "percent": percent, "note": run.progress_note,
        "text": text, "duration": _duration(run.duration),
    }
