"""The demo in a real browser: headless Chromium (Debian's) driven by Playwright.

Starts the demo as ``./extra/demo/run`` does (``migrate``, then ``sisy_run`` and
``runserver`` as two processes) on a temporary SQLite file and a free port,
loads the home page, clicks "Start the long job" and waits until its
``<progress>`` bar reaches 100 %, and sees a failing run's error. Skipped when
Chromium or Playwright is missing; ``tox -e demo`` (which CI runs) installs
Playwright and fails instead of skipping when ``CI=true``.

``SISY_DEMO_SCREENSHOT=docs/_static/demo.png tox -e demo`` refreshes the
screenshot in the docs; otherwise it goes to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

DEMO = ROOT / "extra" / "demo"
CHROMIUM = os.environ.get("SISY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; tox -e demo does)"
    return None


def _require_browser():
    problem = _missing()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes") and os.environ.get(
        "SISY_DEMO_BROWSER_REQUIRED"
    ):
        pytest.fail(f"{problem}; CI must run the demo's browser test.")
    pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demo_env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SISY_", "DJANGO_"))}
    env["DJANGO_SETTINGS_MODULE"] = "demo.settings"
    env["SISY_DEMO_DB"] = str(db)
    env["PYTHONPATH"] = os.pathsep.join([str(DEMO), str(ROOT)])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for_port(port: int, processes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args} exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the demo's web server did not answer on port {port} in {timeout} s")


@pytest.fixture
def demo_site(tmp_path):
    """The demo running as ./extra/demo/run runs it; yields its URL."""
    _require_browser()
    env = _demo_env(tmp_path / "demo.sqlite3")
    manage = [sys.executable, str(DEMO / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, cwd=DEMO, check=True,
                   timeout=120)
    port = _free_port()
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("sisy_run", "runserver")}
    processes = [
        subprocess.Popen([*manage, "sisy_run", "--concurrency", "4"], env=env, cwd=DEMO,
                         stdout=logs["sisy_run"], stderr=subprocess.STDOUT),
        subprocess.Popen([*manage, "runserver", "--noreload", f"127.0.0.1:{port}"], env=env,
                         cwd=DEMO, stdout=logs["runserver"], stderr=subprocess.STDOUT),
    ]
    try:
        _wait_for_port(port, processes)
        yield f"http://127.0.0.1:{port}/"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()
        for name in logs:
            print(f"--- {name} log ---\n{(tmp_path / f'{name}.log').read_text()[-3000:]}")


@pytest.mark.timeout(120)
def test_long_job_progress_reaches_100_percent_in_a_browser(demo_site, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    screenshot = Path(os.environ.get("SISY_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(demo_site)

            # Given the standing tasks, one switched off in settings
            tasks = page.locator("#tasks tr")
            expect(tasks.filter(has_text="demoapp.tasks.tick")).to_contain_text("* * * * * */10")
            expect(tasks.filter(has_text="switched_off_in_settings")).to_contain_text(
                "no (off in settings)"
            )

            # When the long job is started from the page
            page.click("#start-long-job")

            # Expect its progress bar to fill and the run to succeed
            bar = page.locator("#job-progress")
            expect(bar).to_be_visible()
            page.wait_for_function(
                "document.getElementById('job-progress').value > 0", timeout=20_000
            )
            page.wait_for_function(
                "document.getElementById('job-progress').value === 100", timeout=30_000
            )
            expect(page.locator("#job-text")).to_have_attribute("data-status", "succeeded")
            expect(page.locator("#job-text")).to_contain_text("100%")

            # And the failing task (every 15 s) shows its error among the latest runs
            failed = page.locator("#runs tr", has=page.locator(".status-failed")).first
            expect(failed).to_contain_text("RuntimeError: the demo's failing task failed",
                                           timeout=25_000)
            expect(page.locator("#runs")).to_contain_text("succeeded")

            # And the 2017-style instance-method task of migration 0002 waters the Fern
            # (every 20 s), and a basil added with task_with_callable(basil.water) appears
            expect(page.locator("#plants")).to_contain_text(
                re.compile(r"Fern: watered [1-9]"), timeout=25_000
            )
            page.click("#add-basil")
            expect(page.locator("#plants")).to_contain_text("Basil 1: watered 0 times")

            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
