"""Settings for the benchmarks: PostgreSQL + Redis (default) or the embedded mode.

``SISY_BENCH_MODE=embedded`` selects SQLite + the in-memory layer. The
PostgreSQL database is ``sisy_bench`` and the Redis key prefix ``sisy-bench``
(``SISY_BENCH_DB`` and ``SISY_BENCH_PREFIX`` change them), so nothing of the
tests or of other users is touched.
"""

import json
import os
import tempfile

SECRET_KEY = "bench"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "channels", "sisy", "extra.bench.benchapp"]
if os.environ.get("SISY_BENCH_PERIODIC"):  # W4 of python -m extra.bench: an every-second task
    INSTALLED_APPS.append("extra.bench.periodicapp")
MODE = os.environ.get("SISY_BENCH_MODE", "pg")

if MODE == "embedded":
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SISY_BENCH_SQLITE",
                               os.path.join(tempfile.gettempdir(), "sisy-bench.sqlite3")),
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
    }}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1", "PORT": 5432, "USER": "postgres",
        "NAME": os.environ.get("SISY_BENCH_DB", "sisy_bench"),
        # SISY_BENCH_DB_OPTIONS='{"prepare_threshold": 5}' measures with psycopg's
        # prepared statements (Django's default, None, never prepares).
        "OPTIONS": json.loads(os.environ.get("SISY_BENCH_DB_OPTIONS", "{}")),
    }}
    CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:6379/0", "socket_timeout": 10}],
                   # channels-redis's default capacity (100): Sisy keeps the newest
                   # wake-ups and workers drain the table, so more would only pile
                   # up stale wake-ups that a standing slot's must wait behind.
                   "prefix": os.environ.get("SISY_BENCH_PREFIX", "sisy-bench")},
    }}

# SISY_BENCH_SISY='{"DURABLE_ENQUEUE": false}' measures Sisy with other settings.
SISY = {"POLL_INTERVAL": 1.0, **json.loads(os.environ.get("SISY_BENCH_SISY", "{}"))}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"level": os.environ.get("SISY_LOG", "WARNING")}}
