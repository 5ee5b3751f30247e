"""The admin pages in a real headless Chromium (``extra/screenshots.py``).

Skipped, with the reason, where Debian's chromium or the playwright package
is missing; not a CI requirement. The script has its own throw-away SQLite
database, so this test needs no database of the session.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location(
    "sisy_screenshots", ROOT / "extra" / "screenshots.py")
screenshots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshots)

CHROMIUM = screenshots.find_chromium()

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                       "(apt-get install -y chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="the playwright Python package is not installed "
                              "(pip install playwright; never `playwright install`)"),
]


def test_every_admin_page_renders_in_chromium_and_the_progress_bar_moves(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "extra" / "screenshots.py"), "--out", str(tmp_path),
         "--chromium", CHROMIUM],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in screenshots.PAGES:
        shot = tmp_path / f"{name}.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert shot.stat().st_size > 10_000, f"{name} looks empty"
