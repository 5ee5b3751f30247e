"""Settings for W5's reference: django-celery-beat's DatabaseScheduler on PostgreSQL."""

import os

SECRET_KEY = "bench"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": "127.0.0.1", "PORT": 5432, "USER": "postgres",
    "NAME": os.environ.get("SISY_BENCH_BEAT_DB", "sisy_bench_celerybeat"),
}}
