"""Sphinx configuration for Sisy's docs (sources only; builds go to docs/_build)."""

import os
import sys
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# autodoc imports sisy.models and friends, which need a configured Django.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django.setup()

project = "Sisy"
author = "Sisy authors"
copyright = "2017-2026, Sisy authors"

try:
    from importlib.metadata import version as _version

    release = _version("sisy")
except Exception:  # building from a source tree where Sisy is not installed
    release = "2.0.dev"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build"]
templates_path = []
html_static_path = []
html_theme = "furo"
html_title = f"Sisy {version}"


def _check_settings_reference(app):
    """Warn (an error under -W) when ref/settings.rst misses a key of the SISY model."""
    from sphinx.util import logging

    from sisy.conf import LEGACY_SETTINGS, SisySettings, TaskOverride

    text = (Path(app.srcdir) / "ref" / "settings.rst").read_text(encoding="utf-8")
    keys = [*SisySettings.model_fields, *TaskOverride.model_fields, *LEGACY_SETTINGS]
    for key in keys:
        if f"``{key}``" not in text:
            logging.getLogger(__name__).warning(
                "docs/ref/settings.rst does not document the setting %r; add it.", key
            )


def setup(app):
    app.connect("builder-inited", _check_settings_reference)
