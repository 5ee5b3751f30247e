"""Test settings for production parts: PostgreSQL + Redis (channels-redis).

Host, port and database name come from the environment so that a test can
point worker subprocesses at its own throw-away servers.
"""

import os

from tests.settings import *  # noqa: F403

PG_HOST = os.environ.get("SISY_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SISY_PG_PORT", "5432"))
REDIS_URL = os.environ.get("SISY_REDIS_URL", "redis://127.0.0.1:6379/0")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": PG_HOST,
        "PORT": PG_PORT,
        "USER": os.environ.get("SISY_PG_USER", "postgres"),
        "NAME": os.environ.get("SISY_DB_NAME", "sisy"),
        "TEST": {"NAME": os.environ.get("SISY_TEST_DB_NAME", "test_sisy")},
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
            "prefix": os.environ.get("SISY_REDIS_PREFIX", "sisy-test"),
        },
    }
}

SERVICES = "postgres+redis"
