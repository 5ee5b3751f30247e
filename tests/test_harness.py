"""The harness itself: missing services skip locally and fail under CI=true."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

ONE_TEST = "tests/test_schedules.py::test_next_fire_is_strictly_after"


def run_pytest(**env):
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings_pg",
            "SISY_PG_PORT": "1", "SISY_REDIS_URL": "redis://127.0.0.1:2/0", **env}
    full.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", ONE_TEST],
        env=full, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("ci", ["false"])
def test_missing_services_skip_every_test_with_the_reason(ci):
    done = run_pytest(CI=ci)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert (
        "PostgreSQL at 127.0.0.1:1 is not reachable; start it (e.g. `docker run -d -p 5432:5432"
    ) in done.stdout
    assert "Redis at 127.0.0.1:2 is not reachable; start it" in done.stdout
    assert "or run the SQLite configuration" in done.stdout


def test_missing_services_fail_the_session_under_ci():
    done = run_pytest(CI="true")
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "CI=true and a service the settings tests.settings_pg need is missing:" in output
    assert "PostgreSQL at 127.0.0.1:1 is not reachable" in output
    assert "passed" not in output and "skipped" not in output


@pytest.mark.postgres
def test_postgres_marker_runs_only_with_postgres(settings):
    assert "postgresql" in settings.DATABASES["default"]["ENGINE"]


@pytest.mark.redis
def test_redis_marker_runs_only_with_redis(settings):
    assert "channels_redis" in settings.CHANNEL_LAYERS["default"]["BACKEND"]
