"""Look at Sisy's admin pages in a real headless Chromium and save one screenshot per page.

Usage (from the repository root, with Debian's chromium and the playwright
Python package installed — never ``playwright install``)::

    apt-get install -y chromium
    .venv/bin/pip install playwright
    .venv/bin/python extra/screenshots.py --out docs/_static

It builds a throw-away SQLite database with the test project's tasks, a seed
row and runs in each state, serves the admin with Django's live server
(static files included), logs in, and saves ``admin-*.png`` into ``--out``.
On the way it checks what a screenshot cannot: the running run's
``<progress>`` bar moves when the run reports progress (the page polls its
progress endpoint). It exits non-zero on any failure. ``tests/test_admin_browser.py``
runs it, and skips when Chromium or playwright is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import traceback
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = ("admin-task-list", "admin-task-detail", "admin-run-list", "admin-run-detail",
         "admin-run-progress")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def configure(db_path: str) -> None:
    """The test project's settings, plus static files so that the admin is styled."""
    sys.path.insert(0, str(ROOT))
    import django
    from django.conf import settings

    from tests import settings as base

    values = {k: getattr(base, k) for k in dir(base) if k.isupper()}
    values["INSTALLED_APPS"] = [*base.INSTALLED_APPS, "django.contrib.staticfiles"]
    values["STATIC_URL"] = "/static/"
    values["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db_path,
                                       "OPTIONS": {"timeout": 20}}}
    values["CHANNEL_LAYERS"] = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    values["PASSWORD_HASHERS"] = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    values["DEBUG"] = True  # serve static files without collectstatic
    settings.configure(**values)
    django.setup()


def make_data() -> dict:
    """Tasks and runs in each state the pages show; returns the ids to visit."""
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.utils import timezone

    from sisy.models import Run, Task, task_with_callable

    call_command("migrate", verbosity=0)  # post_migrate syncs the test app's tasks
    User.objects.create_superuser("admin", "admin@example.com", "admin")
    now = timezone.now()
    seed = task_with_callable("tests.testapp.tasks.seed_counter", label="nightly-cleanup (seed)",
                              schedule="30 0 * * *", userdata={"count": 3})
    seed.save()
    Task.objects.filter(name="reports.weekly").update(paused=True)
    daily = Task.objects.get(name="reports.daily")

    def run(task, status, seconds=None, **fields):
        started = now - timedelta(minutes=5)
        return Run.objects.create(
            task=task, task_name=task.name or task.label if task else "tests.testapp.tasks.add",
            channel="sisy.run_task", scheduled_for=started, not_before=started,
            status=status, started_at=started if status != "queued" else None,
            finished_at=started + timedelta(seconds=seconds) if seconds else None,
            worker="web-1:4242:9f3a1c" if status != "queued" else "", **fields)

    run(daily, "succeeded", 2.4, result={"rows": 1200})
    run(seed, "succeeded", 0.2, result={"count": 3, "channel_message": None})
    try:
        raise ValueError("invoice 17 has no customer")
    except ValueError as exc:
        error = f"ValueError: {exc}\n\n" + traceback.format_exc()
    failed = run(daily, "failed", 1.1, error=error, error_type="ValueError",
                 args=[17], kwargs={"notify": True}, attempt=2)
    running = run(None, "running", progress_done=3, progress_total=10,
                  progress_note="invoices", kwargs={"batch": "2030-03"})
    run(None, "queued", args=[2, 3])
    return {"task": daily.pk, "failed": failed.pk, "running": running.pk}


def serve():
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.test.testcases import LiveServerThread

    thread = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait(30)
    if thread.error:
        raise thread.error
    return thread, f"http://127.0.0.1:{thread.port}"


def shoot(base: str, ids: dict, out: Path, chromium: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from sisy.models import Run

    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1800, "height": 900})
        page.goto(f"{base}/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "admin")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")

        def save(name: str, url: str, must_contain: str):
            page.goto(base + url)
            body = page.inner_text("body").lower()  # inner_text follows text-transform
            if must_contain.lower() not in body:
                raise AssertionError(f"{url} does not show {must_contain!r}")
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            shots.append(path)

        save("admin-task-list", "/admin/sisy/task/", "paused by an operator")
        save("admin-task-detail", f"/admin/sisy/task/{ids['task']}/change/", "next 5 slots")
        save("admin-run-list", "/admin/sisy/run/", "web-1:4242:9f3a1c")
        save("admin-run-detail", f"/admin/sisy/run/{ids['failed']}/change/",
             "invoice 17 has no customer")
        save("admin-run-progress", f"/admin/sisy/run/{ids['running']}/change/", "3/10 invoices")
        # The bar follows the run: report progress and wait for the page to show it.
        # (From another thread: playwright's sync API runs an event loop in this one.)
        writer = threading.Thread(target=lambda: Run.objects.filter(pk=ids["running"]).update(
            progress_done=7))
        writer.start()
        writer.join()
        page.wait_for_function(
            "document.querySelector('progress[data-sisy-progress]').value === 7", timeout=10_000)
        if "7/10 invoices" not in page.inner_text("body"):
            raise AssertionError("the progress text did not follow the bar")
        browser.close()
    return shots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "_static"))
    parser.add_argument("--chromium", default=None, help="path of the Chromium binary")
    args = parser.parse_args(argv)
    chromium = args.chromium or find_chromium()
    if chromium is None:
        print("Chromium not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        configure(os.path.join(tmp, "screens.sqlite3"))
        ids = make_data()
        thread, base = serve()
        try:
            shots = shoot(base, ids, out, chromium)
        finally:
            thread.terminate()
    for shot in shots:
        print(f"saved {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
